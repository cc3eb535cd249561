"""``forgetbench compare`` on the command line: the arguments, their parsing into typed inputs, the exit codes.

The only module of the compare package that sees argparse, with the ``forgetbench stages`` CLI in stages.py,
which reuses the option helpers here.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from forgetbench.compare import stats
from forgetbench.compare.errors import CompareError
from forgetbench.compare.report import (
    MIN_RESAMPLES,
    CompareOptions,
    Comparison,
    check_bootstrap,
    check_choice,
    check_outputs,
    check_roles,
    check_tasks,
    compare_runs,
)
from forgetbench.errors import command_main, emit, guarded

PROG = "forgetbench compare"


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


def assignments(items: Sequence[str] | None, option: str, tasks: Sequence[str]) -> dict[str, str]:
    """``TASK=VALUE`` options (``--metric``, ``--metric-scale``) as a mapping, refusing unknown tasks.

    >>> assignments(["a=acc", " b = anls "], "--metric", ["a", "b"])
    {'a': 'acc', 'b': 'anls'}
    """
    out: dict[str, str] = {}
    for item in items or ():
        task, sep, value = item.partition("=")
        task, value = task.strip(), value.strip()
        if not sep or not task or not value:
            raise CompareError(f"{option}: expected TASK=VALUE, got {item!r}")
        check_choice(option, task, value, tasks)
        out[task] = value
    return out


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


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the ``compare`` arguments to ``parser``."""
    parser.description = parser.description or (
        "Compare a base (pre) and fine-tuned (post) lmms-eval run: E, F and O in points.")
    parser.add_argument("--pre", required=True, metavar="DIR",
                        help="lmms-eval --output_path of the base model (or its *_results.json)")
    parser.add_argument("--post", required=True, action="append", metavar="[NAME=]DIR",
                        help="lmms-eval --output_path of a fine-tuned model; repeat as NAME=DIR for many methods")
    parser.add_argument("--downstream", required=True, metavar="TASK[,TASK...]",
                        help="tasks the fine-tune targets (E)")
    parser.add_argument("--upstream", required=True, metavar="TASK[,TASK...]",
                        help="general tasks to watch for forgetting (F)")
    add_score_options(parser)
    parser.add_argument("--json", dest="json_path", metavar="FILE", help="also write the result as JSON to FILE")
    parser.add_argument("--out", metavar="DIR", help="write compare.json, compare.md, compare.csv, forgotten.csv, "
                                                     "learned.csv, ef.png and ef.svg into DIR (created if needed)")
    parser.add_argument("--resamples", type=int, default=10000, metavar="B",
                        help=f"bootstrap resamples for the intervals, at least {MIN_RESAMPLES}; 0 turns them off "
                             "(default: %(default)s)")
    parser.add_argument("--confidence", type=float, default=0.95, help="interval level (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed, >= 0 (default: %(default)s)")
    parser.add_argument("--allow-mismatch", action="store_true",
                        help="compare only the samples both runs share instead of refusing differing runs")
    parser.add_argument("--relative", action="store_true", help="add post/pre - 1 (in %%) to the printed table")


def comparison_of(args: argparse.Namespace) -> Comparison:
    """Parse the arguments (checked in the order the messages promise) and compare."""
    downstream = task_list(args.downstream, "--downstream")
    upstream = task_list(args.upstream, "--upstream")
    check_roles(downstream, upstream)
    check_bootstrap(args.resamples, args.confidence, args.seed)
    posts = posts_of(args.post)
    check_outputs([args.pre, *(path for _, path in posts)], args.out, args.json_path)  # before the work, not after
    tasks = downstream + upstream
    options = CompareOptions(resamples=args.resamples, confidence=args.confidence, seed=args.seed,
                             allow_mismatch=args.allow_mismatch,
                             metrics=assignments(args.metric, "--metric", tasks),
                             scales=assignments(args.metric_scale, "--metric-scale", tasks))
    return compare_runs(args.pre, posts, downstream, upstream, options)


def _run(args: argparse.Namespace) -> int:
    comparison = comparison_of(args)
    comparison.write(*(Path(p) if p is not None else None for p in (args.out, args.json_path)))
    return emit(comparison.table(args.relative))


def run(args: argparse.Namespace) -> int:
    """Run ``forgetbench compare``; returns the exit code (0 ok, 2 refused, 1 stdout closed early)."""
    return guarded(PROG, lambda: _run(args))


def main(argv: Sequence[str] | None = None) -> int:
    """``forgetbench compare`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    return command_main(PROG, configure_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
