"""``report.html``: one self-contained page (no outside resources) that answers "which way of tuning keeps the model
itself". The page is compare's HTML report (:func:`forgetbench.compare.html.render_html`, the one
``forgetbench compare --html`` writes): the recommendation and its rule first, a headline per arm worded by what the
study can show, the E-versus-F plot, the probe's F curves, the per-task table, the samples that flipped. The study
adds what only it knows: thumbnails from forgetbench's own task documents, how the classification answer kinds moved
(EMT's hallucination finding) and its provenance (``templates/report.html.j2``, rendered here, autoescaped).
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from pathlib import Path

from forgetbench import suite
from forgetbench.checkpoint import library_versions, read_manifest
from forgetbench.outputs import write_all_atomic
from forgetbench.suite import scoring


def _png(image, size: int = 64) -> str:
    from forgetbench.compare.html import png_data_url

    return png_data_url(image, size)


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


def elsewhere_words(elsewhere: dict | None) -> str:
    """What is known of a checkpoint tuned elsewhere, in words.

    >>> elsewhere_words({"kind": "adapter", "adapter_type": "LORA", "base": "/m"})
    'tuned elsewhere: a PEFT adapter (LORA) over /m'
    >>> elsewhere_words({"kind": "merged", "architectures": ["Qwen2VLForConditionalGeneration"]})
    'tuned elsewhere: a merged model (Qwen2VLForConditionalGeneration)'
    """
    info = elsewhere or {}
    if info.get("kind") == "adapter":
        words = (f"tuned elsewhere: a PEFT adapter ({info.get('adapter_type') or 'type unknown'}) over "
                 f"{info.get('base') or 'an unnamed base'}")
    elif info.get("kind") == "merged":
        words = f"tuned elsewhere: a merged model ({', '.join(info.get('architectures') or ['?'])})"
    else:
        words = "tuned elsewhere"
    if info.get("lineage_mismatch"):
        words += f"; evaluated despite a lineage mismatch (--allow-lineage-mismatch): {info['lineage_mismatch']}"
    return words


def replayed_evaluated(manifest: dict, plan) -> tuple[list[str], list[str]]:
    """The evaluated tasks whose train split an arm replayed (its manifest's ``mitigations.replay``), as
    (upstream, downstream)."""
    replay = ((manifest or {}).get("mitigations") or {}).get("replay") or {}
    replayed = {t.removesuffix("_closed") for t in replay.get("evaluated_tasks_replayed") or replay.get("tasks") or []}
    # a task's _closed variant asks the same documents: replaying either's train split flatters both
    return ([t for t in plan.upstream if t.removesuffix("_closed") in replayed],
            [t for t in plan.downstream if t.removesuffix("_closed") in replayed])


def arm_notes(plan, manifests: dict[str, dict], points: list[str]) -> dict[str, list[str]]:
    """What the page says next to each compared point, in words: a checkpoint tuned elsewhere (what is known of
    it), training data that is not the downstream task's train split, and replay of an evaluated task's train split
    (F on it is flattered). A point ``ARM@wise-A`` inherits its arm's notes."""
    by_arm: dict[str, list[str]] = {}
    for arm in plan.arms:
        notes = []
        if getattr(arm, "tuned_elsewhere", False):
            notes.append(elsewhere_words(arm.elsewhere))
            if arm.checkpoint:
                notes.append(f"checkpoint {arm.checkpoint}; not trained by this study")
        else:
            if arm.train_dataset is not None and arm.train_dataset not in plan.downstream:
                notes.append(f"trained on {arm.train_dataset_note or arm.train_dataset}")
            upstream, downstream = replayed_evaluated(manifests.get(arm.name) or {}, plan)
            if upstream:
                notes.append(f"replays the train split of {', '.join(upstream)}, which also "
                             f"{'measures' if len(upstream) == 1 else 'measure'} F: F is flattered (the arm "
                             "rehearsed data from the very tasks its forgetting is measured on)")
            if downstream:
                notes.append(f"replays the train split of {', '.join(downstream)}, the downstream task itself")
        by_arm[arm.name] = notes
    return {point: by_arm.get(point.split("@", 1)[0], []) for point in points}


def write_report(out: Path, plan, state: dict, comparison, points: list[str]) -> Path:
    """``points``: the compared checkpoints in order (each arm, then its WiSE-FT alphas), named as in compare."""
    from jinja2 import Environment, PackageLoader
    from markupsafe import Markup

    from forgetbench.compare.html import render_html

    report = comparison.report
    if "methods" not in report:  # one arm: compare's single-method layout, named by its point
        report = {**report, "name": points[0]}
    kinds = []
    tuned_on = tuple(label for task in plan.downstream for label in (label_set(task) or ()))
    for task in plan.downstream + plan.upstream:
        labels = label_set(task)
        if labels:
            drift = tuned_on if task in plan.upstream else ()
            kinds.append({"task": task, "pre": answer_kinds(out / "eval" / "pre", task, labels, drift),
                          "arms": {name: answer_kinds(out / "eval" / name, task, labels, drift) for name in points}})
    # A checkpoint tuned elsewhere has no arms/<name> folder (nor a forgetbench manifest): {} stands for it.
    manifests = {arm.name: ({} if getattr(arm, "tuned_elsewhere", False) else read_manifest(out / "arms" / arm.name)
                            or {}) for arm in plan.arms}
    notes = arm_notes(plan, manifests, points)
    # Every value is escaped: answers, questions and names come from models, data and users. (select_autoescape()
    # escapes by file extension, and "report.html.j2" ends in .j2: it escaped nothing.)
    env = Environment(loader=PackageLoader("forgetbench.study", "templates"), autoescape=True)
    provenance = Markup(env.get_template("report.html.j2").render(  # autoescaped above: safe to place as markup
        plan=plan, arms={arm.name: arm for arm in plan.arms}, manifests=manifests, notes=notes, steps=state["steps"],
        versions=library_versions()))
    html = render_html(report, comparison.forgotten, list(getattr(comparison, "learned", []) or []),
                       title=f"forgetbench study: {plan.model}",
                       scope=f"Downstream (E): {', '.join(plan.downstream)}. Upstream (F): {', '.join(plan.upstream)}.",
                       thumbnail=thumbnail, kinds=kinds, judgements=(*scoring.JUDGEMENTS, DOWNSTREAM_LABEL),
                       provenance=provenance, notes=notes)
    path = out / "report.html"
    write_all_atomic({path: html.encode()})
    return path
