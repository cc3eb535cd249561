"""Checkpoint and model identity: the one place that knows what a model name means and where a manifest lives.

Every part asks this module, never its own copy: the lab alias (``forgetbench-lab`` names the shipped lab base
model), resolving a name to what ``from_pretrained`` takes, deciding whether two names are the same model, and the
manifest a recipe writes beside its checkpoint. Light on purpose (no torch on import): compare uses it too.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
from importlib import resources
from pathlib import Path

MANIFEST_NAME = "forgetbench_manifest.json"
LAB_MODEL_ALIAS = "forgetbench-lab"


def lab_base_model_path() -> Path:
    """The pre-trained lab base model shipped inside the package (``forgetbench/lab/base_model``)."""
    return Path(str(resources.files("forgetbench.lab") / "base_model"))


def resolve_model(name_or_path: str) -> str:
    """What ``from_pretrained`` takes for a model name: the lab alias becomes the shipped folder, anything else
    (a folder or a hub id) is returned as is.

    >>> resolve_model("org/model")
    'org/model'
    >>> resolve_model(LAB_MODEL_ALIAS) == str(lab_base_model_path())
    True
    """
    return str(lab_base_model_path()) if name_or_path == LAB_MODEL_ALIAS else name_or_path


def same_model(a: str, b: str) -> bool:
    """Whether two model names denote the same model: the alias is resolved, existing paths compared as real paths.

    >>> same_model(LAB_MODEL_ALIAS, str(lab_base_model_path()))
    True
    >>> same_model("org/a", "org/b")
    False
    """

    def norm(name: str) -> str:
        name = resolve_model(name)
        return os.path.realpath(name) if os.path.exists(name) else name

    return norm(a) == norm(b)


def manifest_path(folder: str | Path) -> Path:
    return Path(folder) / MANIFEST_NAME


def read_manifest(folder: str | Path) -> dict | None:
    """The manifest of the checkpoint in ``folder`` as parsed JSON, or None when the folder has none.

    Raises OSError or ValueError (bad JSON) for a manifest that exists but cannot be read; callers name the input.
    """
    file = manifest_path(folder)
    if not file.is_file():
        return None
    with open(file, encoding="utf-8") as handle:
        return json.load(handle)


def manifest_bytes(manifest: dict) -> bytes:
    return (json.dumps(manifest, indent=2) + "\n").encode()


def write_model_folder(out_dir: str | Path, write) -> Path:
    """Write a checkpoint folder all-or-nothing: ``write(staging_dir)`` fills a sibling staging folder, whose
    items are then moved into ``out_dir``. A crash never leaves a folder that looks like a finished checkpoint:
    the manifest, written by ``write`` last, is only ever beside complete weights.
    """
    out_dir = Path(out_dir)
    staging = out_dir.parent / f".{out_dir.name}.saving"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        write(staging)
        out_dir.mkdir(parents=True, exist_ok=True)
        # An earlier manifest goes first: a move that fails half-way never leaves old proof beside new weights.
        manifest_path(out_dir).unlink(missing_ok=True)
        items = sorted(staging.iterdir(), key=lambda item: item.name == MANIFEST_NAME)  # the manifest moves last
        for item in items:
            target = out_dir / item.name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(item, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def save_model(model, processor, out_dir: str | Path, manifest: dict) -> Path:
    """Save a (plain, already merged) transformers model, its processor and its manifest, as safetensors."""

    def write(staging: Path) -> None:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        manifest_path(staging).write_bytes(manifest_bytes(manifest))

    return write_model_folder(out_dir, write)


def library_versions() -> dict[str, str]:
    """The versions a manifest records (provenance): Python and the training stack that is installed."""
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for package in ("forgetbench", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            continue
    return found
