"""The lab: a tiny offline LLaVA, its data and tiny models of every family (docs/lab.md)."""

from __future__ import annotations

from pathlib import Path


def general_replay_path() -> Path:
    """The lab's general replay set (``tasks/lab/data/general_replay.parquet``, TRL's vision format), for a recipe's
    ``--replay_data``: instruction rows about drawn images that no evaluated lab task asks (docs/lab.md)."""
    from forgetbench.lab.data import general_replay_path as path  # numpy and PIL load on use, not on import

    return path()
