"""``forgetbench compare`` on the command line: the arguments, their parsing into typed inputs, the exit codes.

The option helpers shared with ``forgetbench stages`` (stages.py) and ``forgetbench power`` (power.py) live in
options.py and are importable from here as before.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from forgetbench.compare.errors import CompareError
from forgetbench.compare.options import add_score_options, check_roles, posts_of, task_list  # noqa: F401 - also cli's API
from forgetbench.compare.report import (
    MIN_RESAMPLES,
    CompareOptions,
    Comparison,
    check_bootstrap,
    check_budget,
    check_choice,
    check_outputs,
    compare_runs,
)
from forgetbench.errors import command_main, emit

PROG = "forgetbench compare"


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
    parser.add_argument("--html", dest="html_path", metavar="FILE",
                        help="also write the report as one self-contained HTML page to FILE (the study's report.html)")
    parser.add_argument("--resamples", type=int, default=10000, metavar="B",
                        help=f"bootstrap resamples for the intervals, at least {MIN_RESAMPLES}; 0 turns them off "
                             "(default: %(default)s)")
    parser.add_argument("--confidence", type=float, default=0.95, help="interval level (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed, >= 0 (default: %(default)s)")
    parser.add_argument("--budget", type=float, default=2.0, metavar="P",
                        help="forgetting budget in points: an upstream task or F whose one-sided MDE exceeds it is "
                             "underpowered, and the recommendation picks among the arms whose F is not significantly "
                             "below -P (default: %(default)s)")
    parser.add_argument("--allow-mismatch", action="store_true",
                        help="compare only the samples both runs share instead of refusing differing runs")
    parser.add_argument("--relative", action="store_true", help="add post/pre - 1 (in %%) to the printed table")


def comparison_of(args: argparse.Namespace) -> Comparison:
    """Parse the arguments (checked in the order the messages promise) and compare."""
    downstream = task_list(args.downstream, "--downstream")
    upstream = task_list(args.upstream, "--upstream")
    check_roles(downstream, upstream)
    check_bootstrap(args.resamples, args.confidence, args.seed)
    check_budget(args.budget)
    posts = posts_of(args.post)
    check_outputs([args.pre, *(path for _, path in posts)], args.out, args.json_path,
                  getattr(args, "html_path", None))  # before the work, not after
    tasks = downstream + upstream
    options = CompareOptions(resamples=args.resamples, confidence=args.confidence, seed=args.seed,
                             allow_mismatch=args.allow_mismatch, budget=args.budget,
                             metrics=assignments(args.metric, "--metric", tasks),
                             scales=assignments(args.metric_scale, "--metric-scale", tasks))
    return compare_runs(args.pre, posts, downstream, upstream, options)


def run(args: argparse.Namespace) -> int:
    """``forgetbench compare``: 0, or 1 when stdout was closed early; a refusal raises (``main`` and the
    ``forgetbench`` command print it as one line, exit 2)."""
    comparison = comparison_of(args)
    comparison.write(*(Path(p) if p is not None else None
                       for p in (args.out, args.json_path, getattr(args, "html_path", None))))
    return emit(comparison.table(args.relative))



def main(argv: Sequence[str] | None = None) -> int:
    """``forgetbench compare`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    return command_main(PROG, configure_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
