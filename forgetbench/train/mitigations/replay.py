"""Replay, ``--replay_tasks a,b --replay_ratio R``: registered tasks' train rows mixed into the target data
(:func:`forgetbench.train.data.with_replay`; docs/mitigations.md)."""

from __future__ import annotations

from dataclasses import dataclass

from forgetbench.train.mitigations.entry import Context, Entry, MitigationError, Option

# The stream is about n / (1 - R) rows for n target rows (with_replay): at most 10 times the target data, so a run
# still trains mostly on its own task's rows at the scale its steps and epochs were set for.
MAX_RATIO = 0.9


@dataclass(frozen=True)
class Replay:
    tasks: tuple[str, ...]
    ratio: float


def check(args, context: Context) -> Replay | None:
    from forgetbench import suite

    if args.replay_tasks is None and args.replay_ratio is None:
        return None
    if args.replay_tasks is None:
        raise MitigationError("--replay_ratio: needs --replay_tasks TASK[,TASK...] (the tasks to replay)")
    if args.replay_ratio is None:
        raise MitigationError("--replay_tasks: needs --replay_ratio R (the share of replay rows, between 0 and 1)")
    tasks = tuple(t.strip() for t in args.replay_tasks.split(",") if t.strip())
    if not tasks:
        raise MitigationError("--replay_tasks: empty")
    for task in tasks:
        if task not in suite.TASKS:
            raise MitigationError(f"--replay_tasks {task}: not a forgetbench suite task (known: "
                                  f"{', '.join(t for t in suite.TASKS if not t.endswith('_closed'))})")
        if task == context.dataset_name:
            raise MitigationError(f"--replay_tasks {task}: the training task itself (--dataset_name)")
        if tasks.count(task) > 1:
            raise MitigationError(f"--replay_tasks {task}: given twice")
    ratio = args.replay_ratio
    if not 0 < ratio < 1:  # NaN fails too
        raise MitigationError(f"--replay_ratio {ratio}: must be between 0 and 1, exclusive (the share of replay "
                              "rows in the training stream)")
    if ratio > MAX_RATIO:
        raise MitigationError(f"--replay_ratio {ratio}: at most {MAX_RATIO} (the stream is about 1/(1-R) times the "
                              f"target data, {1 / (1 - ratio):.0f} times at {ratio}, against "
                              f"{1 / (1 - MAX_RATIO):.0f} at {MAX_RATIO})")
    return Replay(tasks, ratio)


def mix_data(settings: Replay, train, seed: int):
    from forgetbench.train.data import with_replay

    try:
        return with_replay(train, settings.tasks, settings.ratio, seed)
    except ValueError as exc:
        raise MitigationError(f"--replay_tasks {exc}") from None


def manifest(settings: Replay | None, rows: dict | None, trainer) -> dict:
    from forgetbench.train.data import REPLAY_STOPPING

    return {"replay": None if settings is None else {
        "tasks": list(settings.tasks), "ratio": settings.ratio, "stopping_strategy": REPLAY_STOPPING, "rows": rows}}


MITIGATION = Entry(
    name="replay", order=10, check=check, mix_data=mix_data, manifest=manifest,
    options=(
        Option("replay_tasks", str | None, "replay: registered tasks a,b whose train rows are mixed into the data"),
        Option("replay_ratio", float | None, "replay: the share of replay rows in the training stream, in "
                                             f"(0, {MAX_RATIO}]"),
    ),
)
