"""Benchmark (not a test): what the forgetting probe adds to a lab recipe's training time (goal <= 5 %).

Runs ``recipes/full_st.py --config recipes/configs/lab/full_st.yaml`` (300 steps at batch 32 unless told) with the
probe at its default cadence (``--probe_every 50 --probe_limit 32``: steps 0, 50, ..., 300, 4 lab tasks) and
without it, alternating, each run in its own process, and reports:

- ``probe_share``: within each run with the probe, the probe's own seconds (every probe from start to end, its
  one-off prompt encoding included: the manifest's ``probe.seconds``) over the rest of its training time (the
  Trainer's ``train_runtime``, which includes the step-0 probe, minus the probe); median over the runs. Both parts
  of the ratio share one run's machine load, so this is the figure that survives a shared machine;
- ``train_ratio``: median training time with the probe over median training time without it (between runs: on a
  shared machine this moves by tens of percent with other people's load; the runs are listed);
- ``wall_ratio``: the same for the whole process (imports, loading the probe's documents, saving).

    python benchmarks/bench_probe.py                        # writes benchmarks/results/probe_cpu.json
    python benchmarks/bench_probe.py --steps 100 --repeats 3 --probe-every 20 --json /tmp/probe.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "recipes" / "configs" / "lab" / "full_st.yaml"


def one_run(out: Path, steps: int, probe: list[str]) -> dict:
    command = [sys.executable, str(REPO / "recipes" / "full_st.py"), "--config", str(CONFIG), "--max_steps",
               str(steps), "--output_dir", str(out), "--disable_tqdm", "true", *probe]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"bench_probe: {' '.join(command)} failed:\n{done.stderr[-3000:]}")
    manifest = json.loads((out / "forgetbench_manifest.json").read_text())
    row = {"wall_seconds": wall, "train_seconds": manifest["train_seconds"], "steps": manifest["steps"]}
    if "probe" in manifest:
        probe = manifest["probe"]
        row |= {"probe_seconds": probe["seconds"], "probe_load_seconds": probe["load_seconds"],
                "probes": probe["probes"], "last": probe["last"],
                "probe_share": probe["seconds"] / (manifest["train_seconds"] - probe["seconds"])}
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each side, alternating")
    parser.add_argument("--probe-every", type=int, default=50)
    parser.add_argument("--probe-limit", type=int, default=32)
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "probe_cpu.json")
    args = parser.parse_args(argv)

    probe = ["--probe_every", str(args.probe_every), "--probe_limit", str(args.probe_limit)]
    runs: dict[str, list[dict]] = {"on": [], "off": []}
    load_at_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for side in ("on", "off") if repeat % 2 == 0 else ("off", "on"):  # neither side always goes first
                row = one_run(Path(tmp) / f"{side}{repeat}", args.steps, probe if side == "on" else [])
                runs[side].append(row)
                print(f"{side} {repeat}: {json.dumps(row)}", file=sys.stderr)

    def median(side: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[side])

    result = {
        "recipe": "full_st", "config": str(CONFIG.relative_to(REPO)), "steps": args.steps,
        "probe_every": args.probe_every, "probe_limit": args.probe_limit, "repeats": args.repeats,
        "probe_share": median("on", "probe_share"),
        "train_ratio": median("on", "train_seconds") / median("off", "train_seconds"),
        "wall_ratio": median("on", "wall_seconds") / median("off", "wall_seconds"),
        "probe_seconds_median": median("on", "probe_seconds"),
        "train_seconds_median": {side: median(side, "train_seconds") for side in runs},
        "runs": runs,
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "load_average": {"start": load_at_start, "end": os.getloadavg()}},
        "date": time.strftime("%Y-%m-%d"),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"probe overhead: {100 * result['probe_share']:.2f} % of training time (probe seconds / the rest of "
          f"the run's training seconds, median of {args.repeats}); between runs: training time ratio "
          f"{result['train_ratio']:.3f}, process wall ratio {result['wall_ratio']:.3f}; {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
