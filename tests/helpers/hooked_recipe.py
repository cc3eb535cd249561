"""A recipe with the tests' fault-injection callbacks, run as a script like ``recipes/<method>.py``:

    python tests/helpers/hooked_recipe.py lora [--nan-at-step N] [--save-rank-state] RECIPE_ARGS...

Fault injection lives here, in the tests, not behind switches in forgetbench: the recipe takes extra
``TrainerCallback`` objects through :func:`forgetbench.train.recipe_main`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from transformers import TrainerCallback

from forgetbench.train import recipe_main


class InjectNaN(TrainerCallback):
    """Poisons a trainable weight before step ``step``, so that step's loss is NaN."""

    def __init__(self, step: int):
        self.step = step

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step + 1 == self.step:
            next(p for p in model.parameters() if p.requires_grad).data.fill_(float("nan"))


class SaveRankState(TrainerCallback):
    """Every rank writes its trainable weights to ``OUTPUT_DIR/rank<R>.pt`` at the end, to compare ranks."""

    def on_train_end(self, args, state, control, model=None, **kwargs):
        import torch.distributed as dist

        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        weights = {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}
        torch.save(weights, out / f"rank{rank}.pt")


def main(argv: list[str]) -> None:
    method, rest = argv[0], argv[1:]
    callbacks = []
    if "--nan-at-step" in rest:
        at = rest.index("--nan-at-step")
        callbacks.append(InjectNaN(int(rest[at + 1])))
        del rest[at : at + 2]
    if "--save-rank-state" in rest:
        rest.remove("--save-rank-state")
        callbacks.append(SaveRankState())
    recipe_main(method, rest, callbacks=callbacks)


if __name__ == "__main__":
    main(sys.argv[1:])
