"""Benchmark (not a test): paired bootstrap of E, F and O for 2 runs x 11 tasks x 50,000 samples, 10,000 resamples.

Goal: at most 2 s on 2 CPU cores, for 0/1 scores (exact match) and for continuous ones (ANLS, VQA accuracy, per-image
CIDEr). Times the statistics only (sample logs already parsed into arrays), from the per-document scores to the
three intervals, as ``forgetbench compare`` computes them; prints wall and CPU seconds per kind.

    python benchmarks/bench_bootstrap.py [binary|continuous ...]
"""

from __future__ import annotations

import sys
import time

import numpy as np

from forgetbench.compare import stats

TASKS, DOCS, RESAMPLES = 11, 50_000, 10_000


def scores(kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One task's pre and post per-document scores: 0/1, or in [0, 1] with post near pre."""
    if kind == "binary":
        pre = rng.integers(0, 2, DOCS).astype(float)
        return pre, np.where(rng.random(DOCS) < 0.1, 1 - pre, pre)
    pre = rng.random(DOCS)
    return pre, np.clip(pre + 0.1 * rng.standard_normal(DOCS), 0, 1)


def bench(kind: str) -> None:
    rng = np.random.default_rng(0)
    names = [f"task{i}" for i in range(TASKS)]
    pre, post = {}, {}
    for t in names:
        pre[t], post[t] = scores(kind, rng)
    wall, cpu = time.perf_counter(), time.process_time()
    report = stats.specialization_forgetting({t: 100 * pre[t].mean() for t in names},
                                             {t: 100 * post[t].mean() for t in names}, names[:3], names[3:])
    seeds = np.random.SeedSequence(0).spawn(TASKS)
    deviations = {t: stats.bootstrap_deviations(100 * (post[t] - pre[t]), None, RESAMPLES, np.random.default_rng(s))
                  for t, s in zip(names, seeds, strict=True)}
    cis = stats.efo_intervals(report, deviations, 0.95)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f"{kind:10s} {wall:.3f} s wall, {cpu:.3f} s CPU  ({TASKS} tasks x {DOCS} samples x 2 runs, {RESAMPLES} "
          f"resamples; E {report['E']:+.3f} [{cis['E'][0]:+.3f}, {cis['E'][1]:+.3f}], "
          f"F {report['F']:+.3f} [{cis['F'][0]:+.3f}, {cis['F'][1]:+.3f}])")


def main(kinds: list[str]) -> None:
    for kind in kinds or ["binary", "continuous"]:
        bench(kind)


if __name__ == "__main__":
    main(sys.argv[1:])
