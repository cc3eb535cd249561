"""Which metric scores a task, on which scale, and its value: read from an lmms-eval results.json.

Every problem is a :class:`~forgetbench.compare.errors.CompareError` naming the input (``label``) and the task.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from forgetbench.compare import stats
from forgetbench.compare.errors import CompareError

# Scale of well-known lmms-eval metrics, by metric name (without ",filter"); see stats.scale_factor.
# One table on purpose: extend it here rather than elsewhere. A name is only a good guess: a few lmms-eval
# tasks (mmvu, mmau, sitebench, pushupbench, ...) report "accuracy"/"exact_match" already x100, hence the
# range check in score().
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

# The documented primary metric of lmms-eval's own tasks in the groups forgetbench_upstream and
# forgetbench_downstream (tasks/groups/*.yaml) and of its other captioning tasks, read from lmms-eval 0.7.3's task
# YAMLs (docs/metrics.md, "Primary metric of a task"). Needed because lmms-eval lists a captioning task's BLEU-4 first
# (coco_Bleu_4 ... coco_CIDEr), so "the first higher-is-better metric" would be BLEU-4, of unknown scale.
# forgetbench's own tasks are not here: each declares its metric and scale once, in its task YAML
# (metadata.forgetbench), which lmms-eval records in the run's results.json (configs[task]); see declared().
TASK_METRICS: dict[str, str] = {
    # forgetbench_upstream
    "ok_vqa_val2014": "exact_match",  # VQA accuracy, min(#annotators who gave the answer / 3, 1)
    "gqa": "exact_match",
    "textvqa_val": "exact_match",  # VQA accuracy, as OK-VQA
    "coco2017_cap_val": "coco_CIDEr",
    "mme": "mme_perception_score",  # out of 2000; cognition (out of 800): --metric mme=mme_cognition_score
    # forgetbench_downstream
    "scienceqa_img": "exact_match",
    "flickr30k_test": "flickr_CIDEr",
    # lmms-eval's other captioning tasks
    "flickr30k_test_lite": "flickr_CIDEr",
    "coco2014_cap_val": "coco_CIDEr",
    "coco2017_cap_val_lite": "coco_CIDEr",
    "coco_karpathy_val": "coco_CIDEr",
    "coco_karpathy_test": "coco_CIDEr",
    "nocaps_val": "nocaps_CIDEr",
    "nocaps_val_lite": "nocaps_CIDEr",
    "textcaps_val": "textcaps_CIDEr",
    "textcaps_val_lite": "textcaps_CIDEr",
}


def declared(run: dict, task: str, label: str) -> dict:
    """``configs[task].metadata.forgetbench`` (forgetbench's own tasks), or {}.

    >>> declared({"configs": {"t": {"metadata": [{"version": 0}, {"forgetbench": {"scale": "points"}}]}}}, "t", "X")
    {'scale': 'points'}
    >>> declared({"configs": {}}, "t", "X")
    {}
    """
    config = run["configs"].get(task)
    meta = config.get("metadata") if isinstance(config, dict) else None
    if isinstance(meta, list):  # lmms-eval also accepts a list of mappings
        meta = next((m for m in meta if isinstance(m, dict) and "forgetbench" in m), None)
    decl = meta.get("forgetbench") if isinstance(meta, dict) else None
    decl = {} if decl is None else decl  # an empty `forgetbench:` in YAML is null
    if not isinstance(decl, dict):
        raise CompareError(f"{label}: task '{task}': metadata.forgetbench is not a mapping")
    return decl


def cluster_key(run: dict, task: str, label: str) -> str | None:
    """The field whose equal values make one cluster of ``task``'s documents: ``configs[task].cluster_key`` (the
    top-level key lmms-eval 0.7.3 reads), else ``metadata.forgetbench.cluster_key`` (older forgetbench tasks).

    >>> cluster_key({"configs": {"t": {"cluster_key": "image_id"}}}, "t", "X")
    'image_id'
    >>> cluster_key({"configs": {"t": {"metadata": {"forgetbench": {"cluster_key": "img"}}}}}, "t", "X")
    'img'
    """
    config = run["configs"].get(task)
    key = config.get("cluster_key") if isinstance(config, dict) else None
    key = key if isinstance(key, str) and key else declared(run, task, label).get("cluster_key")
    return key if isinstance(key, str) and key else None


def primary_metric(run: dict, task: str, label: str, override: str | None = None) -> str:
    """The metric that scores ``task``: ``override`` (``--metric``), else the declared forgetbench primary
    metric, else :data:`TASK_METRICS`, else the first of ``higher_is_better[task]``.

    >>> run = {"configs": {}, "higher_is_better": {"t": {"anls": True, "acc": True}}}
    >>> primary_metric(run, "t", "--pre X")
    'anls'
    >>> run["configs"]["t"] = {"metadata": {"forgetbench": {"primary_metric": "score"}}}
    >>> primary_metric(run, "t", "--pre X")
    'score'
    >>> primary_metric({"configs": {}, "higher_is_better": {"coco2017_cap_val": {"coco_Bleu_4": True,
    ...     "coco_CIDEr": True}}}, "coco2017_cap_val", "--pre X")
    'coco_CIDEr'
    """
    hib = run["higher_is_better"].get(task)
    hib = hib if isinstance(hib, dict) else {}
    metric = (override or declared(run, task, label).get("primary_metric") or TASK_METRICS.get(task)
              or next(iter(hib), None))
    if not isinstance(metric, str):
        raise CompareError(f"{label}: task '{task}' declares no metric; pass --metric {task}=NAME")
    # A lower-is-better metric would flip the sign of E and F.
    if hib.get(metric.split(",")[0]) is False:
        raise CompareError(f"{label}: task '{task}': metric '{metric}' is lower-is-better; "
                           f"pick another with --metric {task}=NAME")
    return metric


def known_scale(run: dict, task: str, metric: str, label: str) -> str | None:
    """The scale ``metric`` is known to have without ``--metric-scale``: the scale the task declares (for its
    declared primary metric), else :data:`METRIC_SCALES` by name, else None.

    >>> known_scale({"configs": {}}, "t", "exact_match,flexible-extract", "--pre X")
    'fraction'
    """
    base = metric.split(",")[0]
    decl = declared(run, task, label)
    return (decl.get("scale") if base == decl.get("primary_metric") else None) or METRIC_SCALES.get(base)


def metric_scale(run: dict, task: str, metric: str, label: str, override: str | None = None) -> str:
    """The scale of ``metric`` (see :func:`forgetbench.compare.stats.scale_factor`): ``override``
    (``--metric-scale``), else the declared scale (of the declared primary metric only), else
    :data:`METRIC_SCALES`.

    >>> metric_scale({"configs": {}}, "t", "exact_match,flexible-extract", "--pre X")
    'fraction'
    >>> metric_scale({"configs": {}}, "mme", "mme_cognition_score", "--pre X")
    'max:800'
    >>> run = {"configs": {"t": {"metadata": {"forgetbench": {"primary_metric": "s", "scale": "points"}}}}}
    >>> metric_scale(run, "t", "s", "--pre X")
    'points'
    """
    base = metric.split(",")[0]
    scale = override or known_scale(run, task, metric, label)
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
    """``(metric, scale, value)`` of ``task`` in ``run``, the value still on the metric's own scale.

    >>> score({"configs": {}, "higher_is_better": {}, "results": {"t": {"acc,none": 0.5}}}, "t", "X", "acc", None)
    ('acc', 'fraction', 0.5)
    """
    metric = primary_metric(run, task, label, metric)
    value = metric_value(run, task, metric, label)
    scale = metric_scale(run, task, metric, label, scale)
    upper = stats.scale_factor(scale)[1]
    # Catches e.g. an "accuracy" guessed as fraction that the task already reports x100.
    if upper is not None and not 0.0 <= value <= upper:
        raise CompareError(f"{label}: task '{task}': metric '{metric}' = {value:g} is outside 0-{upper:g} for "
                           f"scale {scale}; if it is already in points, pass --metric-scale {task}=points")
    return metric, scale, value


def paired_scores(runs: Sequence[tuple[dict, str]], task: str, metric: str | None,
                  scale: str | None) -> tuple[str, str, list[float]]:
    """``(metric, scale, [value per run])`` of ``task``, refusing runs that disagree on the metric or its scale.

    ``runs`` is ``[(run, label)]``; ``metric`` and ``scale`` are the user's overrides (or None).
    """
    scored = [score(run, task, label, metric, scale) for run, label in runs]
    for (_, label), (m, s, _) in zip(runs[1:], scored[1:], strict=True):
        if m != scored[0][0]:
            raise CompareError(f"{label}: task '{task}': primary metric differs from {runs[0][1]}")
        if s != scored[0][1]:
            raise CompareError(f"{label}: task '{task}': scale of '{m}' differs from {runs[0][1]}")
    values = [v for _, _, v in scored]
    if scale is not None:
        check_override(task, scored[0][0], scale, known_scale(runs[0][0], task, scored[0][0], runs[0][1]), values)
    return scored[0][0], scored[0][1], values


def check_override(task: str, metric: str, scale: str, known: str | None, values: Sequence[float]) -> None:
    """Refuse ``--metric-scale TASK=SCALE`` where it contradicts the scale ``metric`` is known to have: every value
    fits the known scale's range, and SCALE would turn them into other points. An override for values outside
    that range (a task that reports "accuracy" already x100) is what the option is for.

    >>> check_override("pope", "accuracy", "points", "fraction", [45.3, 47.0])  # already x100: accepted
    >>> check_override("pope", "exact_match", "points", "fraction", [0.5, 0.55])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    forgetbench.compare.errors.CompareError: --metric-scale pope=points contradicts ... drop the option
    """
    try:
        known_factor, upper = stats.scale_factor(known)
    except ValueError:
        return  # no known scale (or a declared one that metric_scale refuses): nothing to contradict
    if upper is None or stats.scale_factor(scale)[0] == known_factor or not all(0.0 <= v <= upper for v in values):
        return
    raise CompareError(f"--metric-scale {task}={scale} contradicts the known scale of '{metric}' ({known}, values "
                       f"0-{upper:g}): its values {', '.join(f'{v:g}' for v in values)} fit it, and {scale} would "
                       f"count {values[0]:g} as {stats.to_points(values[0], scale):g} points instead of "
                       f"{stats.to_points(values[0], known):g}; drop the option")


def is_mean(run: dict, task: str, metric: str) -> bool:
    """Whether the task config says lmms-eval aggregates ``metric`` with a plain mean.

    >>> is_mean({"configs": {"t": {"metric_list": [{"metric": "acc", "aggregation": "mean"}]}}}, "t", "acc")
    True
    """
    config = run["configs"].get(task)
    items = config.get("metric_list") if isinstance(config, dict) else None
    return any(isinstance(i, dict) and i.get("metric") == metric and i.get("aggregation") == "mean"
               for i in (items if isinstance(items, list) else []))
