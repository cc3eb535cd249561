"""The pure statistics of forgetbench compare, against hand-computed values and as properties (hypothesis)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

from forgetbench.compare import stats
from forgetbench.compare.stages import stage_metrics


@pytest.mark.parametrize("value, scale, points", [
    (0.25, "fraction", 25.0), (61.5, "points", 61.5), (1.2, "cider", 120.0),
    (1500.0, "max:2000", 75.0), (600.0, "max:800", 75.0),
])
def test_to_points(value, scale, points):
    assert stats.to_points(value, scale) == pytest.approx(points)


@pytest.mark.parametrize("scale", ["percent", "max:0", "max:-5", "max:x", "max:nan", "", None, 3])
def test_unknown_scales_refused(scale):
    with pytest.raises(ValueError, match="unknown scale"):
        stats.scale_factor(scale)


def test_relative_change():
    assert stats.relative_change(80.0, 60.0) == pytest.approx(-25.0)
    assert stats.relative_change(0.0, 0.0) is None


def test_bootstrap_two_documents_by_hand():
    # Deltas 100 and 0: a resample holds 2x100 (p 1/4), one of each (1/2) or 2x0 (1/4); the mean is 50.
    dev = stats.bootstrap_deviations([100.0, 0.0], None, 40000, np.random.default_rng(1))
    values, counts = np.unique(dev, return_counts=True)
    assert values.tolist() == [-50.0, 0.0, 50.0]
    assert (counts / counts.sum()) == pytest.approx([0.25, 0.5, 0.25], abs=0.01)


def test_clustered_bootstrap_by_hand():
    # Cluster A holds two documents (deltas 100, 100), cluster B one (0); the estimate is 200/3.
    # Drawing 2 clusters: AA -> 100, AB -> 200/3, BB -> 0, with probabilities 1/4, 1/2, 1/4.
    dev = stats.bootstrap_deviations([100.0, 0.0, 100.0], ["A", "B", "A"], 40000, np.random.default_rng(2))
    values, counts = np.unique(np.round(dev, 9), return_counts=True)
    assert values == pytest.approx([-200 / 3, 0.0, 100 / 3])
    assert (counts / counts.sum()) == pytest.approx([0.25, 0.5, 0.25], abs=0.01)


def test_clustering_widens_the_interval_of_correlated_documents():
    # 20 images x 10 questions, all questions of an image right or wrong together: ~sqrt(10) wider.
    rng = np.random.default_rng(3)
    deltas = np.repeat(rng.choice([0.0, 100.0], size=20), 10)
    clusters = np.repeat(np.arange(20), 10)
    plain = stats.bootstrap_deviations(deltas, None, 4000, np.random.default_rng(4))
    clustered = stats.bootstrap_deviations(deltas, clusters, 4000, np.random.default_rng(4))
    assert clustered.std() / plain.std() == pytest.approx(np.sqrt(10), rel=0.2)


@pytest.mark.parametrize("continuous", [False, True])
def test_bootstrap_matches_scipy(continuous):
    """Both sampling paths (multinomial over distinct 0/1 deltas; unit indices for a continuous metric) are the
    ordinary paired bootstrap: the same interval as scipy's, within resampling noise."""
    rng = np.random.default_rng(5)
    draw = (lambda: rng.random(400)) if continuous else (lambda: rng.integers(0, 2, 400).astype(float))
    pre, post = draw(), draw()
    ours = stats.interval(100 * (post - pre).mean(),
                          stats.bootstrap_deviations(100 * (post - pre), None, 20000, rng), 0.95)
    ref = scipy.stats.bootstrap((pre, post), lambda a, b, axis: 100 * (b - a).mean(axis=axis), paired=True,
                                n_resamples=20000, method="percentile", random_state=6).confidence_interval
    assert ours == pytest.approx([ref.low, ref.high], abs=0.6)


def test_efo_intervals_share_resample_index():
    r = stats.specialization_forgetting({"d": 0.0, "u": 0.0}, {"d": 10.0, "u": -10.0}, ["d"], ["u"])
    dev = {"d": np.array([-1.0, 0.0, 1.0]), "u": np.array([1.0, 0.0, -1.0])}
    cis = stats.efo_intervals(r, dev, 0.999999)
    assert cis["O"] == pytest.approx([0.0, 0.0])  # deviations cancel resample by resample
    assert cis["E"] == pytest.approx([9.0, 11.0], abs=1e-4) and cis["F"] == pytest.approx([-11.0, -9.0], abs=1e-4)


