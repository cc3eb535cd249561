"""Benchmark (not a test): paired bootstrap of E, F and O for 2 runs x 11 tasks x 50,000 samples, 10,000 resamples.

Goal: at most 2 s on 2 CPU cores. Times the statistics only (sample logs already parsed into arrays), from the
per-document 0/1 scores to the three intervals, as ``forgetbench compare`` computes them.

    python benchmarks/bench_bootstrap.py
"""

from __future__ import annotations

import time

import numpy as np

from forgetbench.compare import stats

TASKS, DOCS, RESAMPLES = 11, 50_000, 10_000


def main() -> None:
    rng = np.random.default_rng(0)
    names = [f"task{i}" for i in range(TASKS)]
    pre = {t: rng.integers(0, 2, DOCS).astype(float) for t in names}
    post = {t: np.where(rng.random(DOCS) < 0.1, 1 - pre[t], pre[t]) for t in names}
    start = time.perf_counter()
    report = stats.specialization_forgetting({t: 100 * pre[t].mean() for t in names},
                                             {t: 100 * post[t].mean() for t in names}, names[:3], names[3:])
    seeds = np.random.SeedSequence(0).spawn(TASKS)
    deviations = {t: stats.bootstrap_deviations(100 * (post[t] - pre[t]), None, RESAMPLES, np.random.default_rng(s))
                  for t, s in zip(names, seeds, strict=True)}
    cis = stats.efo_intervals(report, deviations, 0.95)
    seconds = time.perf_counter() - start
    print(f"{seconds:.3f} s  ({TASKS} tasks x {DOCS} samples x 2 runs, {RESAMPLES} resamples; "
          f"E {report['E']:+.2f} {cis['E']}, F {report['F']:+.2f} {cis['F']})")


if __name__ == "__main__":
    main()
