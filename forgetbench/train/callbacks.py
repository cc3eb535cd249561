"""Trainer callbacks every recipe installs."""

from __future__ import annotations

import math

from transformers import TrainerCallback


class DivergenceGuard(TrainerCallback):
    """Stops training at the first non-finite loss or gradient norm (checked at every log, so within one logging
    step) and never lets a checkpoint with non-finite weights be written: the last checkpoint on disk stays the
    last good one. ``diverged`` says what went wrong, or is None."""

    def __init__(self):
        self.diverged: str | None = None

    def _stop(self, state, control, what: str):
        first = self.diverged is None or self.diverged.startswith(f"step {state.global_step}:")
        if first:  # every symptom of the first bad step, in one line
            self.diverged = f"{self.diverged}, {what}" if self.diverged else f"step {state.global_step}: {what}"
        control.should_training_stop = True
        control.should_save = False

    def on_log(self, args, state, control, logs=None, **kwargs):
        bad = [f"{k} {logs[k]}" for k in ("loss", "grad_norm")
               if isinstance(logs.get(k), (int, float)) and not math.isfinite(logs[k])]
        if bad:
            self._stop(state, control, ", ".join(bad))

    def on_step_end(self, args, state, control, model=None, **kwargs):
        # A save can fall between two logs: check the weights it would write.
        if control.should_save and model is not None:
            import torch

            if not all(torch.isfinite(p).all() for p in model.parameters() if p.requires_grad):
                self._stop(state, control, "non-finite trainable weights")
