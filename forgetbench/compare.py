"""``forgetbench compare``: what a fine-tune gained (E) and forgot (F).

Reads two lmms-eval ``--output_path`` folders (the base model "pre" and the
fine-tuned model "post"), picks one primary metric per task, puts every score
on a 0-100 point scale and reports

* E (specialization): mean over downstream tasks of post - pre,
* F (forgetting): mean over upstream tasks of post - pre (negative = forgot),
* O (overall): E + F.

The maths (:func:`to_points`, :func:`specialization_forgetting`) is pure and
separate from the I/O (:func:`find_results_file`, :func:`load_run`); see
docs/metrics.md for the definitions and their source.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

PROG = "forgetbench compare"
SCALES = ("fraction", "points")

# Scale of well-known lmms-eval metrics, by metric name (without ",filter").
# "fraction": lmms-eval reports 0-1 (0.25 is 25 points); "points": already 0-100.
# One table on purpose: extend it here (e.g. CIDEr, MME) rather than elsewhere.
# A name is only a good guess: a few lmms-eval tasks (mmvu, mmau, sitebench,
# pushupbench, ...) report "accuracy"/"exact_match" already x100, hence the
# 0-1 range check on fraction values in _compare.
METRIC_SCALES: dict[str, str] = {
    "exact_match": "fraction",
    "accuracy": "fraction",
    "acc": "fraction",
    "acc_norm": "fraction",
    "anls": "fraction",
    "relaxed_overall": "fraction",
}


class CompareError(Exception):
    """A refusal: bad input the user can fix. Printed as one line, exit 2."""


# --------------------------------------------------------------------------
# Maths (pure)
# --------------------------------------------------------------------------

def to_points(value: float, scale: str) -> float:
    """Convert a metric value to points on 0-100.

    >>> to_points(0.25, "fraction")
    25.0
    >>> to_points(61.5, "points")
    61.5
    >>> to_points(0.5, "percent")
    Traceback (most recent call last):
    ...
    ValueError: unknown scale 'percent' (expected fraction or points)
    """
    if scale == "fraction":
        return value * 100.0
    if scale == "points":
        return float(value)
    raise ValueError(f"unknown scale {scale!r} (expected fraction or points)")


def specialization_forgetting(
    pre: Mapping[str, float],
    post: Mapping[str, float],
    downstream: Sequence[str],
    upstream: Sequence[str],
) -> dict:
    """E, F and O from per-task scores (already in points).

    Returns ``{"E", "F", "O", "tasks": {task: {"pre", "post", "delta", "role"}}}``.

    >>> pre = {"chartqa": 10.0, "docvqa": 20.0, "mmbench": 90.0, "pope": 50.0}
    >>> post = {"chartqa": 70.0, "docvqa": 40.0, "mmbench": 80.0, "pope": 50.0}
    >>> r = specialization_forgetting(pre, post, ["chartqa", "docvqa"], ["mmbench", "pope"])
    >>> r["E"], r["F"], r["O"]
    (40.0, -5.0, 35.0)
    >>> r["tasks"]["mmbench"]
    {'pre': 90.0, 'post': 80.0, 'delta': -10.0, 'role': 'upstream'}
    """
    if not downstream or not upstream:
        raise ValueError("need at least one downstream and one upstream task")
    if set(downstream) & set(upstream):
        raise ValueError("a task cannot be both downstream and upstream")
    tasks = {}
    for role, names in (("downstream", downstream), ("upstream", upstream)):
        for t in names:
            tasks[t] = {"pre": pre[t], "post": post[t], "delta": post[t] - pre[t], "role": role}

    def mean_delta(names: Sequence[str]) -> float:
        return sum(tasks[t]["delta"] for t in names) / len(names)

    e, f = mean_delta(downstream), mean_delta(upstream)
    return {"E": e, "F": f, "O": e + f, "tasks": tasks}


# --------------------------------------------------------------------------
# Reading lmms-eval runs
# --------------------------------------------------------------------------

def find_results_file(path: Path, label: str) -> Path:
    """The single ``*_results.json`` in ``path`` or its immediate sub-folders.

    ``path`` may also be the results file itself. ``label`` (e.g. ``--pre DIR``)
    prefixes error messages.
    """
    if path.is_file():
        return path
    if not path.is_dir():
        raise CompareError(f"{label}: no such file or folder")
    # lmms-eval writes OUT/<model_name_sanitized>/<date>_results.json.
    found = sorted(path.glob("*_results.json")) + sorted(path.glob("*/*_results.json"))
    if not found:
        raise CompareError(f"{label}: not an lmms-eval output (no *_results.json here or one folder down)")
    if len(found) > 1:
        names = ", ".join(str(p) for p in found)
        raise CompareError(f"{label}: several results files, pass one of them: {names}")
    return found[0]


def load_run(path: Path, label: str) -> dict:
    """Load an lmms-eval results.json and check the parts forgetbench relies on."""
    try:
        file = find_results_file(path, label)
        with open(file, encoding="utf-8") as fh:
            run = json.load(fh)
    except (OSError, ValueError) as exc:  # ValueError covers bad JSON and bad UTF-8
        raise CompareError(f"{label}: not an lmms-eval output ({exc})") from None
    if not isinstance(run, dict) or not isinstance(run.get("results"), dict):
        raise CompareError(f"{label}: not an lmms-eval output ({file} has no 'results' object)")
    # Optional sections must at least have the right shape, so later code can index them.
    for key in ("n-samples", "higher_is_better", "config", "configs"):
        if not isinstance(run.setdefault(key, {}), dict):
            raise CompareError(f"{label}: not an lmms-eval output ({file}: '{key}' is not an object)")
    for task, res in run["results"].items():
        if not isinstance(res, dict):
            raise CompareError(f"{label}: not an lmms-eval output ({file}: results of '{task}' is not an object)")
    return run


def check_comparable(pre: dict, post: dict, tasks: Sequence[str], pre_label: str, post_label: str) -> None:
    """Refuse runs that were not evaluated the same way (else deltas mean nothing)."""
    for run, label in ((pre, pre_label), (post, post_label)):
        missing = [t for t in tasks if t not in run["results"]]
        if missing:
            raise CompareError(f"{label}: task(s) not found: {', '.join(missing)}")
    only_pre = sorted(set(pre["results"]) - set(post["results"]))
    only_post = sorted(set(post["results"]) - set(pre["results"]))
    if only_pre or only_post:
        raise CompareError(
            f"{post_label}: tasks differ from --pre: only in pre: {', '.join(only_pre) or '-'}; "
            f"only in post: {', '.join(only_post) or '-'}"
        )
    # --limit (and --offset) pick which documents are scored.
    for key in ("limit", "offset"):
        a, b = pre["config"].get(key), post["config"].get(key)
        if a != b:
            raise CompareError(f"{post_label}: {key} differs from --pre: pre {a}; post {b}")
    # Every task, not only the requested ones: the two runs must be the same evaluation.
    for task in sorted(set(pre["n-samples"]) | set(post["n-samples"])):
        counts = []
        for run in (pre, post):
            n = run["n-samples"].get(task)
            counts.append((n.get("original"), n.get("effective")) if isinstance(n, dict) else n)
        if counts[0] != counts[1]:
            raise CompareError(
                f"{post_label}: sample counts of '{task}' differ from --pre (original, effective): "
                f"pre {counts[0]}; post {counts[1]}"
            )


def _declared(run: dict, task: str, label: str) -> dict:
    """``configs[task].metadata.forgetbench`` (forgetbench's own tasks), or {}."""
    config = run["configs"].get(task)
    meta = config.get("metadata") if isinstance(config, dict) else None
    if isinstance(meta, list):  # lmms-eval also accepts a list of mappings
        meta = next((m for m in meta if isinstance(m, dict) and "forgetbench" in m), None)
    decl = (meta.get("forgetbench") or {}) if isinstance(meta, dict) else {}
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
    """``fraction`` or ``points``: ``override`` (``--metric-scale``), else the
    declared scale (of the declared primary metric only), else :data:`METRIC_SCALES`.

    >>> metric_scale({"configs": {}}, "t", "exact_match,flexible-extract", "--pre X")
    'fraction'
    >>> run = {"configs": {"t": {"metadata": {"forgetbench": {"primary_metric": "s", "scale": "points"}}}}}
    >>> metric_scale(run, "t", "s", "--pre X")
    'points'
    """
    base = metric.split(",")[0]
    decl = _declared(run, task, label)
    declared = decl.get("scale") if base == decl.get("primary_metric") else None
    scale = override or declared or METRIC_SCALES.get(base)
    if scale not in SCALES:
        what = f"unknown scale {scale!r}" if scale else "unknown scale"
        raise CompareError(f"task '{task}': {what} for metric '{base}'; "
                           f"declare it with --metric-scale {task}=fraction|points")
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


def _assignments(items: Sequence[str] | None, option: str, tasks: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or ():
        task, sep, value = item.partition("=")
        task, value = task.strip(), value.strip()
        if not sep or not task or not value:
            raise CompareError(f"{option}: expected TASK=VALUE, got {item!r}")
        if task not in tasks:
            raise CompareError(f"{option}: '{task}' is not among --downstream/--upstream")
        if option == "--metric-scale" and value not in SCALES:
            raise CompareError(f"{option}: scale of '{task}' must be fraction or points, got {value!r}")
        out[task] = value
    return out


def format_table(report: dict) -> str:
    """Plain-text table: one row per task, then E, F, O (2 decimals)."""
    header = ("task", "role", "metric", "pre", "post", "delta")
    rows = [header] + [
        (t, r["role"], r["metric"], f"{r['pre']:.2f}", f"{r['post']:.2f}", f"{r['delta']:+.2f}")
        for t, r in report["tasks"].items()
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    # Text columns left-aligned, numbers right-aligned.
    align = [str.ljust] * 3 + [str.rjust] * 3
    lines = ["  ".join(a(c, w) for a, c, w in zip(align, row, widths, strict=True)).rstrip() for row in rows]
    lines += [
        "",
        f"E (specialization, mean downstream delta) = {report['E']:+.2f}",
        f"F (forgetting, mean upstream delta)       = {report['F']:+.2f}",
        f"O (overall, E + F)                        = {report['O']:+.2f}",
    ]
    return "\n".join(lines)


def write_json_atomic(path: Path, data: dict) -> None:
    """Write via a temp file in the same folder + os.replace: never a partial file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, allow_nan=False)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the ``compare`` arguments to ``parser``."""
    parser.description = parser.description or (
        "Compare a base (pre) and fine-tuned (post) lmms-eval run: E, F and O in points.")
    parser.add_argument("--pre", required=True, metavar="DIR",
                        help="lmms-eval --output_path of the base model (or its *_results.json)")
    parser.add_argument("--post", required=True, metavar="DIR",
                        help="lmms-eval --output_path of the fine-tuned model (or its *_results.json)")
    parser.add_argument("--downstream", required=True, metavar="TASK[,TASK...]",
                        help="tasks the fine-tune targets (E)")
    parser.add_argument("--upstream", required=True, metavar="TASK[,TASK...]",
                        help="general tasks to watch for forgetting (F)")
    parser.add_argument("--metric", action="append", metavar="TASK=NAME",
                        help="primary metric of TASK (repeatable); NAME may carry a filter: NAME,FILTER")
    parser.add_argument("--metric-scale", action="append", metavar="TASK=fraction|points",
                        help="scale of TASK's metric when forgetbench does not know it (repeatable)")
    parser.add_argument("--json", dest="json_path", metavar="FILE",
                        help="also write the result as JSON to FILE")


def _compare(args: argparse.Namespace) -> dict:
    downstream = _task_list(args.downstream, "--downstream")
    upstream = _task_list(args.upstream, "--upstream")
    both = [t for t in downstream if t in upstream]
    if both:
        raise CompareError(f"task(s) both downstream and upstream: {', '.join(both)}")
    tasks = downstream + upstream
    metrics = _assignments(args.metric, "--metric", tasks)
    scales = _assignments(args.metric_scale, "--metric-scale", tasks)

    pre_label, post_label = f"--pre {args.pre}", f"--post {args.post}"
    pre = load_run(Path(args.pre), pre_label)
    post = load_run(Path(args.post), post_label)
    check_comparable(pre, post, tasks, pre_label, post_label)

    chosen, pre_pts, post_pts = {}, {}, {}
    for t in tasks:
        metric = primary_metric(pre, t, pre_label, metrics.get(t))
        if primary_metric(post, t, post_label, metrics.get(t)) != metric:
            raise CompareError(f"{post_label}: task '{t}': primary metric differs from --pre")
        values = metric_value(pre, t, metric, pre_label), metric_value(post, t, metric, post_label)
        scale = metric_scale(pre, t, metric, pre_label, scales.get(t))
        if metric_scale(post, t, metric, post_label, scales.get(t)) != scale:
            raise CompareError(f"{post_label}: task '{t}': scale of '{metric}' differs from --pre")
        # Catches a metric guessed as fraction that the task already reports x100.
        if scale == "fraction" and not all(0.0 <= v <= 1.0 for v in values):
            raise CompareError(f"task '{t}': metric '{metric}' is not a 0-1 fraction (pre {values[0]:g}, "
                               f"post {values[1]:g}); if it is already in points, pass --metric-scale {t}=points")
        chosen[t] = metric
        pre_pts[t], post_pts[t] = (to_points(v, scale) for v in values)

    report = specialization_forgetting(pre_pts, post_pts, downstream, upstream)
    if not all(math.isfinite(report[k]) for k in "EFO"):  # finite but huge inputs can overflow
        raise CompareError("scores too large: E, F or O is not finite")
    for t, row in report["tasks"].items():
        report["tasks"][t] = {"metric": chosen[t], **row}
    return report


def run(args: argparse.Namespace) -> int:
    """Run ``forgetbench compare``; returns the exit code (0 ok, 2 refused)."""
    try:
        report = _compare(args)
        if args.json_path is not None:
            try:
                write_json_atomic(Path(args.json_path), report)
            except OSError as exc:
                raise CompareError(f"--json {args.json_path}: cannot write: {exc.strerror or exc}") from None
    except CompareError as exc:
        # One line, whatever a path or an OS message may contain.
        print(f"{PROG}: error: " + str(exc).replace("\r", " ").replace("\n", " "), file=sys.stderr)
        return 2
    try:
        print(format_table(report), flush=True)
    except BrokenPipeError:  # e.g. `| head`: silence the flush at exit, as the Python docs advise
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG)
    configure_parser(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
