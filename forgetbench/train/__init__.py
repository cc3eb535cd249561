"""The training part: one TRL SFT recipe per tuning method (``recipes/<method>.py``), the one table of methods
(:mod:`~forgetbench.train.methods`), the one map of architectures to their parts
(:mod:`~forgetbench.train.architectures`), the registry of mitigations of forgetting
(:mod:`~forgetbench.train.mitigations`), and the checkpoint a recipe writes. :func:`extra_points` lists the extra
evaluable checkpoints (WiSE-FT's) a finished run wrote beside its own.

Imports the task registry (:mod:`forgetbench.suite`) and :mod:`forgetbench.checkpoint`; never the evaluation or
comparison parts. Heavy libraries (torch, transformers, TRL, PEFT) load inside functions, so importing this package
is cheap.
"""

from __future__ import annotations

import sys
from pathlib import Path

from forgetbench import recipes_path
from forgetbench.train.errors import RecipeError, TrainingDiverged
from forgetbench.train.mitigations import extra_points
from forgetbench.train.recipe import ForgetbenchArguments, recipe_main, run_recipe

__all__ = ["ForgetbenchArguments", "RecipeError", "TrainingDiverged", "extra_points", "launch_command", "recipe_main",
           "run_recipe"]


def launch_command(recipe: str, config: str | Path, overrides: list[str] = (), num_processes: int = 1,
                   accelerate_config: str | Path | None = None) -> list[str]:
    """The ``accelerate launch recipes/<recipe>.py --config CONFIG ...`` command that trains one arm, as a user
    would type it; a run of it is a fresh process per rank, as TRL's scripts are run."""
    script = recipes_path() / f"{recipe}.py"
    if not script.is_file():
        raise RecipeError(f"--recipe {recipe}: no such recipe ({script})")
    # --quiet: a failed recipe has already said why in one line; accelerate would add its CalledProcessError
    # traceback (it exits 1 instead).
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--quiet"]
    if accelerate_config is not None:
        launcher += ["--config_file", str(accelerate_config)]
    else:
        launcher += ["--num_processes", str(num_processes), "--num_machines", "1", "--mixed_precision", "no",
                     "--dynamo_backend", "no"]
    return [*launcher, str(script), "--config", str(config), *overrides]
