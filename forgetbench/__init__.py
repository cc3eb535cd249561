"""forgetbench: what a multimodal-LLM fine-tune gained (E) and what it cost (F)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__version__ = "0.1.0"


def tasks_path() -> Path:
    """Folder of the lmms-eval task YAMLs (the repository's ``tasks/``, installed as ``forgetbench.tasks``)."""
    return Path(str(resources.files("forgetbench.tasks")))


def recipes_path() -> Path:
    """Folder of the TRL recipes (the repository's ``recipes/``, installed as ``forgetbench.recipes``)."""
    return Path(str(resources.files("forgetbench.recipes")))
