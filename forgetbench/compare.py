"""``forgetbench compare``: what a fine-tune gained (E) and forgot (F), for one or many tuning methods.

Reads lmms-eval ``--output_path`` folders (the base model "pre" and one fine-tuned "post" per method), picks one
primary metric per task, puts every score on a 0-100 point scale and reports

* E (specialization): mean over downstream tasks of post - pre,
* F (forgetting): mean over upstream tasks of post - pre (negative = forgot),
* O (overall): E + F,

with paired bootstrap intervals, right/wrong flips and McNemar's test from the sample logs, the trainable
parameter count from the checkpoint manifest, and an E-versus-F plot with the Pareto front.

The maths lives in :mod:`forgetbench.stats`, the reading of lmms-eval outputs in :mod:`forgetbench.runs`;
see docs/metrics.md and docs/compare-schema.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from forgetbench import outputs, stats
from forgetbench.runs import (  # noqa: F401  (re-exported: forgetbench.study uses compare.find_results_file)
    CompareError,
    find_results_file,
    load_manifest,
    load_run,
    load_samples,
    manifest_mismatch,
    run_mismatches,
    sample_mismatches,
)
from forgetbench.stats import specialization_forgetting, to_points  # noqa: F401  (public API, kept here)

PROG = "forgetbench compare"
SCHEMA = "forgetbench.compare/2"

# Scale of well-known lmms-eval metrics, by metric name (without ",filter"); see stats.scale_factor.
# One table on purpose: extend it here rather than elsewhere. A name is only a good guess: a few lmms-eval
# tasks (mmvu, mmau, sitebench, pushupbench, ...) report "accuracy"/"exact_match" already x100, hence the
# range check in _score.
METRIC_SCALES: dict[str, str] = {
    "exact_match": "fraction",
    "accuracy": "fraction",
    "acc": "fraction",
    "acc_norm": "fraction",
    "anls": "fraction",
    "relaxed_overall": "fraction",
    "coco_CIDEr": "cider",
    "nocaps_CIDEr": "cider",
    "flickr_CIDEr": "cider",
    "textcaps_CIDEr": "cider",
    "mme_perception_score": "max:2000",
    "mme_cognition_score": "max:800",
}


# --------------------------------------------------------------------------
# Which metric, on which scale
# --------------------------------------------------------------------------

def _declared(run: dict, task: str, label: str) -> dict:
    """``configs[task].metadata.forgetbench`` (forgetbench's own tasks), or {}."""
    config = run["configs"].get(task)
    meta = config.get("metadata") if isinstance(config, dict) else None
    if isinstance(meta, list):  # lmms-eval also accepts a list of mappings
        meta = next((m for m in meta if isinstance(m, dict) and "forgetbench" in m), None)
    decl = meta.get("forgetbench") if isinstance(meta, dict) else None
    decl = {} if decl is None else decl  # an empty `forgetbench:` in YAML is null
    if not isinstance(decl, dict):
        raise CompareError(f"{label}: task '{task}': metadata.forgetbench is not a mapping")
    return decl


def primary_metric(run: dict, task: str, label: str, override: str | None = None) -> str:
    """The metric that scores ``task``: ``override`` (``--metric``), else the
    declared forgetbench primary metric, else the first of ``higher_is_better[task]``.

    >>> run = {"configs": {}, "higher_is_better": {"t": {"anls": True, "acc": True}}}
    >>> primary_metric(run, "t", "--pre X")
    'anls'
    >>> run["configs"]["t"] = {"metadata": {"forgetbench": {"primary_metric": "score"}}}
    >>> primary_metric(run, "t", "--pre X")
    'score'
    """
    hib = run["higher_is_better"].get(task)
    hib = hib if isinstance(hib, dict) else {}
    metric = override or _declared(run, task, label).get("primary_metric") or next(iter(hib), None)
    if not isinstance(metric, str):
        raise CompareError(f"{label}: task '{task}' declares no metric; pass --metric {task}=NAME")
    # A lower-is-better metric would flip the sign of E and F.
    if hib.get(metric.split(",")[0]) is False:
        raise CompareError(f"{label}: task '{task}': metric '{metric}' is lower-is-better; "
                           f"pick another with --metric {task}=NAME")
    return metric


def metric_scale(run: dict, task: str, metric: str, label: str, override: str | None = None) -> str:
    """The scale of ``metric`` (see :func:`forgetbench.stats.scale_factor`): ``override`` (``--metric-scale``),
    else the declared scale (of the declared primary metric only), else :data:`METRIC_SCALES`.

    >>> metric_scale({"configs": {}}, "t", "exact_match,flexible-extract", "--pre X")
    'fraction'
    >>> metric_scale({"configs": {}}, "mme", "mme_cognition_score", "--pre X")
    'max:800'
    >>> run = {"configs": {"t": {"metadata": {"forgetbench": {"primary_metric": "s", "scale": "points"}}}}}
    >>> metric_scale(run, "t", "s", "--pre X")
    'points'
    """
    base = metric.split(",")[0]
    decl = _declared(run, task, label)
    declared = decl.get("scale") if base == decl.get("primary_metric") else None
    scale = override or declared or METRIC_SCALES.get(base)
    try:
        stats.scale_factor(scale)
    except ValueError:
        what = f"unknown scale {scale!r}" if scale else "unknown scale"
        raise CompareError(f"task '{task}': {what} for metric '{base}'; declare it with --metric-scale "
                           f"{task}={stats.SCALE_HELP} or metadata.forgetbench.scale in the task YAML") from None
    return scale


def metric_value(run: dict, task: str, metric: str, label: str) -> float:
    """The finite value of ``metric`` in ``results[task]``.

    Looks up ``"NAME,none"``, else the single ``"NAME,<filter>"`` key; a name that
    already holds a filter (``"exact_match,flexible-extract"``) is used as is.

    >>> run = {"results": {"t": {"alias": "t", "acc,none": 0.5, "acc_stderr,none": 0.1}}}
    >>> metric_value(run, "t", "acc", "--pre X")
    0.5
    """
    res = run["results"][task]
    if "," in metric:
        keys = [metric] if metric in res else []
    elif f"{metric},none" in res:
        keys = [f"{metric},none"]
    else:
        keys = [k for k in res if k.startswith(f"{metric},")]
    if len(keys) != 1:
        available = ", ".join(k for k in res if "," in k and "_stderr," not in k) or "none"
        problem = "several filters for" if keys else "no"
        raise CompareError(f"{label}: task '{task}' has {problem} metric '{metric}' (available: {available})")
    value = res[keys[0]]
    try:  # bool is an int subclass, but a true/false score is not a number here
        number = math.nan if isinstance(value, bool) or not isinstance(value, (int, float)) else float(value)
    except OverflowError:  # an int too big for a float
        number = math.inf
    if not math.isfinite(number):
        raise CompareError(f"{label}: task '{task}' metric '{keys[0]}' is not a finite number: {value!r:.40}")
    return number


def score(run: dict, task: str, label: str, metric: str | None, scale: str | None) -> tuple[str, str, float]:
    """``(metric, scale, value)`` of ``task`` in ``run``, the value still on the metric's own scale."""
    metric = primary_metric(run, task, label, metric)
    value = metric_value(run, task, metric, label)
    scale = metric_scale(run, task, metric, label, scale)
    upper = stats.scale_factor(scale)[1]
    # Catches e.g. an "accuracy" guessed as fraction that the task already reports x100.
    if upper is not None and not 0.0 <= value <= upper:
        raise CompareError(f"{label}: task '{task}': metric '{metric}' = {value:g} is outside 0-{upper:g} for "
                           f"scale {scale}; if it is already in points, pass --metric-scale {task}=points")
    return metric, scale, value


def paired_scores(runs: Sequence[tuple[dict, str]], task: str, metric: str | None, scale: str | None):
    """``(metric, scale, [value per run])`` of ``task``, refusing runs that disagree on the metric or its scale.

    ``metric`` and ``scale`` are the user's overrides (or None).
    """
    scored = [score(run, task, label, metric, scale) for run, label in runs]
    for (_, label), (m, s, _) in zip(runs[1:], scored[1:], strict=True):
        if m != scored[0][0]:
            raise CompareError(f"{label}: task '{task}': primary metric differs from {runs[0][1]}")
        if s != scored[0][1]:
            raise CompareError(f"{label}: task '{task}': scale of '{m}' differs from {runs[0][1]}")
    return scored[0][0], scored[0][1], [v for _, _, v in scored]


# --------------------------------------------------------------------------
# One method: pre versus post
# --------------------------------------------------------------------------

def _is_mean(run: dict, task: str, metric: str) -> bool:
    """Whether the task config says lmms-eval aggregates ``metric`` with a plain mean."""
    config = run["configs"].get(task)
    items = config.get("metric_list") if isinstance(config, dict) else None
    return any(isinstance(i, dict) and i.get("metric") == metric and i.get("aggregation") == "mean"
               for i in (items if isinstance(items, list) else []))


def _answer(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


class _Pair:
    """A pre and a post run being compared, and what the comparison found so far."""

    def __init__(self, pre: dict, pre_label: str, post: dict, label: str, name: str):
        self.pre, self.pre_label, self.post, self.label, self.name = pre, pre_label, post, label, name
        self.mismatches: list[str] = []
        self.deviations: dict[str, np.ndarray] = {}
        self.forgotten: list[dict] = []
        self.dropped: dict[str, dict] = {}

    def task(self, task: str, metric: str | None, scale: str | None, opts, seed) -> tuple[list[float], dict]:
        """``([pre, post] in points, extra row fields)`` of one task, from results.json and the sample logs."""
        runs = ((self.pre, self.pre_label), (self.post, self.label))
        metric, scale, values = paired_scores(runs, task, metric, scale)
        points = [to_points(v, scale) for v in values]
        base = metric.split(",")[0]
        key = _declared(self.pre, task, self.pre_label).get("cluster_key")
        key = key if isinstance(key, str) else None
        row = {"metric": metric, "scale": scale, "n": None, "dropped": 0, "delta_ci": None,
               "flips": None, "mcnemar": None, "cluster_key": key}
        pre_s, post_s = (load_samples(run, task, base, key, label) for run, label in runs)
        if (pre_s is None) != (post_s is None):
            self.mismatches.append(f"{self.label}: sample log of task '{task}' only in "
                                   f"{'pre' if pre_s is not None else 'post'}")
        if pre_s is None or post_s is None:
            return points, row
        common, found = sample_mismatches(pre_s, post_s, task, self.label)
        self.mismatches += found
        lost = len(pre_s) + len(post_s) - 2 * len(common)
        numeric = bool(common) and pre_s[common[0]].value is not None and post_s[common[0]].value is not None
        vals = [np.array([s[d].value for d in common]) for s in (pre_s, post_s)] if numeric else None
        if numeric and not lost:
            means = [float(np.mean(v)) for v in vals]
            if not all(abs(m - v) <= 1e-9 + 1e-6 * abs(v) for m, v in zip(means, values, strict=True)):
                if _is_mean(self.pre, task, base):
                    raise CompareError(f"{self.label}: task '{task}': per-sample '{base}' averages to "
                                       f"{means[0]:.6g} (pre) / {means[1]:.6g} (post) but results say "
                                       f"{values[0]:.6g} / {values[1]:.6g}")
                numeric = False  # a corpus-level score (CIDEr, MME): no per-sample statistics
        if lost:
            self.dropped[task] = {"pre": len(pre_s) - len(common), "post": len(post_s) - len(common)}
            row["dropped"] = lost
            if not numeric:  # only reachable under --allow-mismatch (a mismatch was recorded)
                self.mismatches.append(f"{self.label}: cannot restrict task '{task}' to the common samples: "
                                       f"its metric is not a mean of per-sample numbers")
                return points, row
            points = [to_points(float(np.mean(v)), scale) for v in vals]  # the common documents only
        row["n"] = len(common)
        if not numeric:
            return points, row
        if opts.resamples:
            clusters = [pre_s[d].cluster for d in common] if key else None
            factor = stats.scale_factor(scale)[0]
            self.deviations[task] = stats.bootstrap_deviations(
                (vals[1] - vals[0]) * factor, clusters, opts.resamples, np.random.default_rng(seed))
        if all(np.isin(v, (0.0, 1.0)).all() for v in vals):
            row["flips"] = stats.flip_counts(*vals)
            row["mcnemar"] = stats.mcnemar_test(row["flips"])
            self.forgotten += [
                {"method": self.name, "task": task, "doc_id": d, "input": _answer(pre_s[d].input),
                 "target": _answer(pre_s[d].target), "pre_answer": _answer(pre_s[d].answer),
                 "post_answer": _answer(post_s[d].answer)}
                for d, a, b in zip(common, *vals, strict=True) if a == 1 and b == 0]
        return points, row


def compare_method(pre: dict, pre_label: str, name: str, post_path: str, roles: tuple[list[str], list[str]],
                   choices: tuple[dict, dict], opts: argparse.Namespace) -> tuple[dict, list[dict]]:
    """The report of one post run against ``pre``, and its forgotten samples (rows of forgotten.csv).

    ``roles`` is (downstream, upstream); ``choices`` is ({task: --metric}, {task: --metric-scale}).
    """
    (downstream, upstream), (metrics, scales) = roles, choices
    label = f"--post {post_path}"
    pair = _Pair(pre, pre_label, load_run(Path(post_path), label), label, name)
    tasks = downstream + upstream
    pair.mismatches += run_mismatches(pre, pair.post, tasks, pre_label, label)
    manifest = load_manifest(pair.post, label)
    pair.mismatches += [m for m in [manifest_mismatch(pre, manifest, label)] if m]
    pts, rows = {}, {}
    seeds = np.random.SeedSequence(opts.seed).spawn(len(tasks))  # one stream per task: tasks independent
    for task, seed in zip(tasks, seeds, strict=True):
        pts[task], rows[task] = pair.task(task, metrics.get(task), scales.get(task), opts, seed)
    if pair.mismatches and not opts.allow_mismatch:
        raise CompareError(pair.mismatches[0] + " (--allow-mismatch compares the common samples only)")
    unrestricted = [m for m in pair.mismatches if "cannot restrict" in m]
    if unrestricted:
        raise CompareError(unrestricted[0])
    report = specialization_forgetting({t: p[0] for t, p in pts.items()}, {t: p[1] for t, p in pts.items()},
                                       downstream, upstream)
    if not all(math.isfinite(report[k]) for k in "EFO"):  # finite but huge inputs can overflow
        raise CompareError("scores too large: E, F or O is not finite")
    for task, extra in rows.items():
        r = report["tasks"][task]
        r.update(extra, relative=stats.relative_change(r["pre"], r["post"]))
        if task in pair.deviations:
            r["delta_ci"] = stats.interval(r["delta"], pair.deviations[task], opts.confidence)
        report["tasks"][task] = {"metric": r.pop("metric"), **r}  # "metric" first, as before
    cis = stats.efo_intervals(report, pair.deviations, opts.confidence) if opts.resamples else dict.fromkeys("EFO")
    report.update({f"{k}_ci": v for k, v in cis.items()})
    keep = ("method", "base_model", "trainable_parameters", "seed", "steps")
    report.update(name=name, post=str(post_path),
                  trainable_parameters=manifest.get("trainable_parameters") if manifest else None,
                  manifest={k: manifest.get(k) for k in keep} if manifest else None,
                  pairing={"mismatches": pair.mismatches, "dropped": pair.dropped})
    return report, pair.forgotten


# --------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------

def _methods(report: Mapping) -> dict:
    """Method name -> method report, for a single-post and a many-post report alike."""
    return dict(report["methods"]) if "methods" in report else {report.get("name", "post"): report}


def _num(x, sign: bool = True) -> str:
    return "-" if x is None else (f"{x:+.2f}" if sign else f"{x:.2f}")


def _ci(ci) -> str:
    return "-" if not ci else f"[{ci[0]:+.2f}, {ci[1]:+.2f}]"


def _p(m) -> str:
    return "-" if not m else f"{m['pvalue']:.3g}"


def _task_grid(report: Mapping, relative: bool) -> list[tuple]:
    """Rows per (method, task): the walking skeleton's six columns, then what the samples add."""
    many = "methods" in report
    header = (("method",) if many else ()) + ("task", "role", "metric", "pre", "post", "delta", "delta CI",
                                              "forgot", "learned", "McNemar p") + (("rel %",) if relative else ())
    rows = [header]
    for name, m in _methods(report).items():
        for t, r in m["tasks"].items():
            f = r.get("flips") or {}
            rows.append((name,) * many + (t, r["role"], r["metric"], _num(r["pre"], False), _num(r["post"], False),
                         _num(r["delta"]), _ci(r.get("delta_ci")), str(f.get("forgotten", "-")),
                         str(f.get("learned", "-")), _p(r.get("mcnemar")))
                        + ((_num(r.get("relative")),) if relative else ()))
    return rows


def _summary_grid(report: Mapping) -> list[tuple]:
    """One row per method: parameters, E/F/O with intervals, Pareto membership, per-task deltas."""
    methods = _methods(report)
    tasks = list(next(iter(methods.values()))["tasks"])
    front = report.get("pareto", list(methods))
    rows = [("method", "params", "E", "E CI", "F", "F CI", "O", "O CI", "Pareto") + tuple(f"d {t}" for t in tasks)]
    for name, m in methods.items():
        params = m.get("trainable_parameters")
        rows.append((name, "-" if params is None else f"{params:,}",
                     *(c for k in "EFO" for c in (_num(m[k]), _ci(m.get(f"{k}_ci")))),
                     "*" if name in front else "", *(_num(m["tasks"][t]["delta"]) for t in tasks)))
    return rows


def format_table(report: dict, relative: bool = False) -> str:
    """Plain-text table: one row per task (per method), then E, F, O (2 decimals) or, for many methods, one
    summary row per method."""
    lines = outputs.text_grid(_task_grid(report, relative), 4 + ("methods" in report))
    if "methods" in report:
        return "\n".join(lines + ["", *outputs.text_grid(_summary_grid(report), 1)])
    conf = report.get("bootstrap", {}).get("confidence", 0.95)
    names = {"E": "E (specialization, mean downstream delta)", "F": "F (forgetting, mean upstream delta)      ",
             "O": "O (overall, E + F)                       "}
    lines.append("")
    for k, text in names.items():
        ci = report.get(f"{k}_ci")
        lines.append(f"{text} = {report[k]:+.2f}" + (f"   {conf:.0%} CI {_ci(ci)}" if ci else ""))
    return "\n".join(lines)


CSV_FIELDS = ("method", "task", "role", "metric", "scale", "pre", "post", "delta", "ci_low", "ci_high", "relative",
              "n", "dropped", "forgotten", "learned", "mcnemar_p", "trainable_parameters")


def csv_records(report: Mapping) -> list[dict]:
    """Long format: a row per (method, task) and per (method, E|F|O)."""
    out = []
    for name, m in _methods(report).items():
        for t, r in m["tasks"].items():
            ci, f = r.get("delta_ci") or [None, None], r.get("flips") or {}
            out.append({**r, "method": name, "task": t, "ci_low": ci[0], "ci_high": ci[1],
                        "forgotten": f.get("forgotten"), "learned": f.get("learned"),
                        "mcnemar_p": (r.get("mcnemar") or {}).get("pvalue"),
                        "trainable_parameters": m.get("trainable_parameters")})
        for k in "EFO":
            ci = m.get(f"{k}_ci") or [None, None]
            out.append({"method": name, "task": k, "delta": m[k], "ci_low": ci[0], "ci_high": ci[1],
                        "trainable_parameters": m.get("trainable_parameters")})
    return out


def markdown(report: Mapping, relative: bool = True) -> str:
    """The Markdown report: a summary row per method, then every task."""
    conf = report["bootstrap"]["confidence"]
    return (f"# forgetbench compare\n\nPoints on 0-100; CI = {conf:.0%} paired bootstrap interval "
            f"({report['bootstrap']['resamples']} resamples, seed {report['bootstrap']['seed']}); "
            f"F < 0 means the model forgot.\n\n" + outputs.markdown_table(_summary_grid(report), 1)
            + "\n\n" + outputs.markdown_table(_task_grid(report, relative), 4 + ("methods" in report)) + "\n")


def render_files(report: dict, forgotten: list[dict], out: Path | None, json_path: Path | None) -> dict[Path, bytes]:
    """Every output file's bytes, rendered before anything is written."""
    files = {}
    if json_path is not None:
        files[json_path] = outputs.json_bytes(report)
    if out is not None:
        methods = _methods(report)
        files[out / "compare.json"] = outputs.json_bytes(report)
        files[out / "compare.md"] = markdown(report).encode()
        files[out / "compare.csv"] = outputs.csv_bytes(csv_records(report), CSV_FIELDS)
        files[out / "forgotten.csv"] = outputs.csv_bytes(
            forgotten, ("method", "task", "doc_id", "input", "target", "pre_answer", "post_answer"))
        from forgetbench.plots import ef_plot

        for ext, data in ef_plot(methods, report.get("pareto", list(methods))).items():
            files[out / f"ef.{ext}"] = data
    return files


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------

def _task_list(text: str, option: str) -> list[str]:
    tasks = [t.strip() for t in text.split(",")]
    if not all(tasks):
        raise CompareError(f"{option}: empty task name in {text!r}")
    dupes = sorted({t for t in tasks if tasks.count(t) > 1})
    if dupes:
        raise CompareError(f"{option}: task listed twice: {', '.join(dupes)}")
    return tasks


def assignments(items: Sequence[str] | None, option: str, tasks: Sequence[str]) -> dict[str, str]:
    """``TASK=VALUE`` options (``--metric``, ``--metric-scale``) as a mapping, refusing unknown tasks."""
    out: dict[str, str] = {}
    for item in items or ():
        task, sep, value = item.partition("=")
        task, value = task.strip(), value.strip()
        if not sep or not task or not value:
            raise CompareError(f"{option}: expected TASK=VALUE, got {item!r}")
        if task not in tasks:
            raise CompareError(f"{option}: '{task}' is not among the compared tasks")
        if option == "--metric-scale":
            try:
                stats.scale_factor(value)
            except ValueError:
                raise CompareError(f"{option}: scale of '{task}' must be {stats.SCALE_HELP}, got {value!r}") from None
        out[task] = value
    return out


def _posts(items: Sequence[str]) -> list[tuple[str, str]]:
    """``--post DIR`` or repeated ``--post NAME=DIR`` as ``[(name, dir)]``; an existing path is never split."""
    posts = []
    for item in items:
        name, sep, path = item.partition("=")
        if os.path.exists(item) or not sep or not name.strip() or not path:
            name, path = ("post" if len(items) == 1 else Path(item).name or item), item
        posts.append((name.strip(), path))
    names = [n for n, _ in posts]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise CompareError(f"--post: method name used twice: {', '.join(dupes)} (use --post NAME=DIR)")
    return posts


def add_score_options(parser: argparse.ArgumentParser) -> None:
    """``--metric`` and ``--metric-scale`` (shared with ``forgetbench stages``)."""
    parser.add_argument("--metric", action="append", metavar="TASK=NAME",
                        help="primary metric of TASK (repeatable); NAME may carry a filter: NAME,FILTER")
    parser.add_argument("--metric-scale", action="append", metavar=f"TASK={stats.SCALE_HELP}",
                        help="scale of TASK's metric when forgetbench does not know it (repeatable)")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the ``compare`` arguments to ``parser``."""
    parser.description = parser.description or (
        "Compare a base (pre) and fine-tuned (post) lmms-eval run: E, F and O in points.")
    parser.add_argument("--pre", required=True, metavar="DIR",
                        help="lmms-eval --output_path of the base model (or its *_results.json)")
    parser.add_argument("--post", required=True, action="append", metavar="[NAME=]DIR",
                        help="lmms-eval --output_path of a fine-tuned model; repeat as NAME=DIR for many methods")
    parser.add_argument("--downstream", required=True, metavar="TASK[,TASK...]",
                        help="tasks the fine-tune targets (E)")
    parser.add_argument("--upstream", required=True, metavar="TASK[,TASK...]",
                        help="general tasks to watch for forgetting (F)")
    add_score_options(parser)
    parser.add_argument("--json", dest="json_path", metavar="FILE", help="also write the result as JSON to FILE")
    parser.add_argument("--out", metavar="DIR", help="write compare.json, compare.md, compare.csv, forgotten.csv, "
                                                     "ef.png and ef.svg into DIR (created if needed)")
    parser.add_argument("--resamples", type=int, default=10000, metavar="B",
                        help="bootstrap resamples for the intervals; 0 turns them off (default: %(default)s)")
    parser.add_argument("--confidence", type=float, default=0.95, help="interval level (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: %(default)s)")
    parser.add_argument("--allow-mismatch", action="store_true",
                        help="compare only the samples both runs share instead of refusing differing runs")
    parser.add_argument("--relative", action="store_true", help="add post/pre - 1 (in %%) to the printed table")


def _compare(args: argparse.Namespace) -> tuple[dict, list]:
    downstream = _task_list(args.downstream, "--downstream")
    upstream = _task_list(args.upstream, "--upstream")
    both = [t for t in downstream if t in upstream]
    if both:
        raise CompareError(f"task(s) both downstream and upstream: {', '.join(both)}")
    if args.resamples < 0 or not 0 < args.confidence < 1:
        raise CompareError("--resamples must be >= 0 and --confidence between 0 and 1")
    tasks = downstream + upstream
    choices = assignments(args.metric, "--metric", tasks), assignments(args.metric_scale, "--metric-scale", tasks)
    posts = _posts(args.post)
    pre_label = f"--pre {args.pre}"
    pre = load_run(Path(args.pre), pre_label)
    methods, forgotten = {}, []
    for name, path in posts:
        methods[name], lost = compare_method(pre, pre_label, name, path, (downstream, upstream), choices, args)
        forgotten += lost
    shared = {"schema": SCHEMA, "pre": str(args.pre),
              "bootstrap": {"resamples": args.resamples, "confidence": args.confidence, "seed": args.seed}}
    if len(methods) == 1:
        return {**next(iter(methods.values())), **shared}, forgotten
    front = stats.pareto_front({n: (m["E"], m["F"]) for n, m in methods.items()})
    return {**shared, "methods": methods, "pareto": front}, forgotten


def write_files(files: Mapping[Path, bytes], out: Path | None) -> None:
    """Create ``out`` if needed and write ``files`` all-or-nothing; a failure is a :class:`CompareError`."""
    try:
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
        outputs.write_all_atomic(files)
    except OSError as exc:
        raise CompareError(f"cannot write {exc.filename or ''}: {exc.strerror or exc}") from None


def refuse(prog: str, exc: CompareError) -> int:
    """Print ``exc`` as one line, whatever a path or an OS message may contain; the exit code is 2."""
    print(f"{prog}: error: " + str(exc).replace("\r", " ").replace("\n", " "), file=sys.stderr)
    return 2


def emit(text: str) -> int:
    """Print the table: 0, or 1 when stdout was closed early."""
    try:
        print(text, flush=True)
    except BrokenPipeError:  # e.g. `| head`: silence the flush at exit, as the Python docs advise
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0


def run(args: argparse.Namespace) -> int:
    """Run ``forgetbench compare``; returns the exit code (0 ok, 2 refused)."""
    try:
        report, forgotten = _compare(args)
        json_path, out = (Path(p) if p is not None else None for p in (args.json_path, args.out))
        write_files(render_files(report, forgotten, out, json_path), out)
    except CompareError as exc:
        return refuse(PROG, exc)
    return emit(format_table(report, args.relative))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG)
    configure_parser(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
