"""``forgetbench power``: the smallest change a study can detect, per task and for E and F, from its own paired data.

lmms-eval 0.7.3's ``power`` command assumes a standard deviation of 0.5 and a correlation of 0.5 between the two
runs and ignores clustering. Here the variance of the paired difference comes from the study's own pre/post pair
(the flips of its documents), the design effect from the task's ``cluster_key`` (several questions per image), and
both feed the normal-approximation power formulas of the paired test that compare's intervals make:

* ``mde = (z_{1-alpha/s} + z_power) * sqrt(design_effect * variance / n)`` points, s = 2 (a verdict) or 1 (a budget);
* ``n_needed = ceil((z_{1-alpha/2} + z_power)^2 * design_effect * variance / delta^2)`` documents.

The pure functions (:func:`z_sum`, :func:`paired_variance`, :func:`design_effect`, :func:`mde`, :func:`n_needed`,
:func:`achieved_power`, :func:`combine`, :func:`phrase`) take numbers and return numbers, with examples worked by
hand. :func:`power_report` reads the runs; :func:`configure_parser` / :func:`run` / :func:`main` are the command.
See docs/power.md.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from forgetbench.compare.errors import CompareError

PROG = "forgetbench power"
SCHEMA = "forgetbench.power/1"
DEFAULT_FLIP_RATE = 0.10  # assumed share of discordant documents without a post run, split evenly
FULL_RANGE = 100.0  # points a document moves when it flips (0/1 metrics on fraction or points scales)


# --------------------------------------------------------------------------
# Pure functions
# --------------------------------------------------------------------------

def z_sum(alpha: float = 0.05, power: float = 0.8, sided: int = 2) -> float:
    """``z_{1-alpha/sided} + z_power``: how many standard errors a true effect must span to be detected.

    >>> round(z_sum(0.05, 0.8), 4), round(z_sum(0.05, 0.8, sided=1), 4)  # 1.9600 + 0.8416, 1.6449 + 0.8416
    (2.8016, 2.4865)
    """
    from scipy.stats import norm

    if sided not in (1, 2):
        raise ValueError("sided must be 1 or 2")
    return float(norm.ppf(1.0 - alpha / sided) + norm.ppf(power))


def paired_variance(flips10: float, flips01: float, n: int | None = None) -> float:
    """Variance of the paired difference d = post - pre of a 0/1 metric (d is -1, 0 or +1), per document:
    ``p10 + p01 - (p10 - p01)^2`` with p10 the right->wrong and p01 the wrong->right rate (or counts out of ``n``).

    >>> paired_variance(0.05, 0.05)  # the assumed default: 10 % of documents flip, half each way
    0.1
    >>> round(paired_variance(2, 0, n=20), 6)  # 2 of 20 went right -> wrong: E[d^2] = 0.1, E[d] = -0.1
    0.09
    """
    p10, p01 = (flips10 / n, flips01 / n) if n is not None else (flips10, flips01)
    return float(p10 + p01 - (p10 - p01) ** 2)


def design_effect(values: Sequence[float], clusters: Sequence | None) -> float:
    """Variance of the mean with whole clusters as the units over its variance with independent documents:
    ``sum_c (S_c - m_c * mean)^2 / sum_i (d_i - mean)^2`` (S_c the sum, m_c the size of cluster c).

    The numerator is the cluster-robust (linearized ratio-estimator) variance that compare's cluster bootstrap
    estimates, the denominator the plain one, both times n^2; so the ratio is 1 when every cluster holds one
    document, handles unequal cluster sizes, and equals ``1 + (m - 1) * ICC`` for clusters of equal size m (with
    ICC = (m * eta^2 - 1) / (m - 1), eta^2 the share of the sum of squares between clusters). It is 1 when nothing
    varies, and may fall below 1 (questions of one image that move in opposite directions).

    >>> d = [0] * 6 + [-1] * 4 + [0] * 10  # 20 paired documents; documents 6 to 9 went right -> wrong
    >>> images = [i // 4 for i in range(20)]  # 4 questions per image: images 1 and 2 lost two each
    >>> round(design_effect(d, images), 6)  # (2 * 1.2^2 + 3 * 0.8^2) / (4 * 0.8^2 + 16 * 0.2^2) = 4.8 / 3.2
    1.5
    >>> design_effect(d, None), design_effect([1, 1, 1], ["a", "a", "b"])
    (1.0, 1.0)
    """
    d = np.asarray(values, dtype=float)
    total = float(((d - d.mean()) ** 2).sum()) if d.size else 0.0
    if clusters is None or total <= 1e-12 * max(1.0, float((d ** 2).sum())):
        return 1.0
    _, inverse = np.unique(np.asarray([str(c) for c in clusters]), return_inverse=True)
    sums, sizes = np.bincount(inverse.ravel(), weights=d), np.bincount(inverse.ravel())
    return float(((sums - sizes * d.mean()) ** 2).sum() / total)


def design_effect_from_icc(cluster_size: float, icc: float) -> float:
    """Kish's design effect ``1 + (m - 1) * ICC`` for clusters of size m: the same number as :func:`design_effect`
    for equal clusters (its example: m = 4, eta^2 = 1.2 / 3.2 = 0.375, ICC = (4 * 0.375 - 1) / 3 = 1/6).

    >>> design_effect_from_icc(4, 1 / 6)
    1.5
    """
    return 1.0 + (cluster_size - 1.0) * icc


def mde(variance: float, n: int, alpha: float = 0.05, power: float = 0.8, sided: int = 2,
        design_effect: float = 1.0) -> float:
    """Minimum detectable effect (in the unit of ``variance``'s square root, here points) of a paired test on ``n``
    documents: ``z_sum(alpha, power, sided) * sqrt(design_effect * variance / n)``.

    >>> round(mde(1000.0, 1000), 2)  # 10 % flips (0.1 x 100^2 points^2), 1000 documents: 2.8016 x 1 point
    2.8
    >>> round(mde(900.0, 20), 2), round(mde(900.0, 20, sided=1), 2)  # 2.8016 and 2.4865 x sqrt(45)
    (18.79, 16.68)
    """
    if n <= 0:
        raise ValueError("n must be positive")
    return z_sum(alpha, power, sided) * math.sqrt(design_effect * variance / n)


def n_needed(variance: float, delta: float, alpha: float = 0.05, power: float = 0.8, sided: int = 2,
             design_effect: float = 1.0) -> int:
    """Documents a paired test needs to detect ``delta`` (same unit as ``mde``), rounded up:
    ``ceil(z_sum^2 * design_effect * variance / delta^2)``; clusters keep their present mean size.

    >>> n_needed(900.0, 2.0)  # 2.8016^2 x 900 / 4 = 1765.998
    1766
    >>> n_needed(1600.0, 2.0, design_effect=1.5)  # 7.8489 x 1.5 x 1600 / 4 = 4709.3
    4710
    """
    if delta <= 0:
        raise ValueError("delta must be positive")
    exact = z_sum(alpha, power, sided) ** 2 * design_effect * variance / delta ** 2
    return max(1, math.ceil(exact - 1e-9 * max(1.0, exact)))


def achieved_power(delta: float, variance: float, n: int, alpha: float = 0.05, sided: int = 2,
                   design_effect: float = 1.0) -> float:
    """Power of the paired z-test to detect a true ``delta`` with ``n`` documents (both tails when two-sided).

    >>> round(achieved_power(2.0, 900.0, 1766), 3)
    0.8
    >>> round(achieved_power(2.0, 900.0, 883), 3)  # half the documents: Phi(2.8016 / sqrt(2) - 1.96)
    0.508
    """
    from scipy.stats import norm

    shift = abs(delta) / math.sqrt(design_effect * variance / n)
    crit = norm.ppf(1.0 - alpha / sided)
    return float(norm.cdf(shift - crit) + (norm.cdf(-shift - crit) if sided == 2 else 0.0))


def combine(parts: Sequence[tuple[float, int, float]]) -> tuple[float, int, float]:
    """``(variance, n, design_effect)`` of the mean over k tasks (E or F), each ``(variance, n, design_effect)``,
    the tasks independent: Var(F) = sum_t design_effect_t * variance_t / n_t / k^2. It is returned in the form of a
    single task with N = sum n_t documents, so that :func:`mde` and :func:`n_needed` apply unchanged (N more
    documents meaning every task grows by the same factor): variance = N * sum_t (variance_t / n_t) / k^2 (the mean
    of the variances when the n_t are equal) and design_effect = Var(F) / (that variance / N).

    >>> v, n, deff = combine([(900.0, 20, 1.0), (1600.0, 20, 1.5)])  # (45 + 120) / 4 = 41.25 = 1.32 x 1250 / 40
    >>> v, n, round(deff, 6)
    (1250.0, 40, 1.32)
    """
    k = len(parts)
    total = sum(n for _, n, _ in parts)
    plain = sum(v / n for v, n, _ in parts) / k ** 2
    clustered = sum(deff * v / n for v, n, deff in parts) / k ** 2
    return plain * total, total, (clustered / plain if plain > 0 else 1.0)


def phrase(delta: float, mde_points: float | None, significant: bool | None,
           verbs: tuple[str, str] = ("forgot", "gained")) -> str:
    """A change worded with what the study can detect (``mde_points``: its two-sided MDE), as compare's report words
    E, F or a task; ``verbs``: for a fall and a rise (E's fall is ``lost``).

    >>> phrase(-1.2, 3.4, significant=False)
    'forgot 1.2 points (not significant; this study detects 3.4 or more)'
    >>> phrase(5.0, 2.8, significant=True)
    'gained 5.0 points (significant; this study detects 2.8 or more)'
    >>> phrase(-12.0, None, significant=True), phrase(-3.0, None, None, ("lost", "gained"))
    ('forgot 12.0 points (significant)', 'lost 3.0 points')
    """
    verb = verbs[0] if delta < 0 else verbs[1]
    parts = [] if significant is None else ["significant" if significant else "not significant"]
    parts += [] if mde_points is None else [f"this study detects {mde_points:.1f} or more"]
    return f"{verb} {abs(delta):.1f} points" + (f" ({'; '.join(parts)})" if parts else "")


# --------------------------------------------------------------------------
# Reading the runs
# --------------------------------------------------------------------------

def check_settings(delta: float, alpha: float, power: float, budget: float, flip_rate: float) -> None:
    """Refuse settings outside their range: one line each.

    >>> check_settings(2.0, 1.5, 0.8, 2.0, 0.1)
    Traceback (most recent call last):
    ...
    forgetbench.compare.errors.CompareError: --alpha must be between 0 and 1 (exclusive), got 1.5
    """
    for option, value in (("--alpha", alpha), ("--power", power)):
        if not (isinstance(value, (int, float)) and 0.0 < value < 1.0):
            raise CompareError(f"{option} must be between 0 and 1 (exclusive), got {value!r}")
    for option, value in (("--delta", delta), ("--budget", budget)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise CompareError(f"{option} must be a positive number of points, got {value!r}")
    if not (isinstance(flip_rate, (int, float)) and 0.0 < flip_rate <= 1.0):
        raise CompareError(f"--flip-rate must be in (0, 1], got {flip_rate!r}")


def _leaves(run: dict) -> list[str]:
    groups = run.get("group_subtasks") if isinstance(run.get("group_subtasks"), dict) else {}
    return [t for t in run["results"] if not groups.get(t)]


def task_roles(run: dict, tasks: Sequence[str] | None, downstream: Sequence[str] | None,
               upstream: Sequence[str] | None) -> dict[str, str]:
    """``{task: role}`` in order. Tasks: ``tasks``, else ``downstream`` + ``upstream``, else every task (not group)
    of ``run``. Downstream: ``downstream``, else the members of a ``forgetbench_downstream`` group the run
    evaluated. Upstream: ``upstream``, else every other task (a task that is not tuned on is a general one).
    With ``upstream`` given, a task in neither list is ``"other"`` (in no E or F).

    >>> run = {"results": {"a": {}, "b": {}, "c": {}}, "group_subtasks": {"forgetbench_downstream": ["a"]}}
    >>> task_roles(run, None, None, None)
    {'a': 'downstream', 'b': 'upstream', 'c': 'upstream'}
    >>> task_roles(run, ["b", "c"], None, ["b"])
    {'b': 'upstream', 'c': 'other'}
    """
    from forgetbench.compare.options import check_roles, check_tasks

    groups = run.get("group_subtasks") if isinstance(run.get("group_subtasks"), dict) else {}
    for option, names in (("--tasks", tasks), ("--downstream", downstream), ("--upstream", upstream)):
        if names is not None:
            check_tasks(list(names), option)
    if downstream is not None and upstream is not None:
        check_roles(list(downstream), list(upstream))
    if tasks is None:
        tasks = [*(downstream or []), *(upstream or [])] if (downstream or upstream) else _leaves(run)
        if downstream is not None and upstream is None:
            tasks += [t for t in _leaves(run) if t not in tasks]
    tasks = list(tasks)
    for option, names in (("--downstream", downstream), ("--upstream", upstream)):
        outside = [t for t in names or () if t not in tasks]
        if outside:
            raise CompareError(f"{option}: not among --tasks: {', '.join(outside)}")
    if downstream is None:
        group = groups.get("forgetbench_downstream")
        downstream = [t for t in tasks if isinstance(group, list) and t in group]
    roles = {}
    for t in tasks:
        if t in downstream:
            roles[t] = "downstream"
        elif upstream is None or t in upstream:
            roles[t] = "upstream"
        else:
            roles[t] = "other"
    return roles


def _pop_variance(x: np.ndarray) -> float:
    return float(((x - x.mean()) ** 2).mean()) if x.size else 0.0


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-6 * max(1.0, abs(b))


def measure_task(pre: dict, pre_label: str, post: dict | None, post_label: str | None, task: str,
                 metric: str | None, scale: str | None, flip_rate: float, mismatches: list) -> dict:
    """One task's n, clusters, design effect and per-document variance of the paired difference (points^2), from
    the pair's sample logs (``post`` given) or assumed (``flip_rate``); pairing differences go to ``mismatches``.
    """
    from forgetbench.compare import pairing, runs, scores, stats

    sides = [(pre, pre_label)] + ([(post, post_label)] if post is not None else [])
    metric, scale, values = scores.paired_scores(sides, task, metric, scale)
    factor = stats.scale_factor(scale)[0]
    base = metric.split(",")[0]
    key = scores.cluster_key(pre, task, pre_label)
    row = {"metric": metric, "scale": scale, "n": None, "clusters": None, "cluster_key": key,
           "design_effect": 1.0, "design_effect_source": "no cluster_key" if key is None else None,
           "variance": None, "variance_source": None, "variance_note": None,
           "delta": (values[1] - values[0]) * factor if post is not None else None, "flips": None}
    logs = [runs.load_samples(run, task, base, key, label) for run, label in sides]
    pre_s = logs[0]
    if post is not None:
        post_s = logs[1]
        if (pre_s is None) != (post_s is None):
            mismatches.append(pairing.sample_log_mismatch(task, pre_s is not None, post_label))
        if pre_s is not None and post_s is not None:
            common, found = pairing.sample_mismatches(pre_s, post_s, task, post_label)
            mismatches += found
            if _measured(row, pre, task, base, factor, values, pre_s, post_s, common, post_label):
                return row
            if row["variance_note"]:  # the logs were read but give no variance (a corpus metric they cannot make)
                return row
    _assumed(row, pre, task, base, pre_s, flip_rate, post is not None)
    return row


def _measured(row: dict, pre: dict, task: str, base: str, factor: float, values: Sequence[float], pre_s: dict,
              post_s: dict, common: list[int], post_label: str) -> bool:
    """Fill ``row`` from the paired documents ``common``; False when they give no variance."""
    from forgetbench.compare import corpus, scores

    if not common:
        row["variance_note"] = "no document paired"
        return False
    n = len(common)
    row["n"] = n
    dropped = len(pre_s) + len(post_s) - 2 * n
    numeric = pre_s[common[0]].value is not None and post_s[common[0]].value is not None
    if numeric:
        a = np.array([pre_s[d].value for d in common])
        b = np.array([post_s[d].value for d in common])
        if not dropped and not all(_close(float(v.mean()), x) for v, x in zip((a, b), values, strict=True)):
            if scores.is_mean(pre, task, base):
                raise CompareError(f"{post_label}: task '{task}': per-sample '{base}' averages to {a.mean():.6g} "
                                   f"(pre) / {b.mean():.6g} (post) but results say {values[0]:.6g} / {values[1]:.6g}")
            numeric = False
        elif dropped:
            row["delta"] = float(b.mean() - a.mean()) * factor
    if numeric:
        clusters = [pre_s[doc].cluster for doc in common] if row["cluster_key"] else None
        row.update(measure_documents(a, b, factor, row["scale"], clusters))
        return row["variance"] is not None
    units = corpus.units_of(base, [pre_s[d].raw for d in common], [post_s[d].raw for d in common]) \
        if not dropped else None
    if units is None or not all(_close(u, v) for u, v in zip((units.pre_value, units.post_value), values,
                                                               strict=True)):
        row["variance_note"] = "the sample logs give no per-unit scores that reproduce results.json"
        return False
    documents = sum(1 for d in common if pre_s[d].raw is not None)
    row.update(measure_units(units, factor, documents))
    return row["variance"] is not None


def measure_documents(pre: np.ndarray, post: np.ndarray, factor: float, scale: str,
                      clusters: Sequence | None = None) -> dict:
    """What the paired per-document scores ``pre``, ``post`` (the metric's own values; ``factor`` converts to
    points) say about the variance of their difference: ``n``, ``clusters``, ``flips`` (0/1 metrics), ``variance``
    (points^2 per document; :func:`paired_variance` of the flips for a 0/1 metric, else the variance of the deltas),
    ``variance_source`` (``measured``, ``rule of three`` when nothing changed, or None), ``variance_note`` and the
    ``design_effect`` of ``clusters`` (with its source). ``forgetbench power`` and compare both plan from this.

    >>> row = measure_documents(np.array([1.0] * 18 + [0.0] * 2), np.array([1.0] * 16 + [0.0] * 4), 100, "fraction")
    >>> row["flips"]["forgotten"], round(row["variance"], 6), row["variance_source"]  # 0.1 - 0.01 = 0.09
    (2, 900.0, 'measured')
    >>> measure_documents(np.ones(30), np.ones(30), 100, "fraction")["variance"]  # rule of three: 3/30 x 100^2
    1000.0
    """
    from forgetbench.compare import stats

    pre, post = np.asarray(pre, dtype=float), np.asarray(post, dtype=float)
    n = len(pre)
    d = post - pre
    row: dict = {"n": n, "clusters": len(set(clusters)) if clusters is not None else n, "flips": None,
                 "variance": None, "variance_source": None, "variance_note": None, "design_effect": 1.0,
                 "design_effect_source": "no cluster_key" if clusters is None else None}
    if not n:
        row["variance_note"] = "no document paired"
        return row
    if np.isin(pre, (0.0, 1.0)).all() and np.isin(post, (0.0, 1.0)).all():
        flips = stats.flip_counts(pre, post)
        row["flips"] = flips
        unit_variance = paired_variance(flips["forgotten"], flips["learned"], n)
        row["variance_note"] = (f"{flips['forgotten']} right->wrong and {flips['learned']} wrong->right of "
                                f"{n} paired documents")
    else:
        unit_variance = _pop_variance(d)
        row["variance_note"] = f"per-document deltas of {n} paired documents"
    if unit_variance <= 0.0:
        _rule_of_three(row, n, scale)
        return row
    row["variance"], row["variance_source"] = unit_variance * factor ** 2, "measured"
    if clusters is not None:
        row["design_effect"] = design_effect(d, clusters)
        row["design_effect_source"] = "measured"
    return row


def measure_units(units, factor: float, documents: int | None = None) -> dict:
    """:func:`measure_documents` for a corpus-level metric from its per-unit scores (:class:`.corpus.Units`):
    CIDEr's per-image scores (the variance of their deltas), MME's image pairs (stratified by category:
    ``sum_k Var_k / n_k`` reported as ``variance = n * that`` on the metric's ``documents``, design effect 1)."""
    u = (np.asarray(units.post, dtype=float) - np.asarray(units.pre, dtype=float)) * factor
    n = documents if documents else len(u) if units.strata is None else 2 * len(u)
    row: dict = {"n": n, "clusters": len(u), "flips": None, "variance": None, "variance_source": None}
    if units.strata is None:  # CIDEr: one caption document per image, the metric is the mean over images
        variance, note = _pop_variance(u), f"per-image deltas of {len(u)} images"
    else:  # MME: the sum over categories of per-category means of image pairs; n counts this metric's documents
        labels = np.asarray(units.strata)
        cats = list(dict.fromkeys(units.strata))
        se2 = sum(_pop_variance(u[labels == c]) / int((labels == c).sum()) for c in cats)
        variance = se2 * n
        note = (f"{len(u)} image pairs in {len(cats)} categories, stratified; the pairs' clustering is inside "
                f"the variance")
    row["variance_note"] = note
    row["design_effect"] = 1.0
    row["design_effect_source"] = "none (one caption document per image)" if units.strata is None else \
        "inside the variance (image pairs)"
    if variance <= 0.0:
        row["variance_note"] += "; nothing changed: no variance to plan with"
        return row
    row["variance"], row["variance_source"] = variance, "measured"
    return row


def _rule_of_three(row: dict, n: int, scale: str) -> None:
    """No document changed: plan with the 95 % upper bound 3/n of the discordant rate (the rule of three), split
    evenly, for a metric whose documents move by the full range."""
    if scale not in ("fraction", "points"):
        row["variance_note"] += "; nothing changed: no variance to plan with"
        return
    row["variance"] = min(1.0, 3.0 / n) * FULL_RANGE ** 2
    row["variance_source"] = "rule of three"
    row["variance_note"] += f"; no change in {n} documents: planned with the upper bound 3/n of the flip rate"
    row["design_effect_source"] = row["design_effect_source"] or "not measurable (no change)"


def _assumed(row: dict, pre: dict, task: str, base: str, pre_s: dict | None, flip_rate: float,
             had_post: bool) -> None:
    """Fill ``row`` from the pre run alone: n and clusters from its sample log (else n-samples), the design effect of
    its scores as a stand-in for the deltas', and the variance of ``flip_rate`` discordant documents."""
    why = " (POST has no usable sample log)" if had_post else ""
    if pre_s:
        row["n"] = len(pre_s)
        values = [s.value for s in pre_s.values()]
        if row["cluster_key"]:
            clusters = [s.cluster for s in pre_s.values()]
            row["clusters"] = len(set(clusters))
            if all(v is not None for v in values):
                row["design_effect"] = design_effect(values, clusters)
                row["design_effect_source"] = "pre scores (stand-in for the deltas')"
            else:
                row["design_effect_source"] = "not measurable (no per-document scores)"
        else:
            row["clusters"] = row["n"]
    else:
        counts = pre["n-samples"].get(task)
        effective = counts.get("effective") if isinstance(counts, dict) else None
        row["n"] = effective if isinstance(effective, int) and not isinstance(effective, bool) else None
        if row["cluster_key"]:
            row["design_effect_source"] = "unknown (no sample log): taken as 1"
        else:
            row["clusters"] = row["n"]
    if row["scale"] in ("fraction", "points"):
        row["variance"] = flip_rate * FULL_RANGE ** 2
        row["variance_source"] = "assumed"
        row["variance_note"] = (f"assumed: {flip_rate:.0%} of documents flip, split evenly "
                                f"(--flip-rate {flip_rate:g}){why}")
    else:
        row["variance_note"] = f"no assumed variance for a {row['scale']} metric: pass --post{why}"


# --------------------------------------------------------------------------
# Planning
# --------------------------------------------------------------------------

def _plan(row: dict, role: str, settings: Mapping) -> dict:
    """Add se, mde, mde_one_sided, n_needed, clusters_needed, n_needed_budget and underpowered to ``row``."""
    out = dict(row)
    out.update(se=None, mde=None, mde_one_sided=None, n_needed=None, clusters_needed=None, n_needed_budget=None,
               underpowered=None)
    variance, n, deff = row.get("variance"), row.get("n"), row.get("design_effect")
    if variance is None or not n:
        return out
    alpha, power, delta, budget = (settings[k] for k in ("alpha", "power", "delta", "budget"))
    out["se"] = math.sqrt(deff * variance / n)
    out["mde"] = mde(variance, n, alpha, power, 2, deff)
    out["mde_one_sided"] = mde(variance, n, alpha, power, 1, deff)
    out["n_needed"] = n_needed(variance, delta, alpha, power, 2, deff)
    if row.get("clusters"):
        out["clusters_needed"] = math.ceil(out["n_needed"] * row["clusters"] / n - 1e-9)
    out["n_needed_budget"] = n_needed(variance, budget, alpha, power, 1, deff)
    if role in ("upstream", "F"):
        out["underpowered"] = out["mde_one_sided"] > budget
    return out


def _mean_row(rows: Mapping[str, dict], names: list[str], key: str, settings: Mapping) -> dict | None:
    """E or F: the mean over ``names`` of their deltas, planned with :func:`combine`."""
    if not names:
        return None
    parts = [rows[t] for t in names]
    known = all(p["variance"] is not None and p["n"] for p in parts)
    sources = sorted({p["variance_source"] or "unknown" for p in parts})
    deltas = [p["delta"] for p in parts]
    row = {"role": key, "tasks": names, "n": sum(p["n"] or 0 for p in parts) or None,
           "clusters": sum(p["clusters"] for p in parts) if all(p["clusters"] for p in parts) else None,
           "design_effect": None, "variance": None, "variance_source": "+".join(sources),
           "delta": sum(deltas) / len(deltas) if all(d is not None for d in deltas) else None}
    if known:
        variance, n, deff = combine([(p["variance"], p["n"], p["design_effect"]) for p in parts])
        row.update(n=n, design_effect=deff, variance=variance)
    else:
        missing = [t for t, p in zip(names, parts, strict=True) if p["variance"] is None or not p["n"]]
        row["variance_note"] = f"unknown: no variance for {', '.join(missing)}"
    out = _plan(row, key, settings)
    if known and out["n_needed"] is not None:
        factor = out["n_needed"] / row["n"]
        out["n_needed_per_task"] = {t: math.ceil(factor * rows[t]["n"] - 1e-9) for t in names}
    else:
        out["n_needed_per_task"] = None
    return out


def plan_block(measured: Mapping[str, dict], roles: Mapping[str, str], settings: Mapping) -> dict:
    """``{"tasks", "E", "F"}`` from the measured rows of every task and their roles."""
    tasks = {t: _plan({"role": roles[t], **row}, roles[t], settings) for t, row in measured.items()}
    return {"tasks": tasks,
            "E": _mean_row(measured, [t for t in measured if roles[t] == "downstream"], "E", settings),
            "F": _mean_row(measured, [t for t in measured if roles[t] == "upstream"], "F", settings)}


def _named(posts: Sequence) -> list[tuple[str, str]]:
    named = []
    for item in posts:
        if isinstance(item, (tuple, list)):
            named.append((str(item[0]), str(item[1])))
        else:
            named.append(("post" if len(posts) == 1 else Path(str(item)).name or str(item), str(item)))
    names = [n for n, _ in named]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise CompareError(f"--post: name used twice: {', '.join(dupes)} (use --post NAME=DIR)")
    return named


def power_report(pre: str | Path, posts: Sequence = (), tasks: Sequence[str] | None = None, delta: float = 2.0,
                 alpha: float = 0.05, power: float = 0.8, budget: float = 2.0, *,
                 downstream: Sequence[str] | None = None, upstream: Sequence[str] | None = None,
                 flip_rate: float = DEFAULT_FLIP_RATE, metrics: Mapping[str, str] | None = None,
                 scales: Mapping[str, str] | None = None, allow_mismatch: bool = False) -> dict:
    """Power of the study whose base-model run is ``pre``, per task and for E and F (docs/power.md).

    ``posts`` are ``(name, path)`` pairs or paths of post runs: each gives its own measured block under
    ``posts``, and the first's is also at the top level (``tasks``, ``E``, ``F``); with none, the top level is
    planned from ``pre`` with an assumed ``flip_rate``. Runs must pair as for compare (else a one-line
    :class:`CompareError`, or with ``allow_mismatch`` the common documents only). ``delta``, ``budget``: points.
    """
    check_settings(delta, alpha, power, budget, flip_rate)
    if pre is None or str(pre) == "":
        raise CompareError("--pre DIR is required (the base model's lmms-eval output)")
    from forgetbench.compare import pairing, runs

    pre_label = f"--pre {pre}"
    pre_run = runs.load_run(Path(pre), pre_label)
    roles = task_roles(pre_run, tasks, downstream, upstream)
    names = list(roles)
    missing = [t for t in names if t not in pre_run["results"]]
    if missing:
        raise CompareError(f"{pre_label}: task(s) not found: {', '.join(missing)}")
    metrics, scales = dict(metrics or {}), dict(scales or {})
    for option, choices in (("--metric", metrics), ("--metric-scale", scales)):
        for task in choices:
            if task not in roles:
                raise CompareError(f"{option}: '{task}' is not among the planned tasks")
    settings = {"delta": float(delta), "alpha": float(alpha), "power": float(power), "budget": float(budget),
                "flip_rate": float(flip_rate), "z_two_sided": z_sum(alpha, power, 2),
                "z_one_sided": z_sum(alpha, power, 1)}
    report: dict = {"schema": SCHEMA, "pre": str(pre), "post": None, "settings": settings,
                    "roles": {t: r for t, r in roles.items()}}
    blocks = {}
    for name, path in _named(posts):
        label = f"--post {path}"
        post_run = runs.load_run(Path(path), label)
        mismatches = list(pairing.run_mismatches(pre_run, post_run, names, pre_label, label))
        measured = {t: measure_task(pre_run, pre_label, post_run, label, t, metrics.get(t), scales.get(t),
                                    flip_rate, mismatches) for t in names}
        if mismatches and not allow_mismatch:
            raise CompareError(mismatches[0].refusal())
        blocks[name] = {"post": str(path), **plan_block(measured, roles, settings),
                        "mismatches": [m.message for m in mismatches]}
    if blocks:
        first = next(iter(blocks))
        report.update(post=first, tasks=blocks[first]["tasks"], E=blocks[first]["E"], F=blocks[first]["F"],
                      posts=blocks)
    else:
        measured = {t: measure_task(pre_run, pre_label, None, None, t, metrics.get(t), scales.get(t), flip_rate, [])
                    for t in names}
        report.update(plan_block(measured, roles, settings))
    return report


# --------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------

def _num(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return f"{value:.{digits}f}"


def _source(row: dict, post_name: str | None) -> str:
    source = row.get("variance_source")
    if source == "measured":
        return f"measured from {post_name}" if post_name else "measured"
    if source == "assumed":
        return "assumed"
    return source or "unknown"


def _underpowered(row: dict) -> str:
    if row.get("underpowered") is None:
        return "-"
    return f"yes ({row['n_needed_budget']} docs)" if row["underpowered"] else "no"


def format_block(block: Mapping, post_name: str | None) -> str:
    """One table: a row per task, then E and F."""
    from forgetbench.outputs import text_grid

    observed = post_name is not None
    header = ("task", "role", *(("delta",) if observed else ()), "n", "clusters", "deff", "variance", "source",
              "mde 2-sided", "mde 1-sided", "n_needed", "underpowered")
    grid = [header]
    rows = [(t, r) for t, r in block["tasks"].items()] + [(k, block[k]) for k in ("E", "F") if block.get(k)]
    for name, r in rows:
        role = r["role"] if name not in ("E", "F") else "mean of " + str(len(r["tasks"]))
        source = _source(r, post_name)
        if name in ("E", "F") and "+" in (r.get("variance_source") or ""):
            source = r["variance_source"]
        delta = (f"{r['delta']:+.2f}" if r.get("delta") is not None else "-",) if observed else ()
        grid.append((name, role, *delta, _num(r["n"]), _num(r["clusters"]), _num(r["design_effect"]),
                     _num(r["variance"], 1), source, _num(r["mde"]), _num(r["mde_one_sided"]), _num(r["n_needed"]),
                     _underpowered(r)))
    return "\n".join(text_grid(grid, 2))


def format_report(report: Mapping) -> str:
    """What ``forgetbench power`` prints: a table per post run (or the assumed one), then the notes."""
    s = report["settings"]
    lines = []
    blocks = report.get("posts") or {None: report}
    for name, block in blocks.items():
        if name is not None:
            lines.append(f"post '{name}' ({block['post']}): variance measured from its paired documents against "
                         f"--pre")
        else:
            lines.append(f"no --post: variance assumed ({s['flip_rate']:.0%} of documents flip, split evenly; "
                         f"--flip-rate), design effect from the pre scores")
        lines.append(format_block(block, name))
        notes = []
        for task, row in block["tasks"].items():
            if row.get("variance_source") in ("rule of three", None) and row.get("variance_note"):
                notes.append(f"  {task}: {row['variance_note']}")
            if row.get("underpowered"):
                notes.append(f"  {task}: underpowered: detects {row['mde_one_sided']:.2f} points one-sided, over the "
                             f"budget {s['budget']:g}; about {row['n_needed_budget']} documents would suffice")
        f = block.get("F")
        if f and f.get("underpowered"):
            per = ", ".join(f"{t} {k}" for t, k in budget_split(f, block).items())
            notes.append(f"  F: underpowered: detects {f['mde_one_sided']:.2f} points one-sided, over the budget "
                         f"{s['budget']:g}; about {f['n_needed_budget']} documents would suffice ({per})")
        lines += notes
        lines += [f"  {m}" for m in block.get("mismatches", [])]
        lines.append("")
    lines.append(f"delta {s['delta']:g} points (n_needed), alpha {s['alpha']:g}, power {s['power']:g}, budget "
                 f"{s['budget']:g} points; mde = z * sqrt(deff * variance / n) with z = {s['z_two_sided']:.4f} "
                 f"(two-sided) or {s['z_one_sided']:.4f} (one-sided, the budget); variance in points^2 per document")
    return "\n".join(lines)


def budget_split(row: Mapping, block: Mapping) -> dict[str, int]:
    """F's ``n_needed_budget`` split over its tasks: every task grows by the same factor."""
    factor = row["n_needed_budget"] / row["n"]
    return {t: math.ceil(factor * block["tasks"][t]["n"] - 1e-9) for t in row["tasks"]}


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------

def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the ``power`` arguments to ``parser``."""
    from forgetbench.compare.options import add_score_options

    parser.description = parser.description or (
        "Minimum detectable effect and documents needed, per task and for E and F, from the study's own runs.")
    parser.add_argument("--pre", metavar="DIR", help="lmms-eval --output_path of the base model (required)")
    parser.add_argument("--post", action="append", default=[], metavar="[NAME=]DIR",
                        help="a fine-tuned model's output: the variance is measured from its flips (repeatable)")
    parser.add_argument("--tasks", metavar="TASK[,TASK...]", help="tasks to plan (default: every task of --pre)")
    parser.add_argument("--downstream", metavar="TASK[,TASK...]",
                        help="tasks the fine-tune targets, for E (default: the forgetbench_downstream group's)")
    parser.add_argument("--upstream", metavar="TASK[,TASK...]",
                        help="general tasks, for F (default: every task that is not downstream)")
    parser.add_argument("--delta", type=float, default=2.0,
                        help="effect in points that n_needed detects, two-sided (default: %(default)s)")
    parser.add_argument("--alpha", type=float, default=0.05, help="significance level (default: %(default)s)")
    parser.add_argument("--power", type=float, default=0.8, help="power to detect it (default: %(default)s)")
    parser.add_argument("--budget", type=float, default=2.0, metavar="P",
                        help="forgetting budget in points: an upstream task or F whose one-sided MDE exceeds it is "
                             "underpowered (default: %(default)s)")
    parser.add_argument("--flip-rate", type=float, default=DEFAULT_FLIP_RATE, metavar="Q",
                        help="without --post: assumed share of documents that flip, split evenly "
                             "(default: %(default)s)")
    add_score_options(parser)
    parser.add_argument("--allow-mismatch", action="store_true",
                        help="measure on the documents both runs share instead of refusing differing runs")
    parser.add_argument("--json", dest="json_path", metavar="FILE", help="also write the result as JSON to FILE")


def report_of(args: argparse.Namespace) -> dict:
    """Parse the arguments into :func:`power_report`'s."""
    from forgetbench.compare.options import posts_of, task_list

    check_settings(args.delta, args.alpha, args.power, args.budget, args.flip_rate)
    if not args.pre:
        raise CompareError("--pre DIR is required (the base model's lmms-eval output)")
    lists = {k: task_list(v, f"--{k}") if v is not None else None
             for k, v in (("tasks", args.tasks), ("downstream", args.downstream), ("upstream", args.upstream))}
    metrics, scales = {}, {}
    for option, items, out in (("--metric", args.metric, metrics), ("--metric-scale", args.metric_scale, scales)):
        for item in items or ():
            task, sep, value = (part.strip() for part in item.partition("="))
            if not sep or not task or not value:
                raise CompareError(f"{option}: expected TASK=VALUE, got {item!r}")
            out[task] = value
    return power_report(args.pre, posts_of(args.post) if args.post else [], lists["tasks"], args.delta, args.alpha,
                        args.power, args.budget, downstream=lists["downstream"], upstream=lists["upstream"],
                        flip_rate=args.flip_rate, metrics=metrics, scales=scales,
                        allow_mismatch=args.allow_mismatch)


def run(args: argparse.Namespace) -> int:
    """``forgetbench power``: 0, or 1 when stdout was closed early; a refusal raises (``main`` and the
    ``forgetbench`` command print it as one line, exit 2)."""
    from forgetbench.outputs import json_bytes, write_all_atomic

    report = report_of(args)
    if args.json_path:
        try:
            write_all_atomic({Path(args.json_path): json_bytes(report)})
        except OSError as exc:
            raise CompareError(f"--json: cannot write {exc.filename or args.json_path} ({exc.strerror})") from None
    from forgetbench.errors import emit

    return emit(format_report(report))



def main(argv: Sequence[str] | None = None) -> int:
    """``forgetbench power`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    from forgetbench.errors import command_main

    return command_main(PROG, configure_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
