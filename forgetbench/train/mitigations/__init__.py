"""Mitigations of forgetting: a small registry of switches every recipe takes, and post-hoc steps on finished
checkpoints (docs/mitigations.md).

The registry: every module of this package that defines ``MITIGATION`` (an
:class:`~forgetbench.train.mitigations.entry.Entry`) is one mitigation, found by :func:`entries` without a list to
edit. An entry declares its flags, its checks, how it changes the run (replay mixes rows into the data, the anchor
substitutes the trainer class, WiSE-FT writes checkpoints after saving), its part of the manifest and the extra
checkpoints ("points") it leaves. The recipe asks the registry through a :class:`Plan` and names no mitigation.

- :mod:`~forgetbench.train.mitigations.replay`: ``--replay_tasks a,b --replay_ratio R``;
- :mod:`~forgetbench.train.mitigations.anchor`: ``--kl_weight W`` (LwF-style KL to the base) and ``--l2sp_weight W``
  (L2-SP), :class:`Anchor`;
- :mod:`~forgetbench.train.mitigations.wise`: ``--wise_alphas a,b``, :func:`wise_ft`.

Post-hoc, on checkpoints already written: :func:`wise_ft` and :func:`merge_adapters`
(:mod:`~forgetbench.train.mitigations.merge`: PEFT's ``add_weighted_adapter``, TIES, DARE), also as commands
(:mod:`~forgetbench.train.mitigations.cli`: ``forgetbench {wise,merge}`` and
``python -m forgetbench.train.mitigations {wise,merge} ...``).

A new mitigation is one module here (its ``MITIGATION``) and its test, plus a line in docs/mitigations.md.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from forgetbench.checkpoint import read_manifest
from forgetbench.train.errors import RecipeError
from forgetbench.train.mitigations.anchor import Anchor, anchored_class, frozen_reference, transformers_model
from forgetbench.train.mitigations.cli import configure_merge, configure_wise, main, run_merge, run_wise
from forgetbench.train.mitigations.entry import Context, Entry, MitigationError, Option
from forgetbench.train.mitigations.merge import COMBINATIONS, WITH_DENSITY, merge_adapters
from forgetbench.train.mitigations.wise import interpolate, parse_alphas, wise_folder, wise_ft, write_wise_checkpoints

__all__ = ["COMBINATIONS", "WITH_DENSITY", "Anchor", "Context", "Entry", "MitigationError", "Option", "Plan",
           "anchored_class", "configure_merge", "configure_wise", "entries", "extra_points", "frozen_reference",
           "interpolate", "main", "merge_adapters", "option_fields", "parse_alphas", "plan_mitigations", "run_merge",
           "run_wise", "transformers_model", "wise_folder", "wise_ft", "write_wise_checkpoints"]


@functools.cache
def entries() -> tuple[Entry, ...]:
    """Every mitigation of this package (a module with ``MITIGATION``), in their ``order``. Imported by name at
    the first call, so no file lists them."""
    found = []
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            entry = getattr(importlib.import_module(f"{__name__}.{info.name}"), "MITIGATION", None)
            if isinstance(entry, Entry):
                found.append(entry)
    found.sort(key=lambda entry: (entry.order, entry.name))
    names = [entry.name for entry in found]
    options = [option.name for entry in found for option in entry.options]
    for kind, seen in (("name", names), ("option", options)):
        twice = sorted({item for item in seen if seen.count(item) > 1})
        if twice:  # a programming error in a new module, not a user's input
            raise TypeError(f"mitigation {kind} declared twice: {', '.join(twice)}")
    return tuple(found)


def option_fields() -> list[tuple[str, Any, Any]]:
    """The mitigations' flags as ``dataclasses.make_dataclass`` fields: ``ForgetbenchArguments`` gets them from
    here, so a new mitigation's flags need no edit of the recipe."""
    return [(option.name, option.type, field(default=option.default, metadata={"help": option.help}))
            for entry in entries() for option in entry.options]


@dataclass
class Plan:
    """What a recipe run was asked to do against forgetting: each entry's settings (None: off), checked; and what
    its steps recorded on the way (replay's rows per source)."""

    settings: dict[str, Any]
    records: dict[str, Any] = dataclasses.field(default_factory=dict)

    def active(self) -> list[tuple[Entry, Any]]:
        return [(entry, self.settings[entry.name]) for entry in entries() if self.settings.get(entry.name) is not None]

    def mix_data(self, rows, seed: int):
        """The training rows after every mitigation that changes them."""
        for entry, settings in self.active():
            if entry.mix_data is not None:
                rows, self.records[entry.name] = entry.mix_data(settings, rows, seed)
        return rows

    def trainer_class(self, base: type) -> tuple[type, dict]:
        """The trainer class (``base`` or a subclass of it) and the extra keyword arguments it is built with."""
        kwargs: dict = {}
        for entry, settings in self.active():
            if entry.trainer is not None:
                base, extra = entry.trainer(settings, base)
                kwargs |= extra
        return base, kwargs

    def manifest_entry(self, trainer=None) -> dict:
        """The manifest's ``mitigations``: every entry's keys, None for those that are off."""
        found: dict = {}
        for entry in entries():
            found |= entry.manifest(self.settings.get(entry.name), self.records.get(entry.name), trainer)
        return found

    def after_save(self, out_dir: Path, base_path: str) -> list[Path]:
        """Every entry's extra checkpoints, written after the run's own (and an earlier run's cleared)."""
        from safetensors import SafetensorError  # what safetensors raises for a full disk

        from forgetbench.train.checks import unwritten

        written: list[Path] = []
        for entry in entries():
            if entry.after_save is None:
                continue
            try:
                written += entry.after_save(self.settings.get(entry.name), out_dir, base_path)
            except (OSError, SafetensorError) as exc:
                raise RecipeError(unwritten(out_dir, exc, f"the checkpoint is saved, its {entry.label or entry.name} "
                                                          "checkpoints are not")) from None
        return written


def plan_mitigations(args, method, dataset_name: str | None) -> Plan:
    """The mitigations ``args`` (:class:`~forgetbench.train.recipe.ForgetbenchArguments`) ask for, for ``method``
    (a :class:`~forgetbench.train.methods.Method`) trained on ``dataset_name``; a bad value raises
    :class:`MitigationError` naming the flag, before anything is loaded."""
    context = Context(method, dataset_name)
    return Plan({entry.name: entry.check(args, context) for entry in entries()})


def extra_points(checkpoint_dir: Path) -> list[tuple[str, Path]]:
    """The extra evaluable checkpoints a finished recipe run wrote beside its own, as ``(suffix, folder)``, read from
    the run's manifest through the registry: ``[("wise-0.25", checkpoint_dir / "wise-0.25"), ...]``; empty for a
    folder without a manifest. An unreadable manifest, or one naming a folder outside ``checkpoint_dir``, raises
    :class:`MitigationError`."""
    checkpoint_dir = Path(checkpoint_dir)
    try:
        manifest = read_manifest(checkpoint_dir) or {}
    except (OSError, ValueError) as exc:
        raise MitigationError(f"{checkpoint_dir}: cannot read its manifest ({exc})") from None
    mitigations = manifest.get("mitigations") or {}
    found = []
    for entry in entries():
        for name in entry.points(mitigations) if entry.points is not None else ():
            if not isinstance(name, str) or name in ("", ".", "..") or Path(name).name != name:
                raise MitigationError(f"{checkpoint_dir}: its manifest names {name!r} as a {entry.label or entry.name} "
                                      "checkpoint, not a folder inside it")
            found.append((name, checkpoint_dir / name))
    return found
