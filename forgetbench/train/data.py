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
                     on_bad_rows=None, tasks_dir: str | None = None):
    """Training rows in TRL's vision-language format (``images`` + ``messages``).

    ``name`` is a registered forgetbench task (its train split, asked with the very prompt its evaluation uses: any
    task of :data:`forgetbench.suite.TASKS`, the lab's included), a user task under ``tasks_dir`` (written by
    ``forgetbench task add``; read by :func:`forgetbench.suite.user_tasks.train_conversations`, with the prompt its
    evaluation uses), a folder written by ``datasets.save_to_disk``, or a hub dataset id already in that format.
    ``data_files`` points a registered task at a local copy of its split.

    Every image is read and converted to RGB (``forgetbench.suite.common.rgb``) before training: rows whose images
    cannot be read raise :class:`forgetbench.suite.images.UnreadableRows`, or with ``on_bad_rows`` (a callable
    taking it) are left out.
    """
    import datasets

    from forgetbench import suite
    from forgetbench.suite import user_tasks

    lab = name.startswith(suite.lab.PREFIX)
    if data_files is not None and (lab or name not in suite.TASKS):  # the lab and user tasks ship their own data
        raise ValueError(f"--data_files is for forgetbench suite tasks; {name!r} is not one")
    if name not in suite.TASKS and user_tasks.is_user_task(name, tasks_dir):
        return user_tasks.train_conversations(name, split, tasks_dir, on_bad_rows)
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


class ReplayDataError(ValueError):
    """``--replay_data`` cannot be replayed: the message says why (the flag and source are the caller's to add)."""


# --replay_data's kinds: a file's suffix -> the datasets builder that reads it.
REPLAY_FILES = {".parquet": "parquet", ".jsonl": "json", ".json": "json"}
REPLAY_DATA_KEY = "replay_data"  # its key among the rows per source (no task is named so: tasks carry a prefix)


def replay_data_source(value: str) -> tuple[str, str]:
    """``--replay_data`` as ``(source, kind)``: an existing folder (``save_to_disk``), parquet or JSONL file as an
    absolute path, or else a hub dataset id (``hub``). Raises ValueError for a path that does not exist (anything
    that is not ``name`` or ``org/name``) and for a file of another kind."""
    import re

    path = Path(value).expanduser()
    if path.is_dir():
        return str(path.resolve()), "save_to_disk"
    if path.is_file():
        kind = REPLAY_FILES.get(path.suffix.lower())
        if kind is None:
            raise ValueError(f"{value}: a file of unknown kind (give a .parquet or .jsonl file, a "
                             "datasets.save_to_disk folder, or a hub dataset id)")
        return str(path.resolve()), path.suffix.lower().lstrip(".")
    if path.suffix.lower() in REPLAY_FILES or not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", value) \
            or value.startswith((".", "~")):
        raise ValueError(f"{value}: no such file or folder")
    return value, "hub"


def _replay_part(part) -> dict:
    if isinstance(part, str):
        return {"type": "text", "text": part}
    if not isinstance(part, dict) or part.get("type") not in ("image", "text"):
        raise ValueError("a content part is not {'type': 'image'} or {'type': 'text', 'text': ...}")
    if part["type"] == "image":
        return {"type": "image"}
    if not isinstance(part.get("text"), str):
        raise ValueError("a text part without text")
    return {"type": "text", "text": part["text"]}


def _replay_messages(messages, n_images: int, where: str) -> list[dict]:
    """A row's messages checked (user and assistant turns, content a string or parts, one image part per image)
    and written as the lab and suite rows write them: content always a list of parts. A ValueError names ``where``
    and the problem."""
    try:
        if not isinstance(messages, list) or not messages:
            raise ValueError("messages is not a list of turns")
        turns = []
        for message in messages:
            if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant"):
                raise ValueError("a turn without a system, user or assistant role")
            content = message.get("content")
            if isinstance(content, str):
                parts = [_replay_part(content)]
            elif isinstance(content, list):
                parts = [_replay_part(part) for part in content]
            else:
                raise ValueError("a turn's content is neither text nor a list of parts")
            turns.append({"role": message["role"], "content": parts})
        roles = [turn["role"] for turn in turns]
        if "user" not in roles or "assistant" not in roles:
            raise ValueError("no user and assistant turns")
        shown = sum(part["type"] == "image" for turn in turns for part in turn["content"])
        if shown != n_images:
            raise ValueError(f"{shown} image part(s) in its messages for {n_images} image(s)")
    except ValueError as exc:
        raise ValueError(f"{where}: not in TRL's vision format ({exc})") from None
    return turns


def load_replay_data(source: str, kind: str):
    """``--replay_data``'s rows as they are stored (``images`` + ``messages``, TRL's vision format): a
    ``save_to_disk`` folder (its ``train`` split, or its only one), a parquet or JSONL file, or a hub dataset's
    ``train`` split. Raises :class:`ReplayDataError` naming what is wrong; datasets' own errors pass through."""
    import datasets

    from forgetbench.suite.images import quiet_progress

    with quiet_progress():
        if kind == "save_to_disk":
            loaded = datasets.load_from_disk(source)
            if isinstance(loaded, datasets.DatasetDict):
                names = list(loaded)
                if "train" not in loaded and len(names) != 1:
                    raise ReplayDataError(f"a DatasetDict with splits {', '.join(names)} and none named train")
                loaded = loaded["train" if "train" in loaded else names[0]]
        elif kind == "hub":
            loaded = datasets.load_dataset(source, split="train")
        else:
            loaded = datasets.load_dataset(REPLAY_FILES["." + kind], data_files=source, split="train")
    missing = [column for column in ("images", "messages") if column not in loaded.column_names]
    if missing:
        raise ReplayDataError(f"not in TRL's vision format (needs the columns images and messages; it has "
                              f"{', '.join(loaded.column_names) or 'none'})")
    if len(loaded) == 0:
        raise ReplayDataError("no rows")
    return loaded.select_columns(["images", "messages"])


