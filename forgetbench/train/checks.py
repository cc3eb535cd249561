"""A recipe's input checked before any model loads: the config file, every value's type and range, the model's
config (architecture, layer count), with one-line refusals (:class:`~forgetbench.train.errors.RecipeError`).

What is checked and why is in docs/faults.md. Warnings the libraries raise while this runs are held back
(:class:`HeldWarnings`), so a refused run prints its one line only.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import math
import os
import re
import warnings
from pathlib import Path

from forgetbench.checkpoint import manifest_path
from forgetbench.errors import one_line
from forgetbench.train.errors import RecipeError

CONFIG_ONLY_KEYS = ("env",)  # TRL's own config key: environment variables to set
# What a recipe writes into its output_dir before the manifest (an interrupted run leaves them): the Trainer's
# checkpoint-N folders, the probe's log, TensorBoard's runs/ (report_to tensorboard) and the model card TRL writes at
# every checkpoint save (README.md, known by its template's sentence). The manifest itself marks a finished run's
# folder as a recipe's.
OWN_FILES = ("forgetting_probe.jsonl", "runs")
OWN_FOLDER = re.compile(r"checkpoint-\d+")
TRL_MODEL_CARD = "It has been trained using [TRL](https://github.com/huggingface/trl)."


def unwritten(out_dir: Path, exc: BaseException, outcome: str) -> str:
    """The one line for a failed save: the folder, the file that failed (an OSError names it), why, and what is
    left."""
    name = Path(exc.filename).name if getattr(exc, "filename", None) else None
    why = getattr(exc, "strerror", None) or one_line(exc)
    return f"--output_dir {out_dir}: cannot write {name + ' ' if name else ''}({why}); {outcome}"


class _Keep(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class HeldWarnings:
    """Python warnings and log records raised while a run is parsed and checked, held back: a refused run prints
    its one line only (:meth:`drop`); a run that goes ahead shows them (:meth:`show`) before the model loads.
    Libraries whose loggers write to stderr themselves (transformers, datasets) are not held."""

    def __init__(self):
        self._keep = _Keep()
        self._catcher = warnings.catch_warnings(record=True)
        self._caught = self._catcher.__enter__()
        logging.getLogger().addHandler(self._keep)

    def _stop(self) -> bool:
        if self._catcher is None:
            return False
        logging.getLogger().removeHandler(self._keep)
        self._catcher.__exit__(None, None, None)
        self._catcher = None
        return True

    def drop(self) -> None:
        self._stop()

    def show(self) -> None:
        if not self._stop():
            return
        for item in self._caught:
            warnings.showwarning(item.message, item.category, item.filename, item.lineno, item.file, item.line)
        for record in self._keep.records:
            logging.getLogger(record.name).handle(record)


def parse_error(exc: Exception) -> str:
    """HfArgumentParser's and TrainingArguments' ValueErrors as one line; leftover options named as such."""
    import ast

    text = one_line(exc)
    prefix = "Some specified arguments are not used by the HfArgumentParser: "
    if text.startswith(prefix):
        try:
            left = ast.literal_eval(text[len(prefix):])
        except (ValueError, SyntaxError):
            return text
        return f"unrecognized arguments: {' '.join(map(str, left))} (see --help)"
    return text


def argparse_error(message: str):
    """Replaces ``ArgumentParser.error`` (usage, then the message): the message alone, as a RecipeError."""
    raise RecipeError(f"{message} (see --help)")


def _actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The option that sets each destination (the typed one, not a ``--no_X`` switch)."""
    found: dict[str, argparse.Action] = {}
    for action in parser._actions:
        if action.dest != "help" and (action.dest not in found or action.type is not None):
            found[action.dest] = action
    return found


def _nullable(parser: argparse.ArgumentParser) -> set[str]:
    """The options whose dataclass field admits None (``int | None``, ``Optional[str]``): ``null`` in a config is a
    value for them (``max_length: null``: never truncate), as the dataclass itself accepts it. HfArgumentParser
    strips the Optional from the argparse type, so the field's own annotation is read."""
    import dataclasses
    import typing

    found = set()
    for kind in getattr(parser, "dataclass_types", ()):
        hints = typing.get_type_hints(kind)
        for item in dataclasses.fields(kind):
            hint = hints.get(item.name)
            if hint is type(None) or type(None) in typing.get_args(hint):
                found.add(item.name)
    return found


