"""The evaluation part: forgetbench inside lmms-eval. ``--model forgetbench`` (:mod:`~forgetbench.evaluate.model`),
the entry point that adds forgetbench's task folder to every lmms-eval ``TaskManager``
(:mod:`~forgetbench.evaluate.plugin`), and the command that evaluates a checkpoint with the stock ``lmms-eval``
CLI, for the study.

Imports :mod:`forgetbench.checkpoint` only; never the training or comparison parts. lmms-eval and torch load
inside the modules that need them, not on ``import forgetbench.evaluate``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from forgetbench.errors import ForgetbenchError

# The study's evaluation backends: forgetbench's own wrapper (batched, prefix-cached closed-set scoring, every
# task kind) or lmms-eval's own vLLM wrapper (``--model vllm``; generation only: lmms-eval 0.7.3's
# ``models/chat/vllm.py`` asserts in ``loglikelihood``, so closed-set tasks cannot run on it).
BACKENDS = ("forgetbench", "vllm")
# lmms-eval 0.7.3's VLLM defaults (models/chat/vllm.py), written out so the command says what ran.
VLLM_DEFAULTS = {"tensor_parallel_size": 1, "gpu_memory_utilization": 0.8}


class EvaluationError(ForgetbenchError):
    """An evaluation did not produce results; printed as one line."""


def vllm_missing() -> str | None:
    """Why ``--eval-backend vllm`` cannot run here (vllm does not import), or None. The import is real, not a
    look-up of the package's name: a vllm that is installed but broken (a torch it was not built for) is as
    unusable as none."""
    try:
        import vllm  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any failure to import means the backend cannot run; shown in full
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return None


def model_args(model: str, wrapper: str, device: str, backend_args: dict | None = None) -> str:
    """``--model_args`` for a wrapper. vLLM names the checkpoint ``model=`` (not ``pretrained=``) and takes no
    ``device=`` (an unknown argument is passed on to ``vllm.LLM``, which would refuse it); the rest of
    :data:`VLLM_DEFAULTS` is overridden by ``backend_args``.

    >>> model_args("/ckpt", "forgetbench", "cpu")
    'pretrained=/ckpt,device=cpu'
    >>> model_args("/ckpt", "vllm", "cuda", {"tensor_parallel_size": 2})
    'model=/ckpt,tensor_parallel_size=2,gpu_memory_utilization=0.8'
    """
    if wrapper == "vllm":
        args = {**VLLM_DEFAULTS, **(backend_args or {})}
        return ",".join([f"model={model}"] + [f"{k}={v}" for k, v in args.items()])
    return f"pretrained={model},device={device}" + (f",device_map={device}" if wrapper == "llava_hf" else "")


def lmms_eval_command(model: str, tasks: str, output_path: str | Path, *, wrapper: str = "forgetbench",
                      device: str = "cpu", batch_size: int = 8, limit: int | None = None,
                      num_processes: int = 1, backend_args: dict | None = None) -> list[str]:
    """The stock ``lmms-eval`` command that evaluates ``model`` (a folder or hub id) on ``tasks`` (comma-separated)
    and logs every sample into ``output_path``; with ``num_processes`` > 1, data-parallel under ``accelerate
    launch`` (lmms-eval shards the documents by rank; on CPU, ``--multi_gpu`` is what starts several processes).
    ``wrapper`` is lmms-eval's ``--model`` (``forgetbench``, ``vllm``, ``llava_hf``); ``backend_args``: vLLM's
    ``tensor_parallel_size`` and ``gpu_memory_utilization``.

    >>> lmms_eval_command("m", "a,b", "out", limit=4)[3:7]
    ['--model', 'forgetbench', '--model_args', 'pretrained=m,device=cpu']
    >>> lmms_eval_command("m", "a", "out", wrapper="llava_hf", num_processes=2)[1:6]
    ['-m', 'accelerate.commands.launch', '--multi_gpu', '--num_processes', '2']
    >>> lmms_eval_command("m", "a", "out", wrapper="vllm", batch_size=16)[3:9]
    ['--model', 'vllm', '--model_args', 'model=m,tensor_parallel_size=1,gpu_memory_utilization=0.8', '--tasks', 'a']
    """
    launcher = [sys.executable, "-m", "lmms_eval"]
    if num_processes > 1:
        launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                    str(num_processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                    "-m", "lmms_eval"]
    command = [*launcher, "--model", wrapper, "--model_args", model_args(model, wrapper, device, backend_args),
               "--tasks", tasks, "--batch_size", str(batch_size), "--log_samples", "--output_path", str(output_path)]
    return command + (["--limit", str(limit)] if limit is not None else [])


def throughput(output_path: str | Path, wall_seconds: float | None) -> dict:
    """How many samples an evaluation scored and how fast, from its results.json: ``n-samples`` (``effective``:
    the documents scored after ``--limit``) per task, their sum, and samples per second by two clocks, named for
    what each one timed:

    - ``wall_seconds``: the caller's clock around the whole ``lmms-eval`` process (interpreter start, imports,
      task indexing, model and data loading, scoring, writing the outputs);
    - ``lmms_eval_seconds``: lmms-eval's own ``total_evaluation_time_seconds`` (its EvaluationTracker: from after
      the task index is built to the writing of results; model and data loading included), when recorded.

    Per task there is a count but no time: lmms-eval batches the requests of all tasks together, so no clock
    separates one task from another."""
    results = json.loads(results_file(output_path).read_text())
    counts = {}
    for task, n in sorted((results.get("n-samples") or {}).items()):
        effective = n.get("effective") if isinstance(n, dict) else n
        if isinstance(effective, (int, float)) and not isinstance(effective, bool):
            counts[task] = int(effective)
    samples = sum(counts.values())
    recorded = results.get("total_evaluation_time_seconds")
    try:
        own = float(recorded) if recorded is not None else None
    except (TypeError, ValueError):  # lmms-eval writes it as a string; anything else is not a time
        own = None

    def rate(seconds):
        return round(samples / seconds, 3) if seconds else None

    return {"backend": (results.get("config") or {}).get("model"), "samples": samples, "by_task": counts,
            "wall_seconds": round(wall_seconds, 3) if wall_seconds is not None else None,
            "samples_per_second": rate(wall_seconds),
            "lmms_eval_seconds": round(own, 3) if own is not None else None,
            "lmms_eval_samples_per_second": rate(own)}


def results_file(output_path: str | Path) -> Path:
    """The ``*_results.json`` an evaluation wrote. lmms-eval exits 0 even when evaluation failed, so this file is
    the only proof that it ran; without exactly one, :class:`EvaluationError`."""
    output_path = Path(output_path)
    found = sorted(output_path.glob("*_results.json")) + sorted(output_path.glob("*/*_results.json"))
    if len(found) != 1:
        raise EvaluationError(f"{output_path}: lmms-eval wrote {len(found)} results files, expected 1")
    return found[0]
