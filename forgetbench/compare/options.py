"""The command-line inputs that ``forgetbench compare``, ``stages`` and ``power`` share: task lists and their roles,
``--post [NAME=]DIR``, ``--metric``/``--metric-scale``. Below :mod:`.report` and :mod:`.cli`, so the three commands
(and :mod:`.power`, which :mod:`.report` plans with) use them without importing one another."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from forgetbench.compare import stats
from forgetbench.compare.errors import CompareError


def check_tasks(tasks: Sequence[str], option: str) -> None:
    """Refuse an empty task list, an empty task name or a task listed twice."""
    if isinstance(tasks, str):
        raise TypeError(f"{option}: a sequence of task names, not a string")
    if not tasks:
        raise CompareError(f"{option}: no task")
    if not all(isinstance(t, str) and t for t in tasks):
        raise CompareError(f"{option}: empty task name in {','.join(map(str, tasks))!r}")
    dupes = sorted({t for t in tasks if tasks.count(t) > 1})
    if dupes:
        raise CompareError(f"{option}: task listed twice: {', '.join(dupes)}")


def check_roles(downstream: Sequence[str], upstream: Sequence[str]) -> None:
    both = [t for t in downstream if t in upstream]
    if both:
        raise CompareError(f"task(s) both downstream and upstream: {', '.join(both)}")


def task_list(text: str, option: str) -> list[str]:
    """``TASK[,TASK...]`` as a list, refusing empty names and repeats.

    >>> task_list("chartqa, docvqa", "--downstream")
    ['chartqa', 'docvqa']
    """
    tasks = [t.strip() for t in text.split(",")]
    if not all(tasks):
        raise CompareError(f"{option}: empty task name in {text!r}")
    check_tasks(tasks, option)
    return tasks


def posts_of(items: Sequence[str]) -> list[tuple[str, str]]:
    """``--post DIR`` or repeated ``--post NAME=DIR`` as ``[(name, dir)]``; an existing path is never split.

    >>> posts_of(["lora=/no/such/a", "full=/no/such/b"])
    [('lora', '/no/such/a'), ('full', '/no/such/b')]
    """
    posts = []
    for item in items:
        name, sep, path = item.partition("=")
        if os.path.exists(item) or not sep or not name.strip() or not path:
            name, path = ("post" if len(items) == 1 else Path(item).name or item), item
        posts.append((name.strip(), path))
    return posts


def add_score_options(parser: argparse.ArgumentParser) -> None:
    """``--metric`` and ``--metric-scale`` (shared with ``forgetbench stages``)."""
    parser.add_argument("--metric", action="append", metavar="TASK=NAME",
                        help="primary metric of TASK (repeatable); NAME may carry a filter: NAME,FILTER")
    parser.add_argument("--metric-scale", action="append", metavar=f"TASK={stats.SCALE_HELP}",
                        help="scale of TASK's metric when forgetbench does not know it (repeatable)")
