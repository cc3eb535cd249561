"""``forgetbench stages``: a model fine-tuned on task 1, then task 2, ... and evaluated on every task after each
stage. Reports the accuracy matrix and BWT, MFN, MAA and average forgetting (formulas in docs/metrics.md).

``a[i][j]`` is the score (points) on task j after stage i, where stage i fine-tuned on task i (0-based here).
Runs are read and paired, and tasks scored, exactly as ``forgetbench compare`` does; its CLI is at the end.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from forgetbench import outputs
from forgetbench.checkpoint import same_model
from forgetbench.compare import cli, pairing, render, scores, stats
from forgetbench.compare.errors import CompareError
from forgetbench.compare.report import check_choice, check_outputs
from forgetbench.compare.runs import load_manifest, load_run, pretrained
from forgetbench.errors import command_main, emit

PROG = "forgetbench stages"
SCHEMA = "forgetbench.stages/1"
SUMMARIES = ("MFN", "MAA", "BWT", "AF")


def stage_metrics(a: Sequence[Sequence[float]]) -> dict[str, float]:
    """BWT, MFN, MAA and AF of a T x T accuracy matrix (T >= 2).

    * MFN, final mean accuracy: mean_j a[T-1][j];
    * MAA, mean average accuracy: mean over stages i of mean_{j <= i} a[i][j];
    * BWT, backward transfer: mean_{j < T-1} (a[T-1][j] - a[j][j]) (negative = forgot);
    * AF, average forgetting: mean_{j < T-1} (max_{i < T-1} a[i][j] - a[T-1][j]), the forgetting measure of
      Chaudhry et al. 2018 ("Riemannian Walk for Incremental Learning", ECCV) after the last stage, F_T =
      mean_{j<T} f_j, f_j = max_{l<T} a_{l,j} - a_{T,j}: positive = forgot, negative when the final model beats
      every earlier one on an old task (it is not clipped at 0).

    >>> a = [[80, 10, 20], [85, 70, 25], [50, 65, 90]]
    >>> {k: round(v, 4) for k, v in stage_metrics(a).items()}
    {'MFN': 68.3333, 'MAA': 75.2778, 'BWT': -17.5, 'AF': 20.0}
    >>> stage_metrics([[40, 10], [75, 90]])["AF"]  # task 1 went up from 40 to 75: negative forgetting
    -35.0
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


def check_stage_tasks(tasks: Sequence[str]) -> None:
    if len(tasks) < 2 or len(set(tasks)) != len(tasks):
        raise CompareError("--stage: need at least 2 stages, each on a different task")


def lineage_mismatches(tasks: Sequence[str], runs: Sequence[tuple[dict, str]],
                       manifests: Sequence[dict | None] | None = None) -> list[pairing.Mismatch]:
    """Stages whose checkpoint (its forgetbench manifest) was not tuned from the model the stage before evaluated
    (``base_model``/``base_model_path``), or was tuned on another task than the stage names (``data.dataset``). A
    stage without a manifest, or whose data is not a task name (a folder, a hub dataset), cannot be checked and is
    not refused. ``manifests`` are the stages' (read here when not given)."""
    if manifests is None:
        manifests = [load_manifest(run, label) for run, label in runs]
    out = []
    for i, ((_, label), manifest) in enumerate(zip(runs, manifests, strict=True)):
        dataset = tuned_on(manifest)
        if dataset is not None and not (tasks[i] == dataset or tasks[i].startswith(f"{dataset}_")):
            out.append(pairing.Mismatch(
                "tuned-on", tasks[i], dataset, f"{label}: stage {i + 1} is labelled '{tasks[i]}', but its checkpoint "
                                               f"was tuned on '{dataset}' (manifest data.dataset)",
                restrictable=False, task=tasks[i]))
        if i == 0:
            continue
        found = pairing.manifest_mismatch(runs[i - 1][0], manifest, label)
        if found is None:
            continue
        origin = "trained from scratch" if found.post is None else f"tuned from '{found.post}'"
        out.append(pairing.Mismatch(
            "lineage", found.pre, found.post,
            f"{label}: stage {i + 1} ({tasks[i]}) is not tuned from stage {i} ({tasks[i - 1]}): its checkpoint was "
            f"{origin}, but stage {i} evaluated '{found.pre}'", restrictable=False, task=tasks[i]))
    return out


