"""The training part's errors, in a module of their own so that the recipe and the modules it calls (checks,
mitigations, probe) all import them without importing each other."""

from __future__ import annotations

from forgetbench.errors import ForgetbenchError


class RecipeError(ForgetbenchError):
    """Bad input or a failed run: the recipe prints it as one line and exits 2."""


class TrainingDiverged(RecipeError):
    """The loss, gradient norm or weights became NaN or infinite."""
