"""What the post-hoc mitigations (WiSE-FT, merging) share: loading a model folder, and a checkpoint's processor
files copied into the one they write."""

from __future__ import annotations

import shutil
from pathlib import Path

from forgetbench.checkpoint import MANIFEST_NAME
from forgetbench.train.mitigations.entry import MitigationError

# Files save_pretrained writes for the weights themselves; a checkpoint's other top-level files are its processor's.
MODEL_FILES = ("config.json", "generation_config.json", MANIFEST_NAME)


def load(path: str):
    from transformers import AutoModelForImageTextToText

    try:
        return AutoModelForImageTextToText.from_pretrained(path, dtype="auto")
    except OSError as exc:
        raise MitigationError(f"{path}: cannot load a model ({exc})") from None


def copy_processor_files(source: Path, target: Path) -> None:
    """A checkpoint's top-level files other than the weights, their config and the manifest: the processor's."""
    for item in source.iterdir():
        if item.is_file() and item.name not in MODEL_FILES and not item.name.endswith(
                (".safetensors", ".safetensors.index.json", ".bin")):
            shutil.copy2(item, target / item.name)