def _type_problem(action: argparse.Action, value, nullable: bool = False) -> str | None:
    """Why a config value cannot set ``action``, or None. Strings go through the option's own conversion, as
    on the command line; other YAML values must already have the option's type; ``null`` only where the option
    admits None (``nullable``) or has no default."""
    kind = action.type
    # HfArgumentParser's conversions: int, float, string_to_bool (its own or a copy of it), str, choice lambdas.
    name = {"int": "an integer", "float": "a number", "string_to_bool": "true or false"}.get(
        getattr(kind, "__name__", ""), "a valid value")
    if value is None:
        return None if nullable or action.default is None else "null (it needs a value)"
    if isinstance(value, str) and callable(kind):
        try:
            value = kind(value)
        except (ValueError, TypeError, argparse.ArgumentTypeError):
            return f"{value!r} is not {name}"
    elif name == "an integer" and (isinstance(value, bool) or not isinstance(value, int)):
        return f"{value!r} is not an integer"
    elif name == "a number" and (isinstance(value, bool) or not isinstance(value, (int, float))):
        return f"{value!r} is not a number"
    elif name == "true or false" and not isinstance(value, bool):
        return f"{value!r} is not true or false"
    if action.choices is not None and action.nargs is None and value not in action.choices:
        return f"{value!r} is not one of {', '.join(map(str, action.choices))}"
    return None


