"""Training rows: a registered task's train split asked with its evaluation prompt, or a dataset already in TRL's
vision-language format."""

from __future__ import annotations

from pathlib import Path


def load_sft_dataset(name: str, split: str = "train", config: str | None = None, data_files: str | None = None):
    """Training rows in TRL's vision-language format (``images`` + ``messages``).

    ``name`` is a registered forgetbench task (its train split, asked with the very prompt its evaluation uses: any
    task of :data:`forgetbench.suite.TASKS`, the lab's included), a folder written by ``datasets.save_to_disk``, or
    a hub dataset id already in that format. ``data_files`` points a registered task at a local copy of its split.
    """
    import datasets

    from forgetbench import suite

    lab = name.startswith(suite.lab.PREFIX)
    if data_files is not None and (lab or name not in suite.TASKS):  # the lab ships its own data
        raise ValueError(f"--data_files is for forgetbench suite tasks; {name!r} is not one")
    if name in suite.TASKS:
        return suite.train_conversations(name, split, data_files=data_files)
    if lab:
        known = [task for task in suite.TASKS if task.startswith(suite.lab.PREFIX)]
        raise ValueError(f"{name!r} is not a lab task; known: {', '.join(known)}")
    if Path(name).is_dir():
        loaded = datasets.load_from_disk(name)
        return loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
    return datasets.load_dataset(name, config, split=split)
