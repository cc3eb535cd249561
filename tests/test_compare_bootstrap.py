"""The continuous-metric bootstrap paths against reference implementations: unit-index draws in blocks are the plain
row-by-row bootstrap (same seed, same numbers), the binned path is its documented algorithm written as a loop, and
both give the same intervals within resampling noise; deterministic for a seed, exact under negation."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from forgetbench.compare import stats


def reference_index(pool, size, resamples, rng):
    """The textbook bootstrap of sum(pool) / sum(size): one row of unit indices per resample."""
    out = []
    for _ in range(resamples):
        idx = rng.integers(0, len(pool), size=len(pool), dtype=np.int32)
        out.append(sum(pool[i] for i in idx) / (len(pool) if size is None else sum(size[i] for i in idx)))
    return np.array(out)


def reference_edges(n):
    """Bins of sizes 1, 1, 2, 4, ... from both ends of n sorted units, the middle one the rest."""
    sizes, left = [], n // 2
    while sum(sizes) + max(1, sum(sizes)) < left:
        sizes.append(max(1, sum(sizes)))
    edges = np.cumsum([0, *sizes]).tolist()
    return edges + [n - e for e in reversed(edges)]


def reference_binned(pool, size, resamples, rng):
    """binned_deviations' docstring as a loop: bins of the units sorted by value (times the sign of the first
    non-zero unit), one multinomial of the bin counts and one normal for the within-bin spread a resample."""
    sign = np.sign(next(v for v in pool if v != 0))
    order = sorted(range(len(pool)), key=lambda i: sign * pool[i])
    edges = reference_edges(len(pool))
    groups = [np.array(order[a:b]) for a, b in zip(edges, edges[1:], strict=False)]
    counts = rng.multinomial(len(pool), [len(g) / len(pool) for g in groups], size=resamples)
    normals = rng.standard_normal(resamples)
    out = []
    for c, z in zip(counts, normals, strict=True):
        num = sum(k * pool[g].mean() for k, g in zip(c, groups, strict=True))
        var = sum(k * pool[g].var() for k, g in zip(c, groups, strict=True))
        den = sum(k * size[g].mean() for k, g in zip(c, groups, strict=True))
        out.append((num + sign * z * np.sqrt(var)) / den)
    return np.array(out)


@pytest.mark.parametrize("n", [2, 3, 20, 1000, 50_000])
def test_bin_edges(n):
    edges = stats.bin_edges(n)
    assert edges.tolist() == reference_edges(n) and edges[0] == 0 and edges[-1] == n
    assert (np.diff(edges) > 0).all() and len(edges) <= 2 * np.log2(n) + 3
    assert n < 4 or np.diff(edges)[0] == np.diff(edges)[-1] == 1  # the extreme units are bins of their own


@pytest.mark.parametrize("clustered", [False, True])
def test_index_draws_in_blocks_are_the_row_by_row_bootstrap(clustered):
    rng = np.random.default_rng(0)
    pool = rng.normal(size=300)
    size = rng.integers(1, 4, 300).astype(float) if clustered else None
    fast = stats.index_deviations(pool, size, 400, np.random.default_rng(7))
    assert fast == pytest.approx(reference_index(pool, size, 400, np.random.default_rng(7)), rel=1e-12, abs=1e-12)


def test_binned_path_is_its_reference_loop():
    rng = np.random.default_rng(1)
    pool, size = rng.normal(size=2000), rng.integers(1, 5, 2000).astype(float)
    pool -= pool.sum() / size.sum() * size  # centred, as bootstrap_deviations passes it
    fast = stats.binned_deviations(pool, size, 300, np.random.default_rng(3))
    assert fast == pytest.approx(reference_binned(pool, size, 300, np.random.default_rng(3)), rel=1e-9, abs=1e-12)


def test_large_continuous_task_takes_the_binned_path_and_matches_index_draws():
    rng = np.random.default_rng(2)
    pre = rng.random(8000)
    deltas = 100 * (np.clip(pre + 0.2 * rng.standard_normal(8000) ** 3, 0, 1) - pre)  # skewed deltas
    assert deltas.size * 10000 > stats.EXACT_DRAWS
    binned = stats.bootstrap_deviations(deltas, None, 10000, np.random.default_rng(4))
    exact = stats.index_deviations(deltas - deltas.mean(), None, 10000, np.random.default_rng(5))
    assert binned.std() == pytest.approx(exact.std(), rel=0.03)
    for q in (0.025, 0.5, 0.975):  # two runs of the exact bootstrap differ by ~0.04 sd at 2.5 %
        assert np.quantile(binned, q) == pytest.approx(np.quantile(exact, q), abs=0.12 * exact.std())
    ours = stats.interval(deltas.mean(), binned, 0.95)
    ref = scipy.stats.bootstrap((deltas,), np.mean, n_resamples=10000, method="percentile",
                                random_state=6).confidence_interval
    assert ours == pytest.approx([ref.low, ref.high], abs=0.12 * exact.std())


def test_binned_path_is_deterministic_and_exact_under_negation():
    deltas = np.random.default_rng(8).normal(size=6000)
    a = stats.bootstrap_deviations(deltas, None, 10000, np.random.default_rng(9))
    b = stats.bootstrap_deviations(deltas, None, 10000, np.random.default_rng(9))
    c = stats.bootstrap_deviations(-deltas, None, 10000, np.random.default_rng(9))
    assert np.array_equal(a, b) and np.allclose(a, -c, atol=1e-12)


def test_clustered_binned_path_matches_cluster_index_draws():
    rng = np.random.default_rng(10)
    clusters = np.repeat(np.arange(6000), 2)
    deltas = np.repeat(rng.normal(size=6000), 2) + 0.1 * rng.normal(size=12000)
    binned = stats.bootstrap_deviations(deltas, clusters, 10000, np.random.default_rng(11))
    sums, sizes = np.bincount(clusters, weights=deltas), np.bincount(clusters).astype(float)
    exact = stats.index_deviations(sums - sizes * deltas.mean(), sizes, 10000, np.random.default_rng(12))
    assert binned.std() == pytest.approx(exact.std(), rel=0.03)