_TASK_NAME = re.compile(r"\w[\w.-]*")


def tuned_on(manifest: dict | None) -> str | None:
    """The task a checkpoint was fine-tuned on, when its manifest's ``data.dataset`` is a task name (a recipe's
    ``--dataset_name`` that names a task), else None: a folder, a hub dataset (``org/name``) or a description
    cannot be matched with a stage's task.

    >>> tuned_on({"data": {"dataset": "forgetbench_lab_digits"}}), tuned_on({"data": {"dataset": "org/data"}})
    ('forgetbench_lab_digits', None)
    >>> tuned_on({"data": {"dataset": "lab upstream splits + 'Say <word>.' rows"}}), tuned_on({}), tuned_on(None)
    (None, None, None)
    """
    data = manifest.get("data") if isinstance(manifest, dict) else None
    dataset = data.get("dataset") if isinstance(data, dict) else None
    if not isinstance(dataset, str) or not _TASK_NAME.fullmatch(dataset) or os.path.exists(dataset):
        return None
    return dataset


def check_distinct_runs(tasks: Sequence[str], runs: Sequence[tuple[dict, str]]) -> None:
    """Refuse one run, or one evaluated model, used for two stages: each stage is the model after its own
    fine-tune, evaluated on its own."""
    for j, (run, label) in enumerate(runs):
        for i in range(j):
            earlier = runs[i][0]
            if run["_file"].resolve() == earlier["_file"].resolve():
                raise CompareError(f"{label}: stage {j + 1} ({tasks[j]}) reads the same run as stage {i + 1} "
                                   f"({tasks[i]}): {run['_file']}")
            model, before = pretrained(run), pretrained(earlier)
            if model is not None and before is not None and same_model(model, before):
                raise CompareError(f"{label}: stage {j + 1} ({tasks[j]}) evaluated the same model as stage {i + 1} "
                                   f"({tasks[i]}): '{model}'; each stage evaluates the model after its own fine-tune")


def compare_stages(stages: Sequence[tuple[str, str | Path]], metrics: Mapping[str, str] | None = None,
                   scales: Mapping[str, str] | None = None, allow_lineage_mismatch: bool = False) -> dict:
    """The stages report (schema ``forgetbench.stages/1``) of ``[(task stage i tuned on, its lmms-eval output)]``
    in training order; ``metrics`` and ``scales`` override a task's metric and scale, as in compare.

    Each stage is its own run of its own model. Stage i must be tuned from stage i-1, and on its task, where the
    checkpoints' manifests tell; with ``allow_lineage_mismatch`` a stage that is not is accepted and listed under
    ``lineage_mismatches``."""
    tasks, dirs = [t for t, _ in stages], [d for _, d in stages]
    check_stage_tasks(tasks)
    metrics, scales = metrics or {}, scales or {}
    for option, choices in (("--metric", metrics), ("--metric-scale", scales)):
        for task, value in choices.items():
            check_choice(option, task, value, tasks)
    labels = [f"--stage {t}={d}" for t, d in stages]
    stage_runs = [(load_run(Path(d), label), label) for d, label in zip(dirs, labels, strict=True)]
    check_distinct_runs(tasks, stage_runs)
    for run, label in stage_runs[1:]:
        found = pairing.run_mismatches(stage_runs[0][0], run, tasks, stage_runs[0][1], label,
                                       reference="the first stage")
        if found:
            raise CompareError(found[0].message)
    lineage = lineage_mismatches(tasks, stage_runs)
    if lineage and not allow_lineage_mismatch:
        raise CompareError(f"{lineage[0].message} (--allow-lineage-mismatch accepts it)")
    points, chosen = [], {}
    for task in tasks:
        chosen[task], scale, values = scores.paired_scores(stage_runs, task, metrics.get(task), scales.get(task))
        points.append([stats.to_points(v, scale) for v in values])
    matrix = [[points[j][i] for j in range(len(tasks))] for i in range(len(tasks))]
    return {"schema": SCHEMA, "tasks": tasks, "runs": [str(d) for d in dirs], "metrics": chosen, "matrix": matrix,
            **stage_metrics(matrix), "lineage_mismatches": [m.message for m in lineage]}