def test_flips_and_mcnemar_by_hand():
    flips = stats.flip_counts([1, 1, 1, 0, 0, 0, 1], [0, 0, 1, 1, 0, 0, 1])
    assert flips == {"forgotten": 2, "learned": 1, "both_right": 2, "both_wrong": 2}
    # Exact: 3 discordant pairs, two-sided binomial P(X <= 1 | n=3, p=1/2) * 2 = 2 * 4/8 = 1.
    assert stats.mcnemar_test(flips) == {"statistic": 1.0, "pvalue": 1.0, "exact": True}
    # Chi-square with continuity correction: (|30 - 10| - 1)^2 / 40 = 9.025, 1 degree of freedom.
    big = stats.mcnemar_test({"forgotten": 30, "learned": 10, "both_right": 5, "both_wrong": 5})
    assert big["statistic"] == pytest.approx(9.025) and not big["exact"]
    assert big["pvalue"] == pytest.approx(scipy.stats.chi2.sf(9.025, 1))


def test_pareto_front_by_hand():
    pts = {"a": (10.0, -1.0), "b": (5.0, -1.0), "c": (20.0, -5.0), "d": (20.0, -5.0), "e": (1.0, 0.0)}
    assert stats.pareto_front(pts) == ["c", "d", "a", "e"]  # ties both stay; b is beaten by a


def test_stage_metrics_by_hand():
    # After stage 1: A 60, B 20; after stage 2: A 40, B 90.
    assert stage_metrics([[60, 20], [40, 90]]) == pytest.approx(
        {"MFN": 65.0, "MAA": (60 + 65) / 2, "BWT": -20.0, "AF": 20.0})
    with pytest.raises(ValueError):
        stage_metrics([[1.0]])


# ---------------------------------------------------------------- properties

scores01 = st.lists(st.sampled_from([0.0, 1.0]), min_size=1, max_size=60)
scores = st.lists(st.floats(0, 1, allow_nan=False, width=32), min_size=1, max_size=40)


def _report(pre: dict, post: dict, seed: int, clusters=None):
    """E/F/O and their intervals from per-task sample arrays (first task downstream, the rest upstream)."""
    tasks = list(pre)
    r = stats.specialization_forgetting({t: 100 * np.mean(pre[t]) for t in tasks},
                                        {t: 100 * np.mean(post[t]) for t in tasks}, tasks[:1], tasks[1:])
    dev = {t: stats.bootstrap_deviations(100 * (np.asarray(post[t]) - np.asarray(pre[t])),
                                         clusters and clusters[t], 500, np.random.default_rng([seed, i]))
           for i, t in enumerate(tasks)}
    return r, stats.efo_intervals(r, dev, 0.95)


def _paired(draw, values):
    n = draw(st.integers(1, 40))
    return {t: (draw(st.lists(values, min_size=n, max_size=n)), draw(st.lists(values, min_size=n, max_size=n)))
            for t in ("down", "up1", "up2")}


BINARY = st.sampled_from([0.0, 1.0])


@st.composite
def paired_runs(draw, values=BINARY):
    return _paired(draw, values), draw(st.integers(0, 2**32 - 1))


@settings(max_examples=60, deadline=None)
@given(paired_runs(st.floats(0, 1, allow_nan=False)))
def test_self_comparison_is_zero_with_zero_width(case):
    runs, seed = case
    pre = {t: a for t, (a, _) in runs.items()}
    r, cis = _report(pre, pre, seed)
    for k in "EFO":
        assert r[k] == 0.0 and cis[k] == [0.0, 0.0]


@settings(max_examples=60, deadline=None)
@given(paired_runs(), st.booleans())
def test_swapping_pre_and_post_flips_every_sign(case, clustered):
    runs, seed = case
    pre, post = {t: a for t, (a, _) in runs.items()}, {t: b for t, (_, b) in runs.items()}
    clusters = {t: [i // 3 for i in range(len(a))] for t, a in pre.items()} if clustered else None
    fwd, cf = _report(pre, post, seed, clusters)
    back, cb = _report(post, pre, seed, clusters)
    for k in "EFO":
        assert back[k] == pytest.approx(-fwd[k], abs=1e-9)
        assert cb[k] == pytest.approx([-cf[k][1], -cf[k][0]], abs=1e-9)
    for t in pre:
        assert back["tasks"][t]["delta"] == pytest.approx(-fwd["tasks"][t]["delta"], abs=1e-9)


@settings(max_examples=100, deadline=None)
@given(paired_runs(st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0, 1, allow_nan=False))))
def test_interval_contains_the_point_estimate(case):
    runs, seed = case
    r, cis = _report({t: a for t, (a, _) in runs.items()}, {t: b for t, (_, b) in runs.items()}, seed)
    for k in "EFO":
        assert cis[k][0] <= r[k] <= cis[k][1]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-100, 100, allow_nan=False), min_size=1, max_size=150), st.integers(0, 1000))
def test_deviation_negation_is_exact(deltas, seed):
    a = stats.bootstrap_deviations(deltas, None, 200, np.random.default_rng(seed))
    b = stats.bootstrap_deviations([-d for d in deltas], None, 200, np.random.default_rng(seed))
    assert np.allclose(a, -b, atol=1e-9)
