"""``forgetbench study``: the whole forgetting study in one command, on the embedded lab by default.

1. evaluate the base model on the downstream and upstream tasks with the stock ``lmms-eval`` CLI;
2. fine-tune it with a recipe (``accelerate launch recipes/lora.py --config ...``);
3. evaluate the fine-tuned checkpoint the same way;
4. ``forgetbench compare`` the two runs: E, F, O.

Every artefact stays in one folder::

    OUT/eval/pre/  OUT/model/  OUT/eval/post/  OUT/compare.json  OUT/summary.txt  OUT/logs/
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from forgetbench import compare, evaluate, recipes_path, suite, train
from forgetbench.checkpoint import LAB_MODEL_ALIAS, read_manifest, resolve_model


class StudyError(Exception):
    """A step failed or the input is unusable; printed as one line, exit 2."""


def _lab_tasks(role: str) -> str:
    return ",".join(suite.tasks_in_role(role, suite.lab.PREFIX))


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.splitlines()[0]
    parser.add_argument("--out", type=Path, default=Path("runs/lab-study"), help="output folder (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it already holds a study")
    parser.add_argument("--model", default=LAB_MODEL_ALIAS, help="base model folder or hub id (default: the lab model)")
    parser.add_argument("--recipe", default="lora", help="recipe name under recipes/ (default: %(default)s)")
    parser.add_argument(
        "--config", type=Path, default=None, help="recipe config (default: recipes/configs/lab/<recipe>.yaml)"
    )
    parser.add_argument("--recipe-args", default="", help='extra recipe overrides, e.g. "--max_steps 50"')
    parser.add_argument("--downstream", default=_lab_tasks("downstream"), help="default: %(default)s")
    parser.add_argument("--upstream", default=_lab_tasks("upstream"), help="default: %(default)s")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N documents per task")
    parser.add_argument("--device", default="cpu", help="lmms-eval device (default: %(default)s)")


def _run_step(name: str, command: list[str], logs: Path, env: dict) -> float:
    log = logs / f"{name}.log"
    print(f"[{name}] {shlex.join(command)}", flush=True)
    start = time.perf_counter()
    with log.open("w") as handle:
        completed = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env, check=False)
    elapsed = time.perf_counter() - start
    if completed.returncode != 0:
        raise StudyError(f"step {name} exited {completed.returncode}; see {log}")
    print(f"[{name}] done in {elapsed:.0f} s", flush=True)
    return elapsed


def _evaluate(name: str, model_dir: str, tasks: str, out: Path, args, logs: Path, env: dict) -> float:
    command = evaluate.lmms_eval_command(model_dir, tasks, out, device=args.device, limit=args.limit)
    elapsed = _run_step(name, command, logs, env)
    try:
        evaluate.results_file(out)
    except evaluate.EvaluationError as exc:
        raise StudyError(f"step {name} wrote no results ({exc}); see {logs / (name + '.log')}") from None
    return elapsed


def _validated(args) -> Path:
    config = args.config or recipes_path() / "configs" / "lab" / f"{args.recipe}.yaml"
    if not (recipes_path() / f"{args.recipe}.py").is_file():
        raise StudyError(f"--recipe {args.recipe}: no such recipe ({recipes_path() / f'{args.recipe}.py'})")
    if not Path(config).is_file():
        raise StudyError(f"--config {config}: no such file")
    if args.model != LAB_MODEL_ALIAS and not Path(args.model).exists() and "/" not in args.model:
        raise StudyError(f"--model {args.model}: not a folder, a hub id or {LAB_MODEL_ALIAS}")
    if args.out.exists() and any(args.out.iterdir()) and not args.overwrite:
        raise StudyError(f"--out {args.out}: exists and is not empty; pass --overwrite to replace it")
    return Path(config)


def study(args) -> dict:
    config = _validated(args)
    if args.out.exists():
        shutil.rmtree(args.out)
    out = args.out.resolve()
    logs = out / "logs"
    logs.mkdir(parents=True)
    env = dict(os.environ)
    if args.model == LAB_MODEL_ALIAS:  # the lab needs nothing from the hub: never wait on it
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("HF_DATASETS_OFFLINE", "1")
    tasks = f"{args.downstream},{args.upstream}"
    model_dir = out / "model"

    seconds = {"eval_pre": _evaluate("eval_pre", resolve_model(args.model), tasks, out / "eval" / "pre", args, logs,
                                     env)}
    overrides = ["--model_name_or_path", args.model, "--output_dir", str(model_dir), *shlex.split(args.recipe_args)]
    seconds["train"] = _run_step("train", train.launch_command(args.recipe, config, overrides), logs, env)
    seconds["eval_post"] = _evaluate("eval_post", str(model_dir), tasks, out / "eval" / "post", args, logs, env)

    try:
        comparison = compare.compare_runs(out / "eval" / "pre", [("post", out / "eval" / "post")],
                                          args.downstream.split(","), args.upstream.split(","))
        comparison.write(json_path=out / "compare.json")
    except compare.CompareError as exc:
        raise StudyError(f"compare refused the two runs: {exc}") from None
    manifest = read_manifest(model_dir)
    summary = [
        f"forgetbench study: {args.model} + {manifest['method']} "
        f"({manifest['trainable_parameters']:,} trainable parameters, {manifest['steps']} steps)",
        comparison.table(),
        "seconds: " + ", ".join(f"{step} {value:.0f}" for step, value in seconds.items()),
    ]
    (out / "summary.txt").write_text("\n".join(summary) + "\n")
    print(comparison.table())
    print(f"artefacts in {out}")
    return comparison.report


def run(args: argparse.Namespace) -> int:
    try:
        study(args)
    except (StudyError, train.RecipeError) as exc:
        print(f"forgetbench study: error: {exc}", file=sys.stderr)
        return 2
    return 0
