"""Pure statistics of ``forgetbench compare``: scales, E/F/O, paired bootstrap, flips, McNemar, Pareto front.

No I/O here (HF ``evaluate`` style): every function takes numbers and returns numbers, with a runnable example.
See docs/metrics.md for the definitions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

SCALE_HELP = "fraction|points|cider|max:N"


def scale_factor(scale: str) -> tuple[float, float | None]:
    """``(factor, upper)`` of a scale: points = value * factor; values above ``upper`` are impossible.

    ``fraction`` (0-1 accuracies), ``points`` (already 0-100), ``cider`` (CIDEr, about 0-1.5, reported x100
    as usual; at most 10 by construction) and ``max:N`` (a score out of N, e.g. MME perception ``max:2000``:
    percent of the maximum).

    >>> scale_factor("fraction"), scale_factor("points"), scale_factor("cider")
    ((100.0, 1.0), (1.0, None), (100.0, 10.0))
    >>> scale_factor("max:800")
    (0.125, 800.0)
    >>> scale_factor("percent")
    Traceback (most recent call last):
    ...
    ValueError: unknown scale 'percent' (expected fraction|points|cider|max:N)
    """
    fixed = {"fraction": (100.0, 1.0), "points": (1.0, None), "cider": (100.0, 10.0)}
    if isinstance(scale, str) and scale in fixed:
        return fixed[scale]
    if isinstance(scale, str) and scale.startswith("max:"):
        try:
            top = float(scale[4:])
        except ValueError:
            top = math.nan
        if math.isfinite(top) and top > 0:
            return 100.0 / top, top
    raise ValueError(f"unknown scale {scale!r} (expected {SCALE_HELP})")


def to_points(value: float, scale: str) -> float:
    """Convert a metric value to points (0-100; CIDEr may exceed 100).

    >>> to_points(0.25, "fraction")
    25.0
    >>> to_points(61.5, "points")
    61.5
    >>> to_points(1500, "max:2000")
    75.0
    """
    return float(value) * scale_factor(scale)[0]


def relative_change(pre: float, post: float) -> float | None:
    """``post / pre - 1`` in percent; None when ``pre`` is 0.

    >>> relative_change(40.0, 50.0)
    25.0
    >>> relative_change(0.0, 5.0) is None
    True
    """
    return None if pre == 0 else (post / pre - 1.0) * 100.0


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
# Paired bootstrap
# --------------------------------------------------------------------------

# Above this many unit draws (units x resamples) a continuous metric is resampled through bins of units
# (binned_deviations); below it, unit indices are drawn: at 2-5 ns a draw, at most ~0.25 s a task.
EXACT_DRAWS = 50_000_000


def bootstrap_deviations(
    deltas: Sequence[float], clusters: Sequence | None, resamples: int, rng: np.random.Generator
) -> np.ndarray:
    """Resampled mean delta minus the observed mean delta, ``resamples`` times (paired, optionally clustered).

    ``deltas[i]`` is post - pre of document i, so pre and post are resampled jointly. With ``clusters``,
    whole clusters (e.g. all questions on one image) are drawn and the mean is over the drawn documents.
    Units with the same (sum, size) are interchangeable, so one multinomial draw over the distinct units
    gives exactly the nonparametric bootstrap in O(resamples x distinct): 0/1 metrics have at most 3 distinct
    deltas, whatever the number of documents. With more than 64 distinct units (continuous metrics) unit
    indices are drawn instead, O(resamples x units), up to :data:`EXACT_DRAWS` draws; beyond that (e.g. 50 000
    documents x 10 000 resamples) see :func:`binned_deviations`. Units are ordered by first appearance, so
    negating ``deltas`` (swapping pre and post) negates every deviation, on every path.

    >>> dev = bootstrap_deviations([100.0, 0.0, 0.0, -100.0], None, 1000, np.random.default_rng(0))
    >>> dev.shape, bool(abs(dev.mean()) < 5), bool(dev.min() >= -100 and dev.max() <= 100)
    ((1000,), True, True)
    >>> bootstrap_deviations([5.0, 5.0], None, 3, np.random.default_rng(0))
    array([0., 0., 0.])
    """
    d = np.asarray(deltas, dtype=float)
    if clusters is None:  # every document is a unit of size 1 (1-D unique: ~10x faster than row-wise)
        units = np.stack([d, np.ones_like(d)], axis=1)
        distinct, first, counts = np.unique(d, return_index=True, return_counts=True)
        if len(distinct) > 64:  # continuous: straight to unit draws, no need to order the distinct values
            pool = d - d.mean()
            if len(pool) * resamples > EXACT_DRAWS:
                return binned_deviations(pool, units[:, 1], resamples, rng)
            return index_deviations(pool, None, resamples, rng)
        distinct = np.stack([distinct, np.ones_like(distinct)], axis=1)
    else:
        _, first, inverse = np.unique(np.asarray(clusters, dtype=str), return_index=True, return_inverse=True)
        order = np.argsort(first, kind="stable")  # clusters in order of appearance
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        inverse = rank[inverse.ravel()]
        units = np.stack([np.bincount(inverse, weights=d), np.bincount(inverse).astype(float)], axis=1)
        distinct, first, counts = np.unique(units, axis=0, return_index=True, return_counts=True)
    order = np.argsort(first, kind="stable")
    distinct, counts = distinct[order], counts[order]
    if len(distinct) <= 1:  # nothing varies: every resample equals the estimate
        return np.zeros(resamples)
    estimate = counts @ distinct[:, 0] / (counts @ distinct[:, 1])
    if len(counts) <= 64:  # few distinct units (0/1 metrics): one multinomial over them, exact
        return _multinomial_deviations(distinct[:, 0] - distinct[:, 1] * estimate, distinct[:, 1], counts,
                                       resamples, rng)
    pool, size = units[:, 0] - units[:, 1] * estimate, units[:, 1]
    if len(pool) * resamples > EXACT_DRAWS:
        return binned_deviations(pool, size, resamples, rng)
    return index_deviations(pool, None if clusters is None else size, resamples, rng)


def _multinomial_deviations(pool: np.ndarray, size: np.ndarray, counts: np.ndarray, resamples: int,
                            rng: np.random.Generator) -> np.ndarray:
    out = np.empty(resamples)
    step = max(1, 20_000_000 // len(pool))  # bound the memory of one block of resamples
    for lo in range(0, resamples, step):
        m = min(step, resamples - lo)
        weights = rng.multinomial(counts.sum(), counts / counts.sum(), size=m)
        out[lo:lo + m] = weights @ pool / (weights @ size)
    return out


def index_deviations(pool: np.ndarray, size: np.ndarray | None, resamples: int,
                     rng: np.random.Generator) -> np.ndarray:
    """The plain nonparametric bootstrap of the ratio sum(pool) / sum(size) over units drawn with replacement
    (``size`` None: every unit counts 1), ``pool`` already centred: ``resamples`` rows of ``len(pool)`` int32 unit
    indices, drawn in blocks; the same as drawing row by row (``tests/test_stats.py`` holds it to a loop).

    >>> index_deviations(np.array([1.0, -1.0]), None, 4, np.random.default_rng(0))
    array([-1.,  0.,  1.,  1.])
    """
    n = len(pool)
    out = np.empty(resamples)
    step = max(1, 20_000_000 // n)
    for lo in range(0, resamples, step):
        m = min(step, resamples - lo)
        idx = rng.integers(0, n, size=(m, n), dtype=np.int32)
        total = np.take(pool, idx).sum(axis=1)
        out[lo:lo + m] = total / (n if size is None else np.take(size, idx).sum(axis=1))
    return out


def bin_edges(n: int) -> np.ndarray:
    """Rank edges of the bins of :func:`binned_deviations`: sizes 1, 1, 2, 4, 8, ... from both ends of the sorted
    units, and one middle bin for the rest, so the extreme units (which make a mean's skew) stay exact.

    >>> bin_edges(20).tolist()  # sizes 1, 1, 2, 4, 4 (middle), 4, 2, 1, 1
    [0, 1, 2, 4, 8, 12, 16, 18, 19, 20]
    """
    low, step = [0], 1
    while low[-1] + step < n // 2:
        low.append(low[-1] + step)
        step = max(step, low[-1])  # 0, 1, 2, 4, 8: each bin as large as all before it
    return np.array(low + [n - e for e in reversed(low)], dtype=np.int64)


def binned_deviations(pool: np.ndarray, size: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """The bootstrap of sum(pool) / sum(size) (``pool`` centred) for many units, in O(resamples x log units).

    Units are sorted by value into the bins of :func:`bin_edges` (about 31 for 50 000 units). A resample draws
    how many of its units fall in each bin (one multinomial: exact), takes each drawn unit at its bin's mean, and
    adds the within-bin spread as one normal draw with its exact variance, sum over bins of count x within-bin
    variance. The resampled numerator thus has the bootstrap's exact mean and variance, the extreme units (single-
    unit bins) and hence the skew stay exact, and only the shape inside the large middle bins is taken as normal;
    the denominator takes each bin's mean size. Intervals agree with drawing unit indices within resampling noise
    (``tests/test_compare_bootstrap.py``), at ~0.04 s instead of ~5 s a task of 50 000 units and 10 000 resamples.
    Sorting by value times the sign of the first non-zero unit keeps negation exact.

    >>> pool = np.linspace(-1, 1, 1001)
    >>> dev = binned_deviations(pool, np.ones_like(pool), 20000, np.random.default_rng(0))
    >>> round(float(dev.std()) / float(pool.std() / np.sqrt(pool.size)), 1)  # the bootstrap's standard error
    1.0
    """
    n = len(pool)
    sign = np.sign(pool[np.flatnonzero(pool)[0]]) if pool.any() else 1.0
    order = np.argsort(sign * pool)  # the same key for pool and -pool, hence the same order
    edges = bin_edges(n)
    sizes = np.diff(edges).astype(float)
    values, weights = pool[order], size[order]

    def bin_sums(x: np.ndarray) -> np.ndarray:
        return np.add.reduceat(x, edges[:-1])

    mean = bin_sums(values) / sizes
    spread = np.maximum(bin_sums((values - np.repeat(mean, np.diff(edges))) ** 2) / sizes, 0.0)
    per_bin = np.stack([mean, spread, bin_sums(weights) / sizes], axis=1)
    counts = rng.multinomial(n, sizes / n, size=resamples).astype(float)
    totals = counts @ per_bin  # (resamples, 3): sum of drawn units at their bin means, within-bin variance, size
    noise = rng.standard_normal(resamples) * np.sqrt(totals[:, 1])
    return (totals[:, 0] + sign * noise) / totals[:, 2]


def stratified_deviations(deltas: Sequence[float], strata: Sequence | None, resamples: int,
                          rng: np.random.Generator) -> np.ndarray:
    """Deviations of a sum of per-stratum means (MME: the sum over categories of the mean per image), each stratum
    resampled on its own; with ``strata`` None, :func:`bootstrap_deviations` of the plain mean.

    >>> dev = stratified_deviations([100.0, 0.0, 50.0, 50.0], ["a", "a", "b", "b"], 1000, np.random.default_rng(0))
    >>> sorted(set(dev.tolist()))  # stratum b never varies; a gives -50, 0 or +50
    [-50.0, 0.0, 50.0]
    """
    if strata is None:
        return bootstrap_deviations(deltas, None, resamples, rng)
    d, labels = np.asarray(deltas, dtype=float), np.asarray([str(s) for s in strata])
    out = np.zeros(resamples)
    for stratum in dict.fromkeys(labels.tolist()):
        out += bootstrap_deviations(d[labels == stratum], None, resamples, rng)
    return out


def interval(estimate: float, deviations: np.ndarray, confidence: float) -> list[float]:
    """Percentile interval ``estimate + quantiles(deviations)``: the same as the quantiles of the resampled
    statistic, written so that a zero deviation gives exactly ``[estimate, estimate]``.

    >>> interval(10.0, np.array([-2.0, -1.0, 0.0, 1.0, 2.0]), 0.5)
    [9.0, 11.0]
    >>> interval(3.0, np.zeros(100), 0.95)
    [3.0, 3.0]
    """
    tail = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(deviations, [tail, 1.0 - tail])
    return [float(estimate + lo), float(estimate + hi)]


def efo_intervals(
    report: Mapping, deviations: Mapping[str, np.ndarray], confidence: float
) -> dict[str, list[float] | None]:
    """Intervals of E, F and O from per-task deviations that share the resample index b.

    ``report`` is :func:`specialization_forgetting`'s result; a role with a task lacking deviations gets None.

    >>> r = specialization_forgetting({"a": 0, "b": 0}, {"a": 10, "b": 0}, ["a"], ["b"])
    >>> efo_intervals(r, {"a": np.array([-1.0, 1.0]), "b": np.array([-2.0, 0.0])}, 1.0)
    {'E': [9.0, 11.0], 'F': [-2.0, 0.0], 'O': [7.0, 11.0]}
    >>> efo_intervals(r, {"a": np.array([-1.0, 1.0])}, 0.95)["F"] is None
    True
    """
    devs = {}
    for key, role in (("E", "downstream"), ("F", "upstream")):
        names = [t for t, row in report["tasks"].items() if row["role"] == role]
        devs[key] = np.mean([deviations[t] for t in names], axis=0) if all(t in deviations for t in names) else None
    devs["O"] = devs["E"] + devs["F"] if devs["E"] is not None and devs["F"] is not None else None
    return {k: None if d is None else interval(report[k], d, confidence) for k, d in devs.items()}


# --------------------------------------------------------------------------
# Flips and McNemar's test (0/1 metrics)
# --------------------------------------------------------------------------

def flip_counts(pre: Sequence[float], post: Sequence[float]) -> dict[str, int]:
    """Paired 0/1 outcomes: right->wrong (forgotten), wrong->right (learned), and the unchanged.

    >>> flip_counts([1, 1, 0, 0, 1], [0, 1, 1, 0, 1])
    {'forgotten': 1, 'learned': 1, 'both_right': 2, 'both_wrong': 1}
    """
    a, b = np.asarray(pre) == 1, np.asarray(post) == 1
    return {"forgotten": int(np.sum(a & ~b)), "learned": int(np.sum(~a & b)),
            "both_right": int(np.sum(a & b)), "both_wrong": int(np.sum(~a & ~b))}


def mcnemar_test(flips: Mapping[str, int]) -> dict:
    """McNemar's test of :func:`flip_counts` (statsmodels): exact binomial when fewer than 25 discordant
    pairs, else chi-square with continuity correction.

    >>> mcnemar_test({"forgotten": 1, "learned": 9, "both_right": 50, "both_wrong": 40})
    {'statistic': 1.0, 'pvalue': 0.021484375, 'exact': True}
    """
    from statsmodels.stats.contingency_tables import mcnemar

    table = [[flips["both_right"], flips["forgotten"]], [flips["learned"], flips["both_wrong"]]]
    exact = flips["forgotten"] + flips["learned"] < 25
    result = mcnemar(table, exact=exact, correction=True)
    return {"statistic": float(result.statistic), "pvalue": float(result.pvalue), "exact": exact}


def pareto_front(points: Mapping[str, tuple[float, float]]) -> list[str]:
    """Names whose (E, F) no other point beats on both (>= on both, > on one): higher is better for both.

    >>> pareto_front({"lora": (30, -0.5), "full": (40, -20), "ia3": (5, -3), "replay": (39, -1)})
    ['full', 'replay', 'lora']
    """
    def dominated(p):
        return any(q[0] >= p[0] and q[1] >= p[1] and q != p for q in points.values())

    return sorted((n for n, p in points.items() if not dominated(p)), key=lambda n: -points[n][0])
