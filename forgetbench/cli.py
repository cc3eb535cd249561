"""The ``forgetbench`` command."""

from __future__ import annotations

import argparse
import sys

from forgetbench import __version__, recipes_path, tasks_path


def main(argv: list[str] | None = None) -> int:
    from forgetbench import study
    from forgetbench.compare import cli as compare_cli
    from forgetbench.compare import stages

    parser = argparse.ArgumentParser(prog="forgetbench", description=__doc__)
    parser.add_argument("--version", action="version", version=f"forgetbench {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser(
        "tasks-path", help="print the task folder, for `lmms-eval --include_path` (the always-working fallback)"
    ).set_defaults(func=lambda args: print(tasks_path()) or 0)
    tasks_parser = commands.add_parser(
        "tasks", help="every registered task: role, data source, primary metric, whether its data is there offline")

    def list_tasks(args):
        from forgetbench.compare.scores import TASK_METRICS
        from forgetbench.suite import listing

        return compare_cli.emit(listing.text(args.json, TASK_METRICS))

    tasks_parser.add_argument("--json", action="store_true", help="print the list as JSON")
    tasks_parser.set_defaults(func=list_tasks)
    commands.add_parser(
        "recipes-path", help="print the recipes folder, for `accelerate launch $(forgetbench recipes-path)/lora.py`"
    ).set_defaults(func=lambda args: print(recipes_path()) or 0)

    compare_parser = commands.add_parser("compare", help="E, F and O from a pre- and a post-tuning lmms-eval run")
    compare_cli.configure_parser(compare_parser)
    compare_parser.set_defaults(func=compare_cli.run)

    stages_parser = commands.add_parser(
        "stages", help="accuracy matrix, BWT, MFN, MAA and forgetting over successive fine-tunes"
    )
    stages.configure_parser(stages_parser)
    stages_parser.set_defaults(func=stages.run)

    study_parser = commands.add_parser("study", help="the whole study: evaluate, fine-tune, evaluate, compare")
    study.configure_parser(study_parser)
    study_parser.set_defaults(func=study.run)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
