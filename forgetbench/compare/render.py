"""Rendering a compare report (the dict of compare.json): the printed table, compare.md, compare.csv, and every
output file's bytes, written all-or-nothing. The per-task columns come from :data:`.columns.STATS`; the
recommendation and each arm's sentence (:func:`recommendation_lines`, :func:`arm_sentence`) are shared with the HTML
report (:mod:`.html`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from forgetbench import outputs
from forgetbench.compare import columns, power
from forgetbench.compare.columns import interval_text, number_text
from forgetbench.compare.errors import CompareError
from forgetbench.compare.plots import ef_plot

FORGOTTEN_FIELDS = ("method", "task", "doc_id", "input", "target", "pre_answer", "post_answer")


def csv_fields() -> tuple[str, ...]:
    """The columns of compare.csv: ``method, task``, every statistic's (:func:`.columns.csv_columns`),
    ``trainable_parameters``."""
    return ("method", "task", *(name for name, _ in columns.csv_columns()), "trainable_parameters")


# Leading characters that make a spreadsheet read a cell as a formula (OWASP, "CSV Injection").
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_text(value):
    """A CSV cell no spreadsheet runs: text that starts like a formula gets a leading single quote, as OWASP's CSV
    injection advice says; numbers (and None) are left as they are.

    >>> spreadsheet_text("=HYPERLINK(1)"), spreadsheet_text("-5"), spreadsheet_text(-5.0), spreadsheet_text("cat")
    ("'=HYPERLINK(1)", "'-5", -5.0, 'cat')
    """
    return "'" + value if isinstance(value, str) and value.startswith(FORMULA_START) else value


def csv_bytes(records: Sequence[Mapping], fields: Sequence[str]) -> bytes:
    """:func:`forgetbench.outputs.csv_bytes` with every text cell, the header's included, made
    :func:`spreadsheet_text`: answers, questions, task and method names come from the runs and the command line.

    >>> csv_bytes([{"task": "=1+1", "delta": -1.5}], ["task", "delta"])
    b"task,delta\\r\\n'=1+1,-1.5\\r\\n"
    """
    return outputs.csv_bytes([{spreadsheet_text(k): spreadsheet_text(v) for k, v in record.items()}
                              for record in records], [spreadsheet_text(f) for f in fields])


def methods_of(report: Mapping) -> dict:
    """Method name -> method report, for a single-post and a many-post report alike.

    >>> list(methods_of({"name": "lora", "E": 1.0})), list(methods_of({"methods": {"a": {}, "b": {}}}))
    (['lora'], ['a', 'b'])
    """
    return dict(report["methods"]) if "methods" in report else {report.get("name", "post"): report}


def _task_grid(report: Mapping, relative: bool) -> tuple[list[tuple], int]:
    """Rows per (method, task) with the columns of :func:`.columns.table_cells`, and the index of the first
    right-aligned (numeric) column."""
    many = "methods" in report
    cells = columns.table_cells(relative)
    prefix = ("method",) * many + ("task",)
    rows = [prefix + tuple(cell.header for cell in cells)]
    for name, m in methods_of(report).items():
        for t, r in m["tasks"].items():
            rows.append((name,) * many + (t,) + tuple(cell.text(r) for cell in cells))
    return rows, len(prefix) + next((i for i, cell in enumerate(cells) if cell.numeric), len(cells))


def _summary_grid(report: Mapping) -> list[tuple]:
    """One row per method: parameters, E/F/O with intervals, the MDEs of E and F, Pareto membership, per-task
    deltas."""
    methods = methods_of(report)
    tasks = list(next(iter(methods.values()))["tasks"])
    front = report.get("pareto", list(methods))
    rows = [("method", "params", "E", "E CI", "E MDE", "F", "F CI", "F MDE", "O", "O CI", "Pareto")
            + tuple(f"d {t}" for t in tasks)]
    for name, m in methods.items():
        params = m.get("trainable_parameters")
        rows.append((name, "-" if params is None else f"{params:,}",
                     *(c for k in "EFO" for c in (number_text(m[k]), interval_text(m.get(f"{k}_ci")))
                       + ((number_text(m.get(f"{k}_mde"), False),) if k != "O" else ())),
                     "*" if name in front else "", *(number_text(m["tasks"][t]["delta"]) for t in tasks)))
    return rows


def significant(ci) -> bool | None:
    """Whether an interval excludes 0 (None without one). An end within rounding of 0 holds it: an interval is the
    estimate plus quantiles of (resample - estimate), so an end that is 0 in exact arithmetic may come out -2e-16
    (the mean of 0/1 deltas minus itself).

    >>> significant([-3.0, -0.5]), significant([-3.0, 0.5]), significant(None)
    (True, False, None)
    >>> significant([-3.125, -1.0416666666666667 + 1.0416666666666665]), significant([-3.0, 0.0])
    (False, False)
    """
    if not ci:
        return None
    tolerance = 1e-9 * max(1.0, abs(ci[0]), abs(ci[1]))
    return bool(ci[0] > tolerance or ci[1] < -tolerance)


def verdict_words(method: Mapping) -> dict:
    """E and F worded by what the pair can show (:func:`.power.phrase`): "(significant)" when the interval
    excludes 0, else "(not significant; this study detects MDE or more)" with the two-sided MDE.

    >>> words = verdict_words({"E": 12.0, "E_ci": [8.0, 16.0], "E_mde": 4.0, "F": -1.2, "F_ci": [-3.0, 0.6],
    ...                        "F_mde": 3.4})
    >>> words["E"], words["F"]
    ('gained 12.0 points (significant)', 'forgot 1.2 points (not significant; this study detects 3.4 or more)')
    """
    words = {}
    for key, verbs in (("E", ("lost", "gained")), ("F", ("forgot", "gained"))):
        sig = significant(method.get(f"{key}_ci"))
        words[key] = power.phrase(method[key], None if sig else method.get(f"{key}_mde"), sig, verbs)
    return words


def recommendation_lines(report: Mapping) -> list[str]:
    """The recommendation in plain text: the arm (and the runner-up), why, and the rule.

    >>> recommendation_lines({"recommendation": {"arm": "a", "runner_up": "b", "reason": "a has the highest E.",
    ...                                          "rule": "the rule"}})
    ['Recommendation: a (runner-up: b)', '  Why: a has the highest E.', '  Rule: the rule.']
    """
    rec = report.get("recommendation")
    if not rec:
        return []
    return [f"Recommendation: {rec['arm']}" + (f" (runner-up: {rec['runner_up']})" if rec.get("runner_up") else ""),
            f"  Why: {rec['reason']}", f"  Rule: {rec['rule']}."]


def arm_sentence(name: str, method: Mapping) -> str:
    """One arm in plain words, each change worded by what the study can show (compare.json's ``verdict``), and on
    how many upstream tasks the change is significant.

    >>> print(arm_sentence("lora", {"verdict": {"E": "gained 12.0 points (significant)", "F": "forgot 1.2 points "
    ...       "(not significant; this study detects 3.4 or more)"}, "F": -1.2, "tasks": {"a": {"role": "upstream",
    ...       "delta_ci": [-3.0, 0.5]}, "b": {"role": "upstream",
    ...       "delta_ci": [-6.0, -1.0]}}}))  # doctest: +NORMALIZE_WHITESPACE
    lora gained 12.0 points (significant) on the target tasks; on general tasks it forgot 1.2 points
    (not significant; this study detects 3.4 or more), significantly worse on 1 of 2 upstream tasks
    """
    words = method.get("verdict") or verdict_words(method)
    text = f"{name} {words['E']} on the target tasks; on general tasks it {words['F']}"
    upstream = [r for r in method.get("tasks", {}).values() if r.get("role") == "upstream"]
    if any(r.get("delta_ci") for r in upstream):
        if method["F"] < 0:
            worse = sum(1 for r in upstream if significant(r.get("delta_ci")) and r["delta_ci"][1] < 0)
            text += f", significantly worse on {worse} of {len(upstream)} upstream tasks"
        else:
            better = sum(1 for r in upstream if significant(r.get("delta_ci")) and r["delta_ci"][0] > 0)
            text += f", significantly better on {better} of {len(upstream)} upstream tasks"
    return text


def power_notes(report: Mapping) -> list[str]:
    """One line per arm whose F is underpowered for the budget: what it detects and how many documents would
    suffice (split over the upstream tasks)."""
    budget = (report.get("power") or {}).get("budget")
    many = "methods" in report
    notes = []
    for name, m in methods_of(report).items():
        if m.get("F_underpowered"):
            per = ", ".join(f"{t} {k}" for t, k in (m.get("F_n_needed_per_task") or {}).items())
            notes.append(f"{name + ': ' if many else ''}F is underpowered: it detects {m['F_mde_one_sided']:.2f} "
                         f"points one-sided, over the budget of {budget:g}; about {m['F_n_needed_budget']} documents "
                         f"would suffice" + (f" ({per})" if per else ""))
    return notes


def _words_lines(report: Mapping) -> list[str]:
    return ["", *(f"  {arm_sentence(name, m)}" for name, m in methods_of(report).items()),
            *(f"  {note}" for note in power_notes(report))]


def tolerated(report: Mapping) -> list[str]:
    """The pairing differences ``--allow-mismatch`` tolerated, one line each (prefixed by the method's name when
    there are several methods).

    >>> tolerated({"name": "post", "pairing": {"mismatches": ["--post P: limit differs"]}})
    ['--post P: limit differs']
    """
    many = "methods" in report
    return [f"{name}: {m}" if many else m for name, method in methods_of(report).items()
            for m in (method.get("pairing") or {}).get("mismatches", [])]


def _tolerated_lines(report: Mapping) -> list[str]:
    found = tolerated(report)
    return ["", "Tolerated pairing differences (--allow-mismatch):", *(f"- {m}" for m in found)] if found else []


def format_table(report: Mapping, relative: bool = False) -> str:
    """Plain-text table: one row per task (per method), then E, F, O (2 decimals) or, for many methods, one
    summary row per method; then every pairing difference ``--allow-mismatch`` tolerated."""
    top = recommendation_lines(report)
    lines = ([*top, ""] if top else []) + outputs.text_grid(*_task_grid(report, relative))
    if "methods" in report:
        return "\n".join(lines + ["", *outputs.text_grid(_summary_grid(report), 1)] + _words_lines(report)
                         + _tolerated_lines(report))
    conf = report.get("bootstrap", {}).get("confidence", 0.95)
    names = {"E": "E (specialization, mean downstream delta)", "F": "F (forgetting, mean upstream delta)      ",
             "O": "O (overall, E + F)                       "}
    lines.append("")
    for k, text in names.items():
        ci = report.get(f"{k}_ci")
        mde = report.get(f"{k}_mde")
        lines.append(f"{text} = {report[k]:+.2f}" + (f"   {conf:.0%} CI {interval_text(ci)}" if ci else "")
                     + (f"   MDE {mde:.2f}" if mde is not None else ""))
    return "\n".join(lines + _words_lines(report) + _tolerated_lines(report))


def csv_records(report: Mapping) -> list[dict]:
    """Long format: a row per (method, task) and per (method, E|F|O)."""
    out = []
    for name, m in methods_of(report).items():
        for t, r in m["tasks"].items():
            out.append({"method": name, "task": t, **{column: value(r) for column, value in columns.csv_columns()},
                        "trainable_parameters": m.get("trainable_parameters")})
        for k in "EFO":
            ci = m.get(f"{k}_ci") or [None, None]
            out.append({"method": name, "task": k, "delta": m[k], "ci_low": ci[0], "ci_high": ci[1],
                        "mde": m.get(f"{k}_mde"), "mde_one_sided": m.get(f"{k}_mde_one_sided"),
                        "n_needed_budget": m.get(f"{k}_n_needed_budget"), "underpowered": m.get(f"{k}_underpowered"),
                        "trainable_parameters": m.get("trainable_parameters")})
    return out


def markdown(report: Mapping, relative: bool = True) -> str:
    """The Markdown report: the recommendation, a summary row per method, each arm in words, then every task, then
    the tolerated pairing differences."""
    conf = report["bootstrap"]["confidence"]
    found = tolerated(report)
    differences = "".join(["\n## Tolerated pairing differences (--allow-mismatch)\n\n", *(f"- {m}\n" for m in found)])
    rec = report.get("recommendation")
    top = ""
    if rec:
        top = (f"## Recommendation: {rec['arm']}\n\n{rec['reason']}\n\n"
               + (f"Runner-up: {rec['runner_up']}.\n\n" if rec.get("runner_up") else "")
               + f"Rule: {rec['rule']}.\n\n")
    power = report.get("power") or {}
    mde = (f"; MDE = the smallest change this study detects (two-sided, alpha {power['alpha']:.2g}, power "
           f"{power['power']:g})" if power else "")
    words = "".join(f"- {arm_sentence(name, m)}\n" for name, m in methods_of(report).items()) \
        + "".join(f"- {note}\n" for note in power_notes(report))
    return (f"# forgetbench compare\n\n{top}Points on 0-100; CI = {conf:.0%} paired bootstrap interval "
            f"({report['bootstrap']['resamples']} resamples, seed {report['bootstrap']['seed']}); "
            f"F < 0 means the model forgot{mde}.\n\n" + outputs.markdown_table(_summary_grid(report), 1)
            + "\n\n" + words + "\n" + outputs.markdown_table(*_task_grid(report, relative)) + "\n"
            + (differences if found else ""))


def render_files(report: Mapping, forgotten: list[dict], out: Path | None,
                 json_path: Path | None, learned: list[dict] | None = None) -> dict[Path, bytes]:
    """Every output file's bytes, rendered before anything is written."""
    files = {}
    if json_path is not None:
        files[json_path] = outputs.json_bytes(report)
    if out is not None:
        methods = methods_of(report)
        files[out / "compare.json"] = outputs.json_bytes(report)
        files[out / "compare.md"] = markdown(report).encode()
        files[out / "compare.csv"] = csv_bytes(csv_records(report), csv_fields())
        files[out / "forgotten.csv"] = csv_bytes(forgotten, FORGOTTEN_FIELDS)
        files[out / "learned.csv"] = csv_bytes(learned or [], FORGOTTEN_FIELDS)
        for ext, data in ef_plot(methods, report.get("pareto", list(methods))).items():
            files[out / f"ef.{ext}"] = data
    return files


def write_files(files: Mapping[Path, bytes], out: Path | None) -> None:
    """Create ``out`` if needed and write ``files`` all-or-nothing; a failure is a :class:`CompareError`."""
    try:
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
        outputs.write_all_atomic(files)
    except OSError as exc:
        raise CompareError(f"cannot write {exc.filename or ''}: {exc.strerror or exc}") from None
