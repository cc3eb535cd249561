"""Closed-set (likelihood) scoring with and without the shared-prefix cache of ``--model forgetbench``, in one run.

EMT's closed-set tasks rank every label by likelihood: CIFAR-100 asks 100 choices per image. Without the cache the
wrapper runs one forward pass per (image, question, choice); with it, the image and question are encoded once and
the choices are scored from the cached prefix. Both sides run the same lmms-eval requests on the same model, each
loaded and warmed up first; the answers (likelihoods and ranks) are compared too.

    python benchmarks/bench_prefix_cache.py                 # lab model, CPU: CIFAR-100 fixture (100-way) + lab tasks

Writes one JSON object per task to benchmarks/results/prefix_cache_cpu.jsonl and prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def requests_for(task_name: str, include: str, limit: int):
    """lmms-eval's own loglikelihood requests for ``limit`` documents of a task, and its task dict."""
    from lmms_eval.tasks import TaskManager, get_task_dict

    manager = TaskManager(include_path=include, include_defaults=False)
    task = get_task_dict([task_name], manager)[task_name]
    task.build_all_requests(limit=limit, rank=0, world_size=1)
    return task.instances, {task_name: {task.config.test_split: task.test_docs()}}


def timed(model, requests) -> tuple[float, list]:
    start = time.perf_counter()
    out = model.loglikelihood(requests)
    return time.perf_counter() - start, [r.text for r in out]


def main() -> None:
    import forgetbench
    from forgetbench.checkpoint import lab_base_model_path
    from forgetbench.evaluate.model import ImageTextModel
    from forgetbench.suite import fixtures

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=8, help="documents per task")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "prefix_cache_cpu.jsonl")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        fixtures.write_all(Path(scratch))
        include = [str(forgetbench.tasks_path()), scratch]
        models = {cached: ImageTextModel(pretrained=str(lab_base_model_path()), batch_size=args.batch_size,
                                         prefix_cache=cached) for cached in (True, False)}
        rows = []
        for task in ("forgetbench_emt_cifar100_closed_local", "forgetbench_lab_shape_closed",
                     "forgetbench_lab_digits_closed"):
            requests, docs = requests_for(task, include, args.limit)
            seconds = {}
            answers = {}
            for cached, model in models.items():
                model.task_dict = docs
                timed(model, requests[: min(len(requests), 8)])  # warm-up
                seconds[cached], answers[cached] = timed(model, requests)
            gap = max(abs(a[0] - b[0]) for a, b in zip(answers[True], answers[False], strict=True))
            rows.append({"task": task, "documents": args.limit, "requests": len(requests),
                         "uncached_s": round(seconds[False], 3), "cached_s": round(seconds[True], 3),
                         "speedup": round(seconds[False] / seconds[True], 2), "max_nll_gap": gap,
                         "same_greedy": [a[1] for a in answers[True]] == [b[1] for b in answers[False]],
                         "threads": __import__("torch").get_num_threads()})
            print(json.dumps(rows[-1]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps(row) + "\n" for row in rows))


if __name__ == "__main__":
    main()
