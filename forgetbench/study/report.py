"""``report.html``: one self-contained page (no outside resources) that answers "which way of tuning keeps the model
itself": a headline per arm, the per-task table, the E-versus-F plot, forgotten and learned samples with their
images, how the classification answer kinds moved (EMT's hallucination finding), and the provenance.

Rendered with Jinja2 (autoescaped) from ``templates/report.html.j2``; images are inlined as base64 PNG.
"""

from __future__ import annotations

import base64
import functools
import io
import json
from collections import Counter
from pathlib import Path

from forgetbench import suite
from forgetbench.checkpoint import library_versions, read_manifest
from forgetbench.outputs import write_all_atomic
from forgetbench.suite import scoring

SAMPLES_PER_TASK = 4  # forgotten (and learned) samples shown per arm and task


def _png(image, size: int = 64) -> str:
    image = image.convert("RGB")
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


@functools.cache
def _documents(task: str):
    return suite.load_split(task, "test")


def thumbnail(task: str, doc_id: int) -> str | None:
    """The document's first image as a data URL, for registered tasks whose test split loads offline."""
    if task not in suite.TASKS:
        return None
    try:
        doc = _documents(task)[int(doc_id)]
        images = suite._module(suite.TASKS[task]).doc_to_visual(doc)
    except Exception:  # noqa: BLE001 - a report without a thumbnail beats no report; the row still shows the text
        return None
    return _png(images[0]) if images else None


def label_set(task: str) -> tuple[str, ...] | None:
    """The label set of a classification-as-QA task (the lab's and EMT's), else None.

    >>> label_set("forgetbench_lab_shape")
    ('circle', 'square', 'triangle', 'cross')
    >>> label_set("gqa") is None
    True
    """
    name = task.removesuffix("_closed")
    if name.startswith(suite.lab.PREFIX) and name[len(suite.lab.PREFIX):] in suite.lab.LAB_TASKS:
        return suite.lab.LAB_TASKS[name[len(suite.lab.PREFIX):]].labels
    if name.startswith("forgetbench_emt_"):
        from forgetbench.suite import emt

        return emt.DATASETS[name.removeprefix("forgetbench_emt_")].labels
    return None


def _sample_log(eval_dir: Path, task: str) -> list[dict]:
    found = sorted(eval_dir.glob(f"*/*_samples_{task}.jsonl"))
    return [json.loads(line) for line in found[0].read_text().splitlines() if line.strip()] if found else []


DOWNSTREAM_LABEL = "downstream_label"  # a hallucination that names a label of the tuned-on task (EMT's drift)


def answer_kinds(eval_dir: Path, task: str, labels: tuple[str, ...], downstream_labels: tuple[str, ...] = ()
                 ) -> dict[str, int]:
    """How many answers of each EMT kind (correct, wrong label, several labels, outside the label set), and how many
    of those outside the label set name a label of the downstream task instead (``downstream_label``): EMT's
    finding that a tuned model answers other questions with the labels it was tuned on. Labels the task itself has
    are not counted as downstream ones."""
    foreign = tuple(label for label in downstream_labels if label not in labels)
    counts = Counter()
    for row in _sample_log(eval_dir, task):
        answer = row.get("filtered_resps") or [""]
        answer = str(answer[0] if isinstance(answer, list) else answer)
        kind = scoring.judge_label(answer, str(row.get("target")), labels)
        counts[kind] += 1
        if kind == scoring.HALLUCINATION and foreign and scoring.labels_mentioned(answer, foreign):
            counts[DOWNSTREAM_LABEL] += 1
    return {kind: counts.get(kind, 0) for kind in (*scoring.JUDGEMENTS, DOWNSTREAM_LABEL)}


def verdict(method: dict) -> str:
    """Plain words for one arm: what it gained, what it forgot, and on how many upstream tasks that is significant.

    >>> verdict({"E": 40.0, "F": -12.3, "tasks": {"a": {"role": "upstream", "delta_ci": [-20.0, -5.0]},
    ...          "b": {"role": "upstream", "delta_ci": [-3.0, 1.0]}, "d": {"role": "downstream"}}})
    'gained 40.0 points on the target task; forgot 12.3 points of general ability, significant on 1 of 2 upstream tasks'
    """
    upstream = [r for r in method["tasks"].values() if r["role"] == "upstream"]
    worse = sum(1 for r in upstream if r.get("delta_ci") and r["delta_ci"][1] < 0)
    better = sum(1 for r in upstream if r.get("delta_ci") and r["delta_ci"][0] > 0)
    gain = f"gained {method['E']:.1f} points on the target task" if method["E"] >= 0 else \
        f"lost {-method['E']:.1f} points on the target task"
    if method["F"] < 0:
        cost = f"forgot {-method['F']:.1f} points of general ability"
    else:
        cost = f"gained {method['F']:.1f} points of general ability"
    return f"{gain}; {cost}, significant on {worse if method['F'] < 0 else better} of {len(upstream)} upstream tasks"


def write_report(out: Path, plan, state: dict, comparison, points: list[str]) -> Path:
    """``points``: the compared checkpoints in order (each arm, then its WiSE-FT alphas), named as in compare."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    report = comparison.report
    methods = report["methods"] if "methods" in report else {points[0]: report}
    samples = []
    for row in comparison.forgotten + list(getattr(comparison, "learned", []) or []):
        kind = row.get("kind", "forgotten")
        shown = sum(1 for s in samples if (s["method"], s["task"], s["kind"]) == (row["method"], row["task"], kind))
        if shown < SAMPLES_PER_TASK:
            samples.append({**row, "kind": kind, "image": thumbnail(row["task"], row["doc_id"])})
    kinds = []
    tuned_on = tuple(label for task in plan.downstream for label in (label_set(task) or ()))
    for task in plan.downstream + plan.upstream:
        labels = label_set(task)
        if labels:
            drift = tuned_on if task in plan.upstream else ()
            kinds.append({"task": task, "pre": answer_kinds(out / "eval" / "pre", task, labels, drift),
                          "arms": {name: answer_kinds(out / "eval" / name, task, labels, drift) for name in points}})
    manifests = {arm.name: read_manifest(out / "arms" / arm.name) or {} for arm in plan.arms}
    plot = out / "ef.png"
    env = Environment(loader=PackageLoader("forgetbench.study", "templates"), autoescape=select_autoescape())
    html = env.get_template("report.html.j2").render(
        plan=plan, methods=methods, verdicts={name: verdict(m) for name, m in methods.items()},
        pareto=report.get("pareto", list(methods)), samples=samples, kinds=kinds,
        judgements=(*scoring.JUDGEMENTS, DOWNSTREAM_LABEL),
        plot="data:image/png;base64," + base64.b64encode(plot.read_bytes()).decode() if plot.is_file() else None,
        manifests=manifests, steps=state["steps"], versions=library_versions(), bootstrap=report.get("bootstrap"))
    path = out / "report.html"
    write_all_atomic({path: html.encode()})
    return path