def check_config_file(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """The ``--config`` YAML, before TRL reads it: readable, a mapping, every key an option, every value of the
    option's type. TRL itself raises a bare ValueError (with a traceback) for an unknown key and passes a
    mistyped non-string value through to fail later."""
    import yaml

    if "--config" not in argv:
        return
    at = argv.index("--config")
    if at + 1 >= len(argv):
        raise RecipeError("--config: needs a YAML file")
    file = argv[at + 1]
    label = f"--config {file}"
    try:
        text = Path(file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"{label}: cannot read ({getattr(exc, 'strerror', None) or one_line(exc)})") from None
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RecipeError(f"{label}: not valid YAML ({one_line(exc)})") from None
    if not isinstance(config, dict):
        raise RecipeError(f"{label}: not a YAML mapping of option: value")
    actions = _actions(parser)
    unknown = [key for key in config if key not in actions and key not in CONFIG_ONLY_KEYS]
    if unknown:
        hints = {key: difflib.get_close_matches(str(key), actions, n=1) for key in unknown}
        named = ", ".join(f"{key}" + (f" (did you mean {hints[key][0]}?)" if hints[key] else "") for key in unknown)
        raise RecipeError(f"{label}: unknown key{'s' if len(unknown) > 1 else ''} {named}: not an option of this "
                          f"recipe (see --help)")
    nullable = _nullable(parser)
    for key, value in config.items():
        problem = None if key in CONFIG_ONLY_KEYS else _type_problem(actions[key], value, key in nullable)
        if problem:
            raise RecipeError(f"{label}: {key}: {problem}")


def _finite(at_least: float, strictly: bool = False):
    def holds(value) -> bool:
        return math.isfinite(value) and (value > at_least if strictly else value >= at_least)
    return holds


# (arguments: 0 script, 1 training, 2 model, 3 forgetbench), option, holds, what it must be
RANGES = (
    (1, "learning_rate", _finite(0), "a finite number >= 0"),
    (1, "per_device_train_batch_size", lambda v: v >= 1, "at least 1"),
    (1, "gradient_accumulation_steps", lambda v: v >= 1, "at least 1"),
    (1, "max_steps", lambda v: v == -1 or v >= 1, "a positive number of steps, or -1 to train num_train_epochs"),
    (1, "warmup_steps", _finite(0), "a finite number >= 0 (steps, or below 1 a share of them)"),
    (1, "weight_decay", _finite(0), "a finite number >= 0"),
    (1, "max_grad_norm", _finite(0), "a finite number >= 0 (0: no clipping)"),
    (1, "adam_beta1", lambda v: 0 <= v < 1, "in [0, 1)"),
    (1, "adam_beta2", lambda v: 0 <= v < 1, "in [0, 1)"),
    (1, "adam_epsilon", _finite(0), "a finite number >= 0"),
    (1, "logging_steps", lambda v: v > 0, "positive"),
    (1, "save_steps", lambda v: v > 0, "positive"),
    (1, "seed", lambda v: 0 <= v < 2**32, "in [0, 2**32)"),
    (1, "dataloader_num_workers", lambda v: v >= 0, "at least 0"),
    (1, "max_length", lambda v: v >= 1, "at least 1 token"),
    (2, "lora_r", lambda v: v >= 1, "at least 1"),
    (2, "lora_alpha", _finite(0, strictly=True), "a finite number > 0"),
    (2, "lora_dropout", lambda v: 0 <= v < 1, "in [0, 1)"),
    (3, "top_k", lambda v: v >= 1, "at least 1"),
    (3, "num_virtual_tokens", lambda v: v >= 1, "at least 1"),
    (3, "max_train_samples", lambda v: v >= 1, "at least 1"),
)


def check_values(script_args, training_args, model_args, forgetbench_args) -> None:
    """Values no run can use (a negative learning rate, a batch of 0, ...), refused before anything loads."""
    arguments = (script_args, training_args, model_args, forgetbench_args)
    for option in ("dataset_name", "model_name_or_path"):
        holder = script_args if option == "dataset_name" else model_args
        if not getattr(holder, option, None):
            raise RecipeError(f"--{option}: not set (in the --config YAML or on the command line)")
    for index, option, holds, requirement in RANGES:
        value = getattr(arguments[index], option, None)
        if value is not None and not holds(value):
            raise RecipeError(f"--{option} {value}: must be {requirement}")
    if training_args.max_steps == -1 and not _finite(0, strictly=True)(training_args.num_train_epochs):
        raise RecipeError(f"--num_train_epochs {training_args.num_train_epochs}: must be a finite number > 0 "
                          "(or set --max_steps)")


def trusts_remote_code(training_args, model_args) -> bool:
    """Whether the user asked for a model's own Python code to run (``--trust_remote_code``: SFTConfig's in TRL
    1.16, ModelConfig's in earlier TRL); off unless asked, and recorded in the manifest."""
    return bool(getattr(training_args, "trust_remote_code", False) or getattr(model_args, "trust_remote_code", False))


def check_model_config(model_path: str, model_args, method, forgetbench_args, remote_code: bool = False):
    """The model's config (``AutoConfig``: a small JSON file, no weights) before the model loads: it exists, its
    architecture is one forgetbench maps into parts, and the method's layer choice fits its layer count.
    Returns the config."""
    from transformers import AutoConfig

    from forgetbench.train.architectures import ARCHITECTURES
    from forgetbench.train.methods import MethodError

    label = f"--model_name_or_path {model_args.model_name_or_path}"
    try:  # an explicit False: transformers would otherwise ask on a terminal whether to run the model's code
        config = AutoConfig.from_pretrained(model_path, trust_remote_code=remote_code)
    except (OSError, ValueError, KeyError) as exc:  # KeyError: a model_type this transformers does not know
        if "contains custom code" in str(exc):
            raise RecipeError(f"{label}: cannot load (it ships its own Python code, which runs only with "
                              "--trust_remote_code true; the manifest records it)") from None
        raise RecipeError(f"{label}: cannot load ({one_line(exc)})") from None
    folder = Path(model_path)
    if folder.is_dir() and not list(folder.glob("*.safetensors")) and (
            list(folder.glob("*.bin")) or list(folder.glob("*.pt")) or list(folder.glob("*.pth"))):
        raise RecipeError(f"{label}: cannot load (its weights are pickled .bin/.pt files; forgetbench loads "
                          "safetensors only: convert them, e.g. load and save_pretrained with transformers 5)")
    name = (getattr(config, "architectures", None) or [None])[0]
    if name not in ARCHITECTURES:
        raise RecipeError(f"{label}: architecture {name} has no forgetbench architecture map, so {method.name} "
                          f"cannot tell its parts apart (known: {', '.join(ARCHITECTURES)}; "
                          "forgetbench/train/architectures.py)")
    if method.layers is not None:
        layers = config.get_text_config().num_hidden_layers
        try:
            method.layers(layers, forgetbench_args.top_k)
        except MethodError as exc:
            raise RecipeError(str(exc)) from None
    return config


def local_model_path(name_or_path: str) -> str:
    """What ``from_pretrained`` takes for ``--model_name_or_path``: the lab alias resolved, and an existing local
    folder as an absolute path without symlinks (so the manifest names it from any working folder); a hub id as
    is."""
    from forgetbench.checkpoint import resolve_model

    path = resolve_model(name_or_path)
    return str(Path(path).resolve()) if os.path.exists(path) else path


def check_output_dir(output_dir: str, model_path: str, overwrite: bool) -> None:
    """``--output_dir`` before anything is written: a folder (or nothing yet), never the model folder it loads,
    inside it or holding it (the save would write over the model it is tuned from); and, unless
    ``--overwrite_output_dir``, holding only what a recipe writes (a finished run's folder, with its manifest, or an
    interrupted run's checkpoints)."""
    out, label = Path(output_dir), f"--output_dir {output_dir}"
    if out.exists() and not out.is_dir():
        raise RecipeError(f"{label}: a file, not a folder; name a new or empty folder")
    if os.path.exists(model_path):
        ours, theirs = Path(os.path.realpath(out)), Path(os.path.realpath(model_path))
        where = ("is the model folder" if ours == theirs else "is inside the model folder"
                 if ours.is_relative_to(theirs) else "holds the model folder" if theirs.is_relative_to(ours) else None)
        if where:
            raise RecipeError(f"{label}: {where} the run loads ({theirs}); the checkpoint would be written over the "
                              "model it is tuned from: name another folder")
    if overwrite or not out.is_dir() or manifest_path(out).is_file():
        return
    foreign = sorted(item.name for item in out.iterdir() if not _written_by_a_recipe(item))
    if foreign:
        named = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise RecipeError(f"{label}: holds files a recipe did not write ({named}); name a new or empty folder, or "
                          "pass --overwrite_output_dir true to write into it anyway")


def _written_by_a_recipe(item: Path) -> bool:
    if item.name in OWN_FILES or (item.is_dir() and OWN_FOLDER.fullmatch(item.name)):
        return True
    if item.name == "README.md" and item.is_file():
        with open(item, encoding="utf-8", errors="replace") as handle:
            return TRL_MODEL_CARD in handle.read(65536)
    return False

