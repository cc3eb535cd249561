"""Measurement (not a test): each lab arm's E-vs-F path, from the forgetting probe of one training run per arm.

Every arm is a recipe on the lab config with overrides; the probe (``--probe_every``, ``--probe_limit`` first test
documents of every lab task, greedy generation, the tasks' own scorers) scores the live model at step 0, every
N steps and at the end, so one run traces the arm's whole path from the base to the tuned model. Points are
printed as a Markdown table and written, one JSON line per probe, to ``--out``.

    python benchmarks/lab_frontier.py          # docs/lab.md's table: 11 arms, 300 steps each (about 15 min)
    python benchmarks/lab_frontier.py --arms "lora:--learning_rate 1e-3" "full_st:--learning_rate 3e-4"

An arm is ``METHOD[:OVERRIDES]``; its label is the whole string.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# docs/lab.md's frontier table: a few rates per arm around the lab default (1e-3 for both families).
RATES = {"lora": ("3e-4", "1e-3", "2e-3"), "full_st": ("1e-4", "3e-4", "1e-3")}
LORA_RANKS = ("--lora_r 8 --lora_alpha 16 --learning_rate 2e-3", "--lora_r 4 --lora_alpha 8 --learning_rate 1e-3",
              "--lora_r 4 --lora_alpha 8 --learning_rate 2e-3")


def default_arms() -> list[str]:
    from forgetbench import suite

    replay = ",".join(suite.tasks_in_role("upstream", suite.lab.PREFIX))
    arms = [f"{method}:--learning_rate {rate}" for method, rates in RATES.items() for rate in rates]
    arms += [f"lora:{ranks}" for ranks in LORA_RANKS]
    return arms + ["top_layers:--learning_rate 1e-3",
                   f"full_st:--learning_rate 1e-3 --replay_tasks {replay} --replay_ratio 0.2"]


def run_arm(arm: str, every: int, limit: int, scratch: Path) -> tuple[list[dict], float]:
    method, _, overrides = arm.partition(":")
    out = scratch / arm.replace(" ", "_").replace("/", "_").replace(":", "_")
    command = [sys.executable, str(REPO / "recipes" / f"{method}.py"), "--config",
               str(REPO / "recipes" / "configs" / "lab" / f"{method}.yaml"), "--output_dir", str(out),
               "--probe_every", str(every), "--probe_limit", str(limit), *shlex.split(overrides)]
    started = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"lab_frontier: arm {arm!r} failed: {done.stderr.strip().splitlines()[-1:]}")
    seconds = time.perf_counter() - started
    with open(out / "forgetting_probe.jsonl") as lines:
        return [json.loads(line) for line in lines], seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arms", nargs="+", default=None, help="default: docs/lab.md's table (11 arms)")
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "lab_frontier.jsonl")
    args = parser.parse_args(argv)

    args.arms = args.arms or default_arms()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for arm in args.arms:
            probes, seconds = run_arm(arm, args.every, args.limit, Path(scratch))
            for probe in probes:
                rows.append({"arm": arm, "seconds": round(seconds, 1), **probe})
            tasks = sorted(probes[0]["scores"])
            print(f"\n{arm}  ({seconds:.0f} s)\n| step | E | F | " + " | ".join(tasks) + " |")
            for probe in probes:
                cells = " | ".join(f"{probe['scores'][t]:.0f}" for t in tasks)
                print(f"| {probe['step']} | {probe['E']:+.1f} | {probe['F']:+.1f} | {cells} |", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as out:
        for row in rows:
            out.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
