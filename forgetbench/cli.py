"""The ``forgetbench`` command: every tool of the project under one name.

Each tool lives in its own module as a pair ``configure(parser)`` / ``run(args) -> exit code``; the module's own
``python -m`` entry point (kept for scripts written before this command) calls the same pair. A tool is one row of
:data:`TOOLS`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from forgetbench import __version__, recipes_path, tasks_path
from forgetbench.errors import emit, guarded

# (command words, module, configure function, run function, help). Building the parser imports each module, so a
# module keeps its heavy imports (torch, transformers, lmms-eval) inside its functions.
TOOLS = (
    (("compare",), "forgetbench.compare.cli", "configure_parser", "run",
     "E, F and O from a pre- and a post-tuning lmms-eval run"),
    (("stages",), "forgetbench.compare.stages", "configure_parser", "run",
     "accuracy matrix, BWT, MFN, MAA and forgetting over successive fine-tunes"),
    (("power",), "forgetbench.compare.power", "configure_parser", "run",
     "minimum detectable effect and documents needed per task, E and F, from the study's own paired runs"),
    (("study",), "forgetbench.study", "configure_parser", "run",
     "the whole study: evaluate, fine-tune, evaluate, compare"),
    (("wise",), "forgetbench.train.mitigations.cli", "configure_wise", "run_wise",
     "WiSE-FT: interpolate base and tuned weights into new checkpoints"),
    (("merge",), "forgetbench.train.mitigations.cli", "configure_merge", "run_merge",
     "combine LoRA adapters (TIES, DARE, ...) into one merged checkpoint"),
    (("configs",), "forgetbench.train.configs", "configure_parser", "run",
     "rewrite (or --check) the recipe configs from recipes/configs/_sources"),
    (("convert", "rsvqa"), "forgetbench.suite.rsvqa", "configure_parser", "run",
     "convert the official RSVQA release to the parquet files the tasks read"),
    (("convert", "iconqa"), "forgetbench.suite.iconqa", "configure_parser", "run",
     "convert the official IconQA release to parquet"),
    (("task", "add"), "forgetbench.suite.user_tasks", "configure_parser", "run",
     "your own data (LLaVA JSON, TRL images+messages, or a table) as an lmms-eval task folder"),
    (("fixtures",), "forgetbench.suite.fixtures", "configure_parser", "run",
     "tiny offline data and local task YAMLs for every benchmark task (smoke tests)"),
    (("lab", "pretrain"), "forgetbench.lab.pretrain", "configure_parser", "run",
     "pre-train the lab base model (about 4 minutes on 2 cores)"),
    (("lab", "data"), "forgetbench.lab.data", "configure_parser", "run",
     "regenerate the lab's datasets"),
    (("lab", "tiny"), "forgetbench.lab.families", "configure_tiny", "run_tiny",
     "a tiny random-init model of a supported family, saved with its real processor class"),
)


def _list_tasks(args: argparse.Namespace) -> int:
    from forgetbench.compare.scores import TASK_METRICS
    from forgetbench.suite import listing

    return emit(listing.text(args.json, TASK_METRICS))


def _print(text) -> int:
    return emit(str(text))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="forgetbench", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"forgetbench {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "tasks-path", help="print the task folder, for `lmms-eval --include_path` (the always-working fallback)"
    ).set_defaults(run=lambda args: _print(tasks_path()))
    tasks_parser = commands.add_parser(
        "tasks", help="every registered task: role, data source, primary metric, whether its data is there offline")
    tasks_parser.add_argument("--json", action="store_true", help="print the list as JSON")
    tasks_parser.set_defaults(run=_list_tasks)
    commands.add_parser(
        "recipes-path", help="print the recipes folder, for `accelerate launch $(forgetbench recipes-path)/lora.py`"
    ).set_defaults(run=lambda args: _print(recipes_path()))

    groups: dict[str, argparse._SubParsersAction] = {}
    for words, module_name, configure, run, help_text in TOOLS:
        module = importlib.import_module(module_name)
        holder = commands
        if len(words) == 2:
            if words[0] not in groups:
                group = commands.add_parser(words[0], help=f"{words[0]} tools")
                groups[words[0]] = group.add_subparsers(dest=f"{words[0]}_command", required=True)
            holder = groups[words[0]]
        sub = holder.add_parser(words[-1], help=help_text)
        getattr(module, configure)(sub)
        sub.set_defaults(run=getattr(module, run), prog_name=f"forgetbench {' '.join(words)}")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return guarded(getattr(args, "prog_name", f"forgetbench {args.command}"), lambda: args.run(args))


if __name__ == "__main__":
    sys.exit(main())
