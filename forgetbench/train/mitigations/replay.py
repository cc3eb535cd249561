"""Replay, ``--replay_tasks a,b --replay_ratio R`` and/or ``--replay_data PATH_OR_HUB_ID``: registered tasks' train
rows, or general data in TRL's vision format, mixed into the target data (:func:`forgetbench.train.data.with_replay`;
docs/mitigations.md)."""

from __future__ import annotations

from dataclasses import dataclass

from forgetbench.train.mitigations.entry import Context, Entry, MitigationError, Option

# The stream is about n / (1 - R) rows for n target rows (with_replay): at most 10 times the target data, so a run
# still trains mostly on its own task's rows at the scale its steps and epochs were set for.
MAX_RATIO = 0.9


@dataclass(frozen=True)
class Replay:
    tasks: tuple[str, ...]  # registered tasks, groups expanded
    ratio: float
    data: str | None = None  # --replay_data: an absolute path, or a hub id
    data_kind: str | None = None  # save_to_disk, parquet, jsonl, json or hub
    data_given: str | None = None  # --replay_data as given: how messages name it


def _tasks(given: str, dataset_name: str | None) -> tuple[str, ...]:
    """``--replay_tasks`` as registered tasks, each group name (``forgetbench.suite.GROUPS``) expanded to its tasks
    as lmms-eval's ``--tasks`` expands it."""
    from forgetbench import suite

    names = [t.strip() for t in given.split(",") if t.strip()]
    if not names:
        raise MitigationError("--replay_tasks: empty")
    tasks: list[str] = []
    for name in names:
        members = suite.GROUPS.get(name)
        for task in members or (name,):
            where = f"--replay_tasks {name}" + (f": its task {task}" if members else "")
            if task not in suite.TASKS:
                raise MitigationError(f"{where}: not a forgetbench suite task or group (known: "
                                      f"{', '.join(t for t in suite.TASKS if not t.endswith('_closed'))})")
            if task == dataset_name:
                raise MitigationError(f"{where}: the training task itself (--dataset_name)")
            if task in tasks:
                raise MitigationError(f"{where}: given twice")
            tasks.append(task)
    return tuple(tasks)


def check(args, context: Context) -> Replay | None:
    from forgetbench.train.data import replay_data_source

    given, data, ratio = args.replay_tasks, getattr(args, "replay_data", None), args.replay_ratio
    if given is None and data is None and ratio is None:
        return None
    if given is None and data is None:
        raise MitigationError("--replay_ratio: needs --replay_tasks TASK[,TASK...] or --replay_data PATH (what to "
                              "replay)")
    if ratio is None:
        flag = "--replay_tasks" if given is not None else "--replay_data"
        raise MitigationError(f"{flag}: needs --replay_ratio R (the share of replay rows, between 0 and 1)")
    tasks = _tasks(given, context.dataset_name) if given is not None else ()
    source = kind = None
    if data is not None:
        if not data.strip():
            raise MitigationError("--replay_data: empty")
        try:
            source, kind = replay_data_source(data)
        except ValueError as exc:
            raise MitigationError(f"--replay_data {exc}") from None
    if not 0 < ratio < 1:  # NaN fails too
        raise MitigationError(f"--replay_ratio {ratio}: must be between 0 and 1, exclusive (the share of replay "
                              "rows in the training stream)")
    if ratio > MAX_RATIO:
        raise MitigationError(f"--replay_ratio {ratio}: at most {MAX_RATIO} (the stream is about 1/(1-R) times the "
                              f"target data, {1 / (1 - ratio):.0f} times at {ratio}, against "
                              f"{1 / (1 - MAX_RATIO):.0f} at {MAX_RATIO})")
    return Replay(tasks, ratio, source, kind, data)


def mix_data(settings: Replay, train, seed: int):
    from forgetbench.train.data import ReplayDataError, load_replay_data, with_replay

    data = None
    if settings.data is not None:
        try:
            loaded = load_replay_data(settings.data, settings.data_kind)
        except ReplayDataError as exc:
            raise MitigationError(f"--replay_data {settings.data_given}: {exc}") from None
        except Exception as exc:  # datasets raises many kinds; name the flag and the source
            from forgetbench.errors import one_line

            raise MitigationError(f"--replay_data {settings.data_given}: cannot load ({type(exc).__name__}: "
                                  f"{one_line(exc)})") from None
        data = (loaded, settings.data, settings.data_kind)
    try:
        mixed, rows = with_replay(train, settings.tasks, settings.ratio, seed, data)
    except ReplayDataError as exc:
        raise MitigationError(f"--replay_data {settings.data_given}: {exc}") from None
    except ValueError as exc:
        raise MitigationError(f"--replay_tasks {exc}") from None
    return mixed, {"rows": rows, "data_rows": len(data[0]) if data else None}


def manifest(settings: Replay | None, record: dict | None, trainer) -> dict:
    from forgetbench.train.data import REPLAY_DATA_KEY, REPLAY_STOPPING

    if settings is None:
        return {"replay": None}
    rows = record["rows"] if record else None
    data = None if settings.data is None else {
        "source": settings.data, "kind": settings.data_kind, "rows": record["data_rows"] if record else None,
        "replayed": rows.get(REPLAY_DATA_KEY) if rows else None}
    # Every registered task has a test split forgetbench evaluates: replaying its train split means F on that task
    # measures retention of data the run trained on (the study's report says so).
    return {"replay": {"tasks": list(settings.tasks), "ratio": settings.ratio, "stopping_strategy": REPLAY_STOPPING,
                       "rows": rows, "data": data, "evaluated_tasks_replayed": list(settings.tasks)}}


MITIGATION = Entry(
    name="replay", order=10, check=check, mix_data=mix_data, manifest=manifest,
    options=(
        Option("replay_tasks", str | None, "replay: registered tasks or groups a,b whose train rows are mixed into "
                                           "the data"),
        Option("replay_ratio", float | None, "replay: the share of replay rows in the training stream, in "
                                             f"(0, {MAX_RATIO}]"),
        Option("replay_data", str | None, "replay: general data in TRL's vision format (images + messages) mixed "
                                          "into the data: a save_to_disk folder, a .parquet or .jsonl file, or a hub "
                                          "dataset id"),
    ),
)
