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
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from forgetbench import compare, recipes_path
from forgetbench.lab.tasks import LAB_TASKS
from forgetbench.training import LAB_MODEL_ALIAS, resolve_model


class StudyError(Exception):
    """A step failed or the input is unusable; printed as one line, exit 2."""


def _lab_tasks(role: str) -> str:
    return ",".join(task.lmms_eval_name for task in LAB_TASKS.values() if task.role == role)


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
    command = [
        sys.executable, "-m", "lmms_eval", "--model", "llava_hf",
        "--model_args", f"pretrained={model_dir},device={args.device},device_map={args.device}",
        "--tasks", tasks, "--batch_size", "1", "--log_samples", "--output_path", str(out),
    ]
    if args.limit is not None:
        command += ["--limit", str(args.limit)]
    elapsed = _run_step(name, command, logs, env)
    # lmms-eval exits 0 even when evaluation failed: the results file is the only proof it ran.
    try:
        compare.find_results_file(out, f"{name} output {out}")
    except compare.CompareError as exc:
        raise StudyError(f"step {name} wrote no results ({exc}); see {logs / (name + '.log')}") from None
    return elapsed


def _validated(args) -> tuple[Path, Path]:
    recipe = recipes_path() / f"{args.recipe}.py"
    if not recipe.is_file():
        raise StudyError(f"--recipe {args.recipe}: no such recipe ({recipe})")
    config = args.config or recipes_path() / "configs" / "lab" / f"{args.recipe}.yaml"
    if not Path(config).is_file():
        raise StudyError(f"--config {config}: no such file")
    if args.model != LAB_MODEL_ALIAS and not Path(args.model).exists() and "/" not in args.model:
        raise StudyError(f"--model {args.model}: not a folder, a hub id or {LAB_MODEL_ALIAS}")
    if args.out.exists() and any(args.out.iterdir()) and not args.overwrite:
        raise StudyError(f"--out {args.out}: exists and is not empty; pass --overwrite to replace it")
    return recipe, Path(config)


def study(args) -> dict:
    recipe, config = _validated(args)
    if args.out.exists():
        shutil.rmtree(args.out)
    out = args.out.resolve()
    logs = out / "logs"
    logs.mkdir(parents=True)
    env = dict(os.environ)
    if args.model == LAB_MODEL_ALIAS:  # the lab needs nothing from the hub: never wait on it
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("HF_DATASETS_OFFLINE", "1")
    base = resolve_model(args.model)
    tasks = f"{args.downstream},{args.upstream}"
    model_dir = out / "model"

    seconds = {"eval_pre": _evaluate("eval_pre", base, tasks, out / "eval" / "pre", args, logs, env)}
    seconds["train"] = _run_step(
        "train",
        [
            sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", str(recipe), "--config", str(config),
            "--model_name_or_path", args.model, "--output_dir", str(model_dir), *shlex.split(args.recipe_args),
        ],
        logs,
        env,
    )
    seconds["eval_post"] = _evaluate("eval_post", str(model_dir), tasks, out / "eval" / "post", args, logs, env)

    compare_args = [
        "--pre", str(out / "eval" / "pre"), "--post", str(out / "eval" / "post"),
        "--downstream", args.downstream, "--upstream", args.upstream, "--json", str(out / "compare.json"),
    ]
    if compare.main(compare_args) != 0:
        raise StudyError("compare refused the two runs (its message is above)")
    report = json.loads((out / "compare.json").read_text())
    manifest = json.loads((model_dir / "forgetbench_manifest.json").read_text())
    summary = [
        f"forgetbench study: {args.model} + {manifest['method']} "
        f"({manifest['trainable_parameters']:,} trainable parameters, {manifest['steps']} steps)",
        compare.format_table(report),
        "seconds: " + ", ".join(f"{step} {value:.0f}" for step, value in seconds.items()),
    ]
    (out / "summary.txt").write_text("\n".join(summary) + "\n")
    print(f"artefacts in {out}")
    return report


def run(args: argparse.Namespace) -> int:
    try:
        study(args)
    except StudyError as exc:
        print(f"forgetbench study: error: {exc}", file=sys.stderr)
        return 2
    return 0
