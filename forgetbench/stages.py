"""``forgetbench stages``: a model fine-tuned on task 1, then task 2, ... and evaluated on every task after each
stage. Reports the accuracy matrix and BWT, MFN, MAA and average forgetting (formulas in docs/metrics.md).

``a[i][j]`` is the score (points) on task j after stage i, where stage i fine-tuned on task i (0-based here).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from forgetbench import outputs
from forgetbench.compare import (
    add_score_options,
    assignments,
    emit,
    paired_scores,
    refuse,
    to_points,
    write_files,
)
from forgetbench.runs import CompareError, load_run, run_mismatches

PROG = "forgetbench stages"
SCHEMA = "forgetbench.stages/1"


def stage_metrics(a: Sequence[Sequence[float]]) -> dict[str, float]:
    """BWT, MFN, MAA and AF of a T x T accuracy matrix (T >= 2).

    * MFN, final mean accuracy: mean_j a[T-1][j];
    * MAA, mean average accuracy: mean over stages i of mean_{j <= i} a[i][j];
    * BWT, backward transfer: mean_{j < T-1} (a[T-1][j] - a[j][j]) (negative = forgot);
    * AF, average forgetting: mean_{j < T-1} (max_{i < T-1} a[i][j] - a[T-1][j]).

    >>> a = [[80, 10, 20], [85, 70, 25], [50, 65, 90]]
    >>> {k: round(v, 4) for k, v in stage_metrics(a).items()}
    {'MFN': 68.3333, 'MAA': 75.2778, 'BWT': -17.5, 'AF': 20.0}
    """
    t = len(a)
    if t < 2 or any(len(row) != t for row in a):
        raise ValueError("need a square accuracy matrix with at least 2 stages")
    last = a[-1]
    return {
        "MFN": sum(last) / t,
        "MAA": sum(sum(a[i][: i + 1]) / (i + 1) for i in range(t)) / t,
        "BWT": sum(last[j] - a[j][j] for j in range(t - 1)) / (t - 1),
        "AF": sum(max(a[i][j] for i in range(t - 1)) - last[j] for j in range(t - 1)) / (t - 1),
    }


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the ``stages`` arguments to ``parser``."""
    parser.description = parser.description or __doc__.splitlines()[0]
    parser.add_argument("--stage", required=True, action="append", metavar="TASK=DIR",
                        help="in training order: the task stage i fine-tuned on, and the lmms-eval --output_path "
                             "of the model after it (evaluated on every stage task); at least 2")
    add_score_options(parser)
    parser.add_argument("--json", dest="json_path", metavar="FILE", help="also write the result as JSON to FILE")
    parser.add_argument("--out", metavar="DIR", help="write stages.json, stages.md and stages.csv into DIR")


def _stages(args: argparse.Namespace) -> dict:
    pairs = [item.partition("=") for item in args.stage]
    if any(not sep or not t.strip() or not d for t, sep, d in pairs):
        raise CompareError("--stage: expected TASK=DIR for every stage")
    tasks, dirs = [t.strip() for t, _, _ in pairs], [d for _, _, d in pairs]
    if len(tasks) < 2 or len(set(tasks)) != len(tasks):
        raise CompareError("--stage: need at least 2 stages, each on a different task")
    metrics, scales = assignments(args.metric, "--metric", tasks), assignments(args.metric_scale, "--metric-scale",
                                                                              tasks)
    runs = [(load_run(Path(d), f"--stage {t}={d}"), f"--stage {t}={d}") for t, d in zip(tasks, dirs, strict=True)]
    for run, label in runs[1:]:
        found = run_mismatches(runs[0][0], run, tasks, runs[0][1], label)
        if found:
            raise CompareError(found[0].replace("--pre", "the first stage"))
    columns, chosen = [], {}
    for task in tasks:
        chosen[task], scale, values = paired_scores(runs, task, metrics.get(task), scales.get(task))
        columns.append([to_points(v, scale) for v in values])
    matrix = [[columns[j][i] for j in range(len(tasks))] for i in range(len(tasks))]
    return {"schema": SCHEMA, "tasks": tasks, "runs": dirs, "metrics": chosen, "matrix": matrix,
            **stage_metrics(matrix)}


def _grid(report: dict) -> list[tuple]:
    tasks = report["tasks"]
    return [("after stage", *tasks)] + [
        (f"{i + 1}: {t}", *(f"{v:.2f}" for v in row)) for i, (t, row) in enumerate(zip(tasks, report["matrix"],
                                                                                        strict=True))]


def format_table(report: dict) -> str:
    """The accuracy matrix (rows: after each stage; columns: tasks), then the four summaries."""
    return "\n".join(outputs.text_grid(_grid(report), 1) + [
        "", f"MFN (final mean accuracy)   = {report['MFN']:.2f}", f"MAA (mean average accuracy) = {report['MAA']:.2f}",
        f"BWT (backward transfer)     = {report['BWT']:+.2f}", f"AF (average forgetting)     = {report['AF']:.2f}"])


def run(args: argparse.Namespace) -> int:
    """Run ``forgetbench stages``; returns the exit code (0 ok, 2 refused)."""
    try:
        report = _stages(args)
        files = {Path(args.json_path): outputs.json_bytes(report)} if args.json_path else {}
        if args.out:
            out = Path(args.out)
            records = [{"stage": i + 1, "trained_on": t, **dict(zip(report["tasks"], row, strict=True))}
                       for i, (t, row) in enumerate(zip(report["tasks"], report["matrix"], strict=True))]
            summary = "\n".join(f"- **{k}** = {report[k]:.2f}" for k in ("MFN", "MAA", "BWT", "AF"))
            files.update({out / "stages.json": outputs.json_bytes(report),
                          out / "stages.md": f"# forgetbench stages\n\n{outputs.markdown_table(_grid(report), 1)}"
                                             f"\n\n{summary}\n".encode(),
                          out / "stages.csv": outputs.csv_bytes(records, ["stage", "trained_on", *report["tasks"]])})
        write_files(files, Path(args.out) if args.out else None)
    except CompareError as exc:
        return refuse(PROG, exc)
    return emit(format_table(report))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG)
    configure_parser(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
