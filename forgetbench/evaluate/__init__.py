"""The evaluation part: forgetbench inside lmms-eval. ``--model forgetbench`` (:mod:`~forgetbench.evaluate.model`),
the entry point that adds forgetbench's task folder to every lmms-eval ``TaskManager``
(:mod:`~forgetbench.evaluate.plugin`), and the command that evaluates a checkpoint with the stock ``lmms-eval``
CLI, for the study.

Imports :mod:`forgetbench.checkpoint` only; never the training or comparison parts. lmms-eval and torch load
inside the modules that need them, not on ``import forgetbench.evaluate``.
"""

from __future__ import annotations

import sys
from pathlib import Path


class EvaluationError(Exception):
    """An evaluation did not produce results; printed as one line."""


def lmms_eval_command(model: str, tasks: str, output_path: str | Path, *, wrapper: str = "forgetbench",
                      device: str = "cpu", batch_size: int = 8, limit: int | None = None,
                      num_processes: int = 1) -> list[str]:
    """The stock ``lmms-eval`` command that evaluates ``model`` (a folder or hub id) on ``tasks`` (comma-separated)
    and logs every sample into ``output_path``; with ``num_processes`` > 1, data-parallel under ``accelerate
    launch`` (lmms-eval shards the documents by rank; on CPU, ``--multi_gpu`` is what starts several processes).

    >>> lmms_eval_command("m", "a,b", "out", limit=4)[3:7]
    ['--model', 'forgetbench', '--model_args', 'pretrained=m,device=cpu']
    >>> lmms_eval_command("m", "a", "out", wrapper="llava_hf", num_processes=2)[1:6]
    ['-m', 'accelerate.commands.launch', '--multi_gpu', '--num_processes', '2']
    """
    model_args = f"pretrained={model},device={device}" + (f",device_map={device}" if wrapper == "llava_hf" else "")
    launcher = [sys.executable, "-m", "lmms_eval"]
    if num_processes > 1:
        launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                    str(num_processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                    "-m", "lmms_eval"]
    command = [*launcher, "--model", wrapper, "--model_args", model_args, "--tasks", tasks,
               "--batch_size", str(batch_size), "--log_samples", "--output_path", str(output_path)]
    return command + (["--limit", str(limit)] if limit is not None else [])


def results_file(output_path: str | Path) -> Path:
    """The ``*_results.json`` an evaluation wrote. lmms-eval exits 0 even when evaluation failed, so this file is
    the only proof that it ran; without exactly one, :class:`EvaluationError`."""
    output_path = Path(output_path)
    found = sorted(output_path.glob("*_results.json")) + sorted(output_path.glob("*/*_results.json"))
    if len(found) != 1:
        raise EvaluationError(f"{output_path}: lmms-eval wrote {len(found)} results files, expected 1")
    return found[0]
