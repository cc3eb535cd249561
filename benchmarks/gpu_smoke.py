"""GPU smoke benchmark (not a test): the real-size path of every step on one CUDA GPU, in one command.

Builds random-init LLaVA-OneVision-0.5B and Qwen2-VL-2B at their real sizes (configs written in
forgetbench/lab/tiny.py, no hub access; the lab's byte-level tokenizer with each family's special tokens), trains
each with recipes/lora.py, recipes/qlora.py and recipes/full_st.py from its real-model config (recipes/configs/
llava-onevision-0.5b/, qwen2-vl-2b/: bf16, batch 4 x 4 accumulation, gradient checkpointing) for 20 steps on the lab's
digits task at the model's real image size (384 px one tile; 448x448), then evaluates the LoRA checkpoint on 64
documents with ``--model forgetbench`` (generation, and closed-set likelihood over a cached prefix) and with
lmms-eval's ``--model vllm`` when vllm imports. Prints one JSON object: per family and method, seconds per step,
samples per second and peak GPU memory; per evaluation, seconds and documents per second.

    python benchmarks/gpu_smoke.py                       # one H100: well under 8 minutes (estimate: ~6)
    python benchmarks/gpu_smoke.py --steps 5 --eval-docs 16
    python benchmarks/gpu_smoke.py --tiny                # the same code on the tiny families, on a CPU (its test)

Without a CUDA GPU (and without --tiny) it exits 2 with one line.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROG = "gpu_smoke.py"
FAMILIES = {"llava-onevision": "llava-onevision-0.5b", "qwen2-vl": "qwen2-vl-2b"}  # family -> recipe config folder
METHODS = ("lora", "qlora", "full_st")
EVAL_METHOD = "lora"  # the checkpoint each family's evaluation reads
DATASET = "forgetbench_lab_digits"
TASKS = {"generation": "forgetbench_lab_digits", "likelihood": "forgetbench_lab_digits_closed"}
# What a CPU run of a real-model config changes (the --tiny path; the same overrides as tests/test_families.py).
CPU = ["--use_cpu", "true", "--bf16", "false", "--gradient_checkpointing", "false", "--dtype", "float32"]


def _clock(cuda: bool):
    """A TrainerCallback noting the time at the end of every optimizer step (after the GPU is done), and the peak
    GPU memory when training ends (before the merge and save)."""
    import torch
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self):
            self.marks: list[float] = []
            self.peak_bytes = 0

        def _now(self) -> float:
            if cuda:
                torch.cuda.synchronize()
            return time.perf_counter()

        def on_train_begin(self, args, state, control, **kw):
            self.marks = [self._now()]

        def on_step_end(self, args, state, control, **kw):
            self.marks.append(self._now())

        def on_train_end(self, args, state, control, **kw):
            if cuda:
                self.peak_bytes = torch.cuda.max_memory_allocated()

        def step_seconds(self) -> list[float]:
            return [b - a for a, b in zip(self.marks, self.marks[1:], strict=False)]

    return StepClock()


def train(family: str, method: str, model: Path, out: Path, steps: int, tiny: bool) -> dict:
    """One recipe run (forgetbench.train.run_recipe, as recipes/<method>.py runs it), timed per step."""
    import torch
    from trl import ModelConfig, ScriptArguments, SFTConfig, TrlParser

    from forgetbench.train import ForgetbenchArguments, run_recipe

    cuda = torch.cuda.is_available() and not tiny
    config = REPO / "recipes" / "configs" / FAMILIES[family] / f"{method}.yaml"
    parser = TrlParser((ScriptArguments, SFTConfig, ModelConfig, ForgetbenchArguments))
    script_args, training_args, model_args, fb_args = parser.parse_args_and_config(args=[
        "--config", str(config), "--model_name_or_path", str(model), "--max_steps", str(steps),
        "--output_dir", str(out), "--dataset_name", DATASET, "--logging_steps", "1", "--save_strategy", "no",
        *(CPU if tiny else [])])
    fb_args.method = method
    clock = _clock(cuda)
    if cuda:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    run_recipe(script_args, training_args, model_args, fb_args, callbacks=[clock])
    wall = time.perf_counter() - start
    manifest = json.loads((out / "forgetbench_manifest.json").read_text())
    durations = clock.step_seconds()
    # The first steps pay for allocation and kernel selection: the median of the rest is the step time.
    steady = durations[2:] if len(durations) > 3 else durations
    per_step = statistics.median(steady)
    samples = (training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
               * max(1, training_args.world_size))
    return {
        "steps": manifest["steps"],
        "seconds_per_step": round(per_step, 4),
        "samples_per_step": samples,
        "samples_per_second": round(samples / per_step, 2),
        "peak_gpu_memory_gib": round(clock.peak_bytes / 2**30, 2) if cuda else None,
        "trainable_parameters": manifest["trainable_parameters"],
        "total_parameters": manifest["total_parameters"],
        "first_loss": manifest["losses"][0][1] if manifest["losses"] else None,
        "last_loss": manifest["losses"][-1][1] if manifest["losses"] else None,
        "run_seconds": round(wall, 1),  # load, train, merge and save
    }


def evaluate(model: str, model_args: str, task: str, docs: int, batch_size: int, device: str) -> dict:
    """lmms-eval in this process on ``docs`` documents of ``task``; seconds and documents per second."""
    from lmms_eval import evaluator
    from lmms_eval.tasks import TaskManager

    import forgetbench

    manager = TaskManager(include_path=str(forgetbench.tasks_path()), include_defaults=False)
    start = time.perf_counter()
    result = evaluator.simple_evaluate(model=model, model_args=model_args, tasks=[task], batch_size=batch_size,
                                       limit=docs, task_manager=manager, device=device)
    seconds = time.perf_counter() - start
    if not result or task not in result.get("results", {}):
        raise RuntimeError(f"lmms-eval --model {model} returned no results for {task}")
    scores = {k: v for k, v in result["results"][task].items() if k.endswith(",none") and "stderr" not in k}
    evaluated = result["n-samples"][task]["effective"]
    return {"task": task, "documents": evaluated, "seconds": round(seconds, 2),
            "documents_per_second": round(evaluated / seconds, 2), "scores": scores}


def one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:300]


def run(args: argparse.Namespace) -> dict:
    import torch

    from forgetbench.lab.families import build_family

    cuda = torch.cuda.is_available() and not args.tiny
    device = "cuda" if cuda else "cpu"
    report: dict = {
        "device": torch.cuda.get_device_name(0) if cuda else "cpu (--tiny)",
        "size": "tiny" if args.tiny else "real",
        "steps": args.steps,
        "dataset": DATASET,
        "versions": {name: _version(name) for name in ("torch", "transformers", "trl", "peft", "bitsandbytes",
                                                       "lmms_eval", "vllm")},
        "families": {},
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-smoke-", dir=args.workdir) as tmp:
        for family, folder in FAMILIES.items():
            entry = report["families"][family] = {"config": f"recipes/configs/{folder}", "size": report["size"]}
            t0 = time.perf_counter()
            base = build_family(family, Path(tmp) / family, size="tiny" if args.tiny else "real",
                                device=device, dtype=None if args.tiny else torch.bfloat16)
            entry["build_seconds"] = round(time.perf_counter() - t0, 1)
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
            entry["train"] = {}
            for method in args.methods:
                try:
                    entry["train"][method] = train(family, method, base, Path(tmp) / f"{family}-{method}",
                                                   args.steps, args.tiny)
                except Exception as exc:  # one method's failure is reported; the others still run
                    entry["train"][method] = {"error": one_line(exc)}
                gc.collect()
                if cuda:
                    torch.cuda.empty_cache()
            checkpoint = Path(tmp) / f"{family}-{EVAL_METHOD}"
            entry["evaluate"] = {}
            if not (checkpoint / "forgetbench_manifest.json").is_file():
                entry["evaluate"]["skipped"] = f"no {EVAL_METHOD} checkpoint to evaluate"
                continue
            dtype = "float32" if args.tiny else "bfloat16"
            for kind, task in TASKS.items():
                try:
                    entry["evaluate"][f"forgetbench_{kind}"] = evaluate(
                        "forgetbench", f"pretrained={checkpoint},dtype={dtype}", task, args.eval_docs,
                        args.eval_batch_size, device)
                except Exception as exc:
                    entry["evaluate"][f"forgetbench_{kind}"] = {"error": one_line(exc)}
            entry["evaluate"]["vllm_generation"] = _vllm(checkpoint, args, device)
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    return report


def _vllm(checkpoint: Path, args: argparse.Namespace, device: str) -> dict:
    if args.tiny:
        return {"skipped": "--tiny (vLLM needs a GPU)"}
    try:
        import vllm  # noqa: F401
    except Exception as exc:  # not installed, or installed for another torch
        return {"skipped": f"vllm does not import ({one_line(exc)})"}
    try:
        return evaluate("vllm", f"model={checkpoint},gpu_memory_utilization=0.4,max_model_len=4096",
                        TASKS["generation"], args.eval_docs, args.eval_batch_size, device)
    except Exception as exc:
        return {"error": one_line(exc)}


def _version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name.replace("_", "-"))
    except metadata.PackageNotFoundError:
        return None


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=None, help="training steps per method (default 20; --tiny 3)")
    parser.add_argument("--eval-docs", type=int, default=None, help="documents per evaluation (default 64; --tiny 4)")
    parser.add_argument("--eval-batch-size", type=int, default=16, help="--model forgetbench batch size")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of {', '.join(METHODS)}")
    parser.add_argument("--workdir", default=None, help="where the temporary checkpoints go (default: the system's)")
    parser.add_argument("--tiny", action="store_true",
                        help="the tiny families on a CPU, for testing this script without a GPU")
    args = parser.parse_args(argv)
    args.steps = args.steps or (3 if args.tiny else 20)
    args.eval_docs = args.eval_docs or (4 if args.tiny else 64)
    args.methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        parser.error(f"--methods: unknown {', '.join(unknown)}; known: {', '.join(METHODS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded: the models are built here
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    if not args.tiny and not torch.cuda.is_available():
        print(f"{PROG}: error: no CUDA GPU here (torch {torch.__version__}: torch.cuda.is_available() is False); "
              "run it on a GPU machine, or with --tiny to exercise it on the tiny families on a CPU", file=sys.stderr)
        return 2
    if args.tiny:
        torch.set_num_threads(1)
    with contextlib.redirect_stdout(sys.stderr):  # libraries' prints go to stderr: stdout is the JSON only
        report = run(args)
    print(json.dumps(report, indent=2))
    failed = [f"{family} {step}" for family, entry in report["families"].items()
              for group in ("train", "evaluate") for step, result in entry.get(group, {}).items()
              if isinstance(result, dict) and "error" in result]
    if failed:
        print(f"{PROG}: error: failed: {', '.join(failed)} (see the JSON)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