def replay_rows(loaded, source: str, kind: str, rows: int, seed: int):
    """A seeded sample of ``rows`` rows of replay data from :func:`load_replay_data` (all of them, in a seeded
    order, when it holds fewer), checked and converted: messages as the training rows write them, images read and
    in RGB (a relative path resolves against the file's folder). A malformed row raises ValueError, unreadable
    images :class:`~forgetbench.suite.images.UnreadableRows`, each naming the rows by their number in the data
    (from 1)."""
    import numpy as np

    from forgetbench.suite.common import rgb
    from forgetbench.suite.images import UnreadableImage, UnreadableRows, quiet_progress

    root = Path(source).parent if kind in ("parquet", "jsonl", "json") else None
    numbers = [int(i) for i in np.random.default_rng(seed).permutation(len(loaded))[:rows]]

    def image(value):
        if root is not None and isinstance(value, str) and not Path(value).is_absolute():
            value = str(root / value)
        return rgb(value)

    with quiet_progress():
        picked = loaded.select(numbers)
    bad = []
    # Images read as Arrow stay undecoded {"bytes", "path"}, so a broken one is its row's problem; messages decoded
    # (datasets stores content parts as JSON text).
    stored = picked.select_columns(["images"]).with_format("arrow")[:].to_pylist()
    for position, (row, messages) in enumerate(zip(stored, picked["messages"], strict=True)):
        where = f"row {numbers[position] + 1}"
        images = row["images"] if row["images"] is not None else []
        if not isinstance(images, list):
            raise ValueError(f"{where}: not in TRL's vision format (images is not a list)")
        _replay_messages(messages, len(images), where)
        try:
            for value in images:
                image(value)
        except UnreadableImage as exc:
            bad.append((position, numbers[position] + 1, exc.reason))
    if bad:
        raise UnreadableRows("train", len(picked), bad, None)

    def convert(row: dict) -> dict:
        return {"images": [image(value) for value in row["images"] or []],
                "messages": _replay_messages(row["messages"], len(row["images"] or []), "a row")}

    with quiet_progress():
        return picked.map(convert, remove_columns=picked.column_names)


def with_replay(train, tasks: Sequence[str], ratio: float, seed: int, data: tuple | None = None):
    """``train`` with the train rows of the registered ``tasks`` (each asked with its own prompt,
    :func:`forgetbench.suite.train_conversations`) and the rows of ``data`` mixed in: returns the mixed dataset and
    the rows each source brings, ``{"target": n, task: m, ..., "replay_data": m}``. ``data`` is general data in
    TRL's vision format, ``(rows from load_replay_data, source, kind)`` (:func:`replay_data_source`).

    ``datasets.interleave_datasets`` draws each row's source independently, seeded with ``seed``, with probabilities
    ``[1 - ratio, ratio / k, ...]`` for ``k`` replay sources (the tasks, and the data as one more), and stops once
    every source has been seen whole (``all_exhausted``; an exhausted source starts over). So every target row is in
    the stream at least once, and each replay source brings a seeded sample of its expected share of one pass over
    the target, ``ceil(n * ratio / k / (1 - ratio))`` rows (a source with fewer rows is cycled): the stream is about
    ``n / (1 - ratio)`` rows long, not the replay sets' size.
    """
    import datasets

    from forgetbench import suite

    sources_count = len(tasks) + (data is not None)
    share = math.ceil(len(train) * ratio / sources_count / (1 - ratio))
    sources, rows = [train], {"target": len(train)}
    named = [(task, None) for task in tasks] + ([(REPLAY_DATA_KEY, data)] if data is not None else [])
    for name, origin in named:
        if origin is None:
            try:
                replay = suite.train_conversations(name, "train")
            except Exception as exc:  # datasets raises many kinds; name the task
                raise ValueError(f"{name}: cannot load its train split: {type(exc).__name__}: {exc}") from None
            replay = replay.shuffle(seed=seed).select(range(min(share, len(replay))))
        else:
            try:
                replay = replay_rows(*origin, share, seed)
            except ValueError as exc:  # UnreadableRows too
                raise ReplayDataError(str(exc)) from None
        if replay.features != train.features:
            try:
                replay = replay.cast(train.features)
            except (ValueError, TypeError) as exc:
                problem = f"its rows do not fit the training rows' columns ({exc})"
                raise ReplayDataError(problem) if origin else ValueError(f"{name}: {problem}") from None
        sources.append(replay)
        rows[name] = len(replay)
    probabilities = [1 - ratio] + [ratio / sources_count] * sources_count
    mixed = datasets.interleave_datasets(sources, probabilities=probabilities, seed=seed,
                                         stopping_strategy=REPLAY_STOPPING)
    return mixed, rows
