"""Training rows: a registered task's train split asked with its evaluation prompt, or a dataset already in TRL's
vision-language format."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

# datasets.interleave_datasets' stopping rule for replay: every source is drawn until it has been seen whole at least
# once (an exhausted source starts over), so the target data is never cut short; see with_replay.
REPLAY_STOPPING = "all_exhausted"


def load_sft_dataset(name: str, split: str = "train", config: str | None = None, data_files: str | None = None,
                     on_bad_rows=None):
    """Training rows in TRL's vision-language format (``images`` + ``messages``).

    ``name`` is a registered forgetbench task (its train split, asked with the very prompt its evaluation uses: any
    task of :data:`forgetbench.suite.TASKS`, the lab's included), a folder written by ``datasets.save_to_disk``, or
    a hub dataset id already in that format. ``data_files`` points a registered task at a local copy of its split.

    Every image is read and converted to RGB (``forgetbench.suite.common.rgb``) before training: rows whose images
    cannot be read raise :class:`forgetbench.suite.images.UnreadableRows`, or with ``on_bad_rows`` (a callable
    taking it) are left out.
    """
    import datasets

    from forgetbench import suite

    lab = name.startswith(suite.lab.PREFIX)
    if data_files is not None and (lab or name not in suite.TASKS):  # the lab ships its own data
        raise ValueError(f"--data_files is for forgetbench suite tasks; {name!r} is not one")
    if name in suite.TASKS:
        return suite.train_conversations(name, split, data_files=data_files, on_bad_rows=on_bad_rows)
    if lab:
        known = [task for task in suite.TASKS if task.startswith(suite.lab.PREFIX)]
        raise ValueError(f"{name!r} is not a lab task; known: {', '.join(known)}")
    if Path(name).is_dir():
        loaded = datasets.load_from_disk(name)
        loaded = loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
    else:
        loaded = datasets.load_dataset(name, config, split=split)
    return _rgb_images(loaded, split, on_bad_rows)


def _rgb_images(dataset, split: str, on_bad_rows):
    """A dataset already in TRL's format: its ``images`` read and converted as a suite task's are."""
    from forgetbench.suite import images
    from forgetbench.suite.common import rgb

    if "images" not in dataset.column_names:
        return dataset

    def convert(row: dict) -> dict:
        return {"images": [rgb(image) for image in row["images"] or []]}

    return images.readable(dataset, convert, split, on_bad_rows).map(convert)


def with_replay(train, tasks: Sequence[str], ratio: float, seed: int):
    """``train`` with the train rows of the registered ``tasks`` mixed in (each asked with its own prompt,
    :func:`forgetbench.suite.train_conversations`): returns the mixed dataset and the rows each source brings,
    ``{"target": n, task: m, ...}``.

    ``datasets.interleave_datasets`` draws each row's source independently, seeded with ``seed``, with probabilities
    ``[1 - ratio, ratio / k, ...]`` for ``k`` tasks, and stops once every source has been seen whole (``all_exhausted``;
    an exhausted source starts over). So every target row is in the stream at least once, and each replay task
    brings a seeded sample of its expected share of one pass over the target, ``ceil(n * ratio / k / (1 - ratio))``
    rows (a task with fewer rows is cycled): the stream is about ``n / (1 - ratio)`` rows long, not the replay sets'
    size.
    """
    import datasets

    from forgetbench import suite

    share = math.ceil(len(train) * ratio / len(tasks) / (1 - ratio))
    sources, rows = [train], {"target": len(train)}
    for task in tasks:
        try:
            replay = suite.train_conversations(task, "train")
        except Exception as exc:  # datasets raises many kinds; name the task
            raise ValueError(f"{task}: cannot load its train split: {type(exc).__name__}: {exc}") from None
        replay = replay.shuffle(seed=seed).select(range(min(share, len(replay))))
        if replay.features != train.features:
            try:
                replay = replay.cast(train.features)
            except (ValueError, TypeError) as exc:
                raise ValueError(f"{task}: its rows do not fit the training rows' columns ({exc})") from None
        sources.append(replay)
        rows[task] = len(replay)
    probabilities = [1 - ratio] + [ratio / len(tasks)] * len(tasks)
    mixed = datasets.interleave_datasets(sources, probabilities=probabilities, seed=seed,
                                         stopping_strategy=REPLAY_STOPPING)
    return mixed, rows
