"""A recipe with the tests' fault-injection callbacks, run as a script like ``recipes/<method>.py``:

    python tests/helpers/hooked_recipe.py lora [--nan-at-step N] [--save-rank-state] [--cpu-fsdp] RECIPE_ARGS...

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


def allow_fsdp_on_cpu() -> None:
    """Let accelerate honour an FSDP launch on CPU (gloo), which it otherwise turns into plain DDP without a word.

    accelerate 1.15's ``AcceleratorState`` switches to ``DistributedType.FSDP`` only inside the branch for GPU-like
    devices (MULTI_GPU, MULTI_XPU, ...); a CPU process group is MULTI_CPU and the FSDP plugin is dropped, so
    ``accelerate launch`` with an FSDP config trains with DDP. torch itself shards on CPU/gloo (FSDP1 and FSDP2's
    ``fully_shard`` both run), so this does, after accelerate's own set-up, the one step that branch would have
    done: the distributed type becomes FSDP and the plugin is kept. Everything after (wrapping, sharded training,
    the Trainer's gathering save) is accelerate's and torch's own code."""
    import os

    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    original = AcceleratorState.__init__

    def init(self, *args, fsdp_plugin=None, **kwargs):
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if (self.distributed_type == DistributedType.MULTI_CPU and fsdp_plugin is not None
                and os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"):
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin
            # Every later AcceleratorState() copies PartialState's shared fields over its own, which would turn
            # the type back to MULTI_CPU halfway through training (seen: the Trainer's save then took the
            # unsharded path and got DTensors): the process-wide state says FSDP too.
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    AcceleratorState.__init__ = init


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
    if "--cpu-fsdp" in rest:
        rest.remove("--cpu-fsdp")
        allow_fsdp_on_cpu()
    recipe_main(method, rest, callbacks=callbacks)


if __name__ == "__main__":
    main(sys.argv[1:])
