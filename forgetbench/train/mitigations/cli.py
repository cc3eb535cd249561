"""The post-hoc mitigations as commands: ``forgetbench wise`` / ``forgetbench merge`` (the ``forgetbench`` command
calls :func:`configure_wise` / :func:`run_wise` and :func:`configure_merge` / :func:`run_merge`), and the older
``python -m forgetbench.train.mitigations {wise,merge} ...`` (:func:`main`). A bad input is one line and exit 2."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from forgetbench.errors import guarded
from forgetbench.train.mitigations.merge import COMBINATIONS, WITH_DENSITY, merge_adapters
from forgetbench.train.mitigations.wise import parse_alphas, wise_folder, wise_ft

MODULE_PROG = "python -m forgetbench.train.mitigations"


def configure_wise(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", required=True, help="the model the checkpoint was tuned from")
    parser.add_argument("--tuned", required=True, help="a merged checkpoint (a recipe's output_dir)")
    parser.add_argument("--alphas", required=True, help="comma-separated, each in [0, 1]: 0.25,0.5,0.75")
    parser.add_argument("--out", help="parent folder of the wise-<alpha>/ checkpoints (default: --tuned)")


def run_wise(args: argparse.Namespace, prog: str = "forgetbench wise") -> int:
    """WiSE-FT on a finished checkpoint, one ``wise-<alpha>/`` per alpha; prints each folder. Returns the exit
    code."""

    def action() -> None:
        parent = Path(args.out or args.tuned)
        for alpha in parse_alphas(args.alphas, "--alphas"):
            print(wise_ft(args.base, args.tuned, alpha, parent / wise_folder(alpha)), flush=True)

    return guarded(prog, action)


def configure_merge(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", required=True, help="the base model every adapter was trained on")
    parser.add_argument("--adapters", required=True, nargs="+", help="recipe output folders or adapter folders")
    parser.add_argument("--weights", required=True, nargs="+", type=float, help="one weight per adapter")
    parser.add_argument("--combination", required=True, choices=COMBINATIONS, metavar="TYPE",
                        help=f"one of {', '.join(COMBINATIONS)}")
    parser.add_argument("--density", type=float, help=f"share of values kept ({', '.join(WITH_DENSITY)})")
    parser.add_argument("--seed", type=int, default=0, help="DARE's random pruning")
    parser.add_argument("--out", required=True, help="the merged checkpoint's folder")


def run_merge(args: argparse.Namespace, prog: str = "forgetbench merge") -> int:
    """LoRA adapters combined by PEFT's add_weighted_adapter into one merged checkpoint; prints its folder. Returns
    the exit code."""

    def action() -> None:
        print(merge_adapters(args.base, args.adapters, args.weights, args.combination, args.density, args.out,
                             args.seed), flush=True)

    return guarded(prog, action)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=MODULE_PROG, description="Post-hoc mitigations of forgetting on finished "
                                                                   "checkpoints (docs/mitigations.md).")
    commands = parser.add_subparsers(dest="command", required=True)
    configure_wise(commands.add_parser("wise", help="WiSE-FT: interpolate base and tuned weights"))
    configure_merge(commands.add_parser("merge", help="combine LoRA adapters with PEFT's add_weighted_adapter"))
    return parser


def main(argv: list[str] | None = None) -> None:
    """``python -m forgetbench.train.mitigations {wise,merge} ...``: exits with status 2 after a one-line error."""
    args = _parser().parse_args(argv)
    run = run_wise if args.command == "wise" else run_merge
    code = run(args, prog=f"{MODULE_PROG} {args.command}")
    if code:
        sys.exit(code)
