"""What one mitigation declares to the registry (:mod:`forgetbench.train.mitigations`): an :class:`Entry`.

A module of this package that defines ``MITIGATION = Entry(...)`` is a mitigation; the registry finds it by itself.
Its options become recipe flags (fields of :class:`~forgetbench.train.recipe.ForgetbenchArguments`), and the recipe
calls its hooks at fixed points of a run: ``check`` before any model loads, ``mix_data`` on the training rows,
``trainer`` when the trainer is built, ``manifest`` when the manifest is written and ``after_save`` once the
checkpoint is saved; ``points`` tells the study which extra checkpoints a finished run holds.

This module imports nothing of its siblings: every entry module imports it, and the registry imports them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forgetbench.train.errors import RecipeError


class MitigationError(RecipeError):
    """Bad input to a mitigation; printed as one line (exit status 2)."""


@dataclass(frozen=True)
class Option:
    """A recipe flag of a mitigation: ``--<name>``, a field of ``ForgetbenchArguments``."""

    name: str
    type: Any  # the field's type, as HfArgumentParser reads it: float | None, str | None, ...
    help: str
    default: Any = None  # None: the mitigation is off unless the flag is given


@dataclass(frozen=True)
class Context:
    """What a mitigation's ``check`` may look at beside the flags: the run's method (a
    :class:`~forgetbench.train.methods.Method`) and its training task."""

    method: Any
    dataset_name: str | None


@dataclass(frozen=True)
class Entry:
    """One mitigation. Every hook takes the settings ``check`` returned; only ``manifest`` and ``after_save`` are
    also called when the mitigation is off (settings None), to write its ``null`` and to clear an earlier run's."""

    name: str
    order: int  # hooks run, and manifest keys appear, in this order among the entries
    options: tuple[Option, ...]
    # (ForgetbenchArguments, Context) -> settings, None when off. Raises MitigationError naming the flag. Runs
    # before any model loads.
    check: Callable[[Any, Context], Any]
    # (settings or None, what mix_data returned or None, the trainer after training) -> this entry's keys of the
    # manifest's "mitigations" (each None when off).
    manifest: Callable[[Any, Any, Any], dict]
    # (settings, training rows, seed) -> (rows to train on, a record for the manifest). Runs before any model loads.
    mix_data: Callable[[Any, Any, int], tuple[Any, Any]] | None = None
    # (settings, trainer class) -> (a subclass of it, keyword arguments for its constructor).
    trainer: Callable[[Any, type], tuple[type, dict]] | None = None
    # (settings or None, output_dir, base model path) -> extra checkpoints written; on the main process, after the
    # checkpoint is saved. An OSError becomes one line saying the checkpoint is saved and these are not.
    after_save: Callable[[Any, Path, str], list[Path]] | None = None
    # (the manifest's "mitigations") -> folder names, inside the output_dir, of the extra evaluable checkpoints.
    points: Callable[[dict], list[str]] | None = None
    label: str = ""  # how one-line messages name it ("WiSE-FT"); the name when empty

    def __post_init__(self):
        for option in self.options:
            if option.name.startswith("-") or not option.name.isidentifier():
                raise ValueError(f"mitigation {self.name}: option {option.name!r} is not a field name")