def _grid(report: Mapping) -> list[tuple]:
    tasks = report["tasks"]
    return [("after stage", *tasks)] + [
        (f"{i + 1}: {t}", *(f"{v:.2f}" for v in row)) for i, (t, row) in enumerate(zip(tasks, report["matrix"],
                                                                                        strict=True))]


def format_table(report: Mapping) -> str:
    """The accuracy matrix (rows: after each stage; columns: tasks), then the four summaries."""
    return "\n".join(outputs.text_grid(_grid(report), 1) + [
        "", f"MFN (final mean accuracy)   = {report['MFN']:.2f}", f"MAA (mean average accuracy) = {report['MAA']:.2f}",
        f"BWT (backward transfer)     = {report['BWT']:+.2f}", f"AF (average forgetting)     = {report['AF']:.2f}"]
        + [f"accepted (--allow-lineage-mismatch): {m}" for m in report.get("lineage_mismatches", [])])


def render_files(report: Mapping, out: Path | None, json_path: Path | None) -> dict[Path, bytes]:
    """``json_path`` and, in ``out``, stages.json, stages.md and stages.csv, as bytes."""
    files = {json_path: outputs.json_bytes(report)} if json_path is not None else {}
    if out is not None:
        records = [{"stage": i + 1, "trained_on": t, **dict(zip(report["tasks"], row, strict=True))}
                   for i, (t, row) in enumerate(zip(report["tasks"], report["matrix"], strict=True))]
        summary = "\n".join(f"- **{k}** = {report[k]:.2f}" for k in SUMMARIES)
        files.update({out / "stages.json": outputs.json_bytes(report),
                      out / "stages.md": f"# forgetbench stages\n\n{outputs.markdown_table(_grid(report), 1)}"
                                         f"\n\n{summary}\n".encode(),
                      out / "stages.csv": render.csv_bytes(records, ["stage", "trained_on", *report["tasks"]])})
    return files


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------

def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the ``stages`` arguments to ``parser``."""
    parser.description = parser.description or __doc__.splitlines()[0]
    parser.add_argument("--stage", required=True, action="append", metavar="TASK=DIR",
                        help="in training order: the task stage i fine-tuned on, and the lmms-eval --output_path "
                             "of the model after it (evaluated on every stage task); at least 2")
    cli.add_score_options(parser)
    parser.add_argument("--json", dest="json_path", metavar="FILE", help="also write the result as JSON to FILE")
    parser.add_argument("--out", metavar="DIR", help="write stages.json, stages.md and stages.csv into DIR")
    parser.add_argument("--allow-lineage-mismatch", action="store_true",
                        help="accept a stage whose checkpoint (forgetbench manifest) was not tuned from the model the "
                             "stage before evaluated, or on another task than the stage names; listed under "
                             "lineage_mismatches")


def _stages(args: argparse.Namespace) -> dict:
    pairs = [item.partition("=") for item in args.stage]
    if any(not sep or not t.strip() or not d for t, sep, d in pairs):
        raise CompareError("--stage: expected TASK=DIR for every stage")
    tasks, dirs = [t.strip() for t, _, _ in pairs], [d for _, _, d in pairs]
    check_stage_tasks(tasks)
    check_outputs(dirs, args.out, args.json_path)
    metrics = cli.assignments(args.metric, "--metric", tasks)
    scales = cli.assignments(args.metric_scale, "--metric-scale", tasks)
    return compare_stages(list(zip(tasks, dirs, strict=True)), metrics, scales, args.allow_lineage_mismatch)


def run(args: argparse.Namespace) -> int:
    """``forgetbench stages``: 0, or 1 when stdout was closed early; a refusal raises (``main`` and the
    ``forgetbench`` command print it as one line, exit 2)."""
    report = _stages(args)
    out = Path(args.out) if args.out else None
    render.write_files(render_files(report, out, Path(args.json_path) if args.json_path else None), out)
    return emit(format_table(report))



def main(argv: Sequence[str] | None = None) -> int:
    """``forgetbench stages`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    return command_main(PROG, configure_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
