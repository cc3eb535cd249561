"""The study's steps: a logged subprocess each (``OUT/logs/<step>.log``), the base model's evaluation with its cache,
one arm's training, one point's evaluation. Every step records itself in the study's :class:`State` when it ends."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path

from forgetbench import __version__, evaluate, tasks_path, train
from forgetbench.checkpoint import read_manifest, resolve_model
from forgetbench.study.errors import StudyError
from forgetbench.study.plan import Arm, Plan
from forgetbench.study.state import State


def log_path(logs: Path, step: str) -> Path:
    """The log of a step: its name with '/' flattened, since a step's name holds an arm's (``train/lora`` is
    ``logs/train_lora.log``). Every message that points to a log names this file.

    >>> log_path(Path("logs"), "eval/full_st@wise-0.5")
    PosixPath('logs/eval_full_st@wise-0.5.log')
    """
    return logs / f"{step.replace('/', '_')}.log"


def run_logged(name: str, command: list[str], logs: Path, env: dict) -> float:
    """Run one step's command with its output in :func:`log_path`; the wall seconds, or StudyError naming the log."""
    log = log_path(logs, name)
    print(f"[{name}] {shlex.join(command)}", flush=True)
    start = time.perf_counter()
    with log.open("w") as handle:
        completed = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env, check=False)
    elapsed = time.perf_counter() - start
    if completed.returncode != 0:
        raise StudyError(f"step {name} exited {completed.returncode}; see {log}")
    print(f"[{name}] done in {elapsed:.0f} s", flush=True)
    return elapsed


def eval_command(plan: Plan, model: str, output_path: Path) -> list[str]:
    """The lmms-eval command of every evaluation of the study (the base and each point), on its backend."""
    return evaluate.lmms_eval_command(model, plan.tasks, output_path, wrapper=plan.eval_backend, device=plan.device,
                                      batch_size=plan.batch_size, limit=plan.limit, num_processes=plan.num_processes,
                                      backend_args=dict(plan.backend_args))


def evaluate_into(name: str, model: str, target: Path, plan: Plan, logs: Path, env: dict) -> tuple[float, list, dict]:
    """Evaluate into a scratch folder, then move it into place: a half-written evaluation never looks finished.
    Returns the wall seconds of the lmms-eval process, its command and :func:`forgetbench.evaluate.throughput`."""
    scratch = target.parent / f".{target.name}.partial"
    shutil.rmtree(scratch, ignore_errors=True)
    command = eval_command(plan, model, scratch)
    seconds = run_logged(name, command, logs, env)
    try:
        speed = evaluate.throughput(scratch, seconds)
    except evaluate.EvaluationError as exc:
        raise StudyError(f"step {name} wrote no results ({exc}); see {log_path(logs, name)}") from None
    shutil.rmtree(target, ignore_errors=True)
    os.replace(scratch, target)
    return seconds, command, speed


# -- the base model, evaluated once and cached -------------------------------------------------------------------


def _fingerprint(path: str) -> object:
    """A model's identity for the cache: a hub id as is; a folder by its files' names, sizes and times."""
    folder = Path(path)
    if not folder.is_dir():
        return path
    return sorted((str(f.relative_to(folder)), f.stat().st_size, f.stat().st_mtime_ns)
                  for f in folder.rglob("*") if f.is_file())


def baseline_key(plan: Plan) -> str:
    """Everything pairing checks, hashed: the model, the tasks and their definitions, the limit, the wrapper and
    its settings, and the versions of the stack."""
    from forgetbench.checkpoint import library_versions

    task_files = sorted((str(p.relative_to(tasks_path())), hashlib.sha256(p.read_bytes()).hexdigest())
                        for p in tasks_path().rglob("*") if p.is_file() and p.suffix != ".pyc")
    versions = library_versions()
    # What lmms-eval itself records as its version (and compare pairs on): "branch@commit" of the git checkout
    # that holds the installed package, so a venv inside a repository changes it at every commit.
    from lmms_eval.utils import get_lmms_eval_version_string

    versions["lmms_eval_recorded"] = get_lmms_eval_version_string()
    key = {"model": _fingerprint(resolve_model(plan.model)), "tasks": plan.tasks, "limit": plan.limit,
           "wrapper": plan.eval_backend, "device": plan.device, "batch_size": plan.batch_size,
           "num_processes": plan.num_processes, "task_files": task_files, "forgetbench": __version__,
           "versions": versions}
    if plan.backend_args:  # absent for the default backend: the keys of existing caches stay what they were
        key["backend_args"] = list(plan.backend_args)
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]


def cache_root(cache_dir: Path | None) -> Path:
    if cache_dir is not None:
        return cache_dir
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "forgetbench" / "baselines"


def baseline(plan: Plan, state: State, cache: Path, env: dict) -> None:
    out, target = state.out, state.out / "eval" / "pre"
    if state.done("baseline"):
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    entry = cache / baseline_key(plan)
    if (entry / "DONE").is_file():
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(entry / "eval", target)
        print(f"[baseline] reusing the cached evaluation of the base model: {entry}", flush=True)
        # Nothing was evaluated now: the figures are those of the run that filled the cache, marked as such (an
        # entry written before they were recorded has the counts but no time).
        done = json.loads((entry / "DONE").read_text())
        speed = done.get("throughput") or evaluate.throughput(target, None)
        state.finish("baseline", seconds=0.0, cached=str(entry), command=None,
                     throughput={**speed, "from_cache": True})
        return
    seconds, command, speed = evaluate_into("eval_pre", resolve_model(plan.model), target, plan, out / "logs", env)
    scratch = cache / f".{entry.name}.partial"
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.copytree(target, scratch / "eval")
    (scratch / "DONE").write_text(json.dumps({"model": plan.model, "tasks": plan.tasks, "limit": plan.limit,
                                              "throughput": speed}) + "\n")
    shutil.rmtree(entry, ignore_errors=True)
    os.replace(scratch, entry)
    state.finish("baseline", seconds=seconds, cached=None, stored=str(entry), command=command, throughput=speed)


# -- the arms ----------------------------------------------------------------------------------------------------


def train_arm(arm: Arm, plan: Plan, state: State, env: dict) -> None:
    step = f"train/{arm.name}"
    if state.done(step):
        return
    model_dir = state.out / "arms" / arm.name
    overrides = ["--model_name_or_path", plan.model, "--output_dir", str(model_dir), *arm.args]
    try:
        command = train.launch_command(arm.recipe, arm.config, overrides, accelerate_config=plan.accelerate_config)
    except train.RecipeError as exc:
        raise StudyError(str(exc)) from None
    shutil.rmtree(model_dir, ignore_errors=True)  # an unfinished run starts over: the recipe's save is atomic
    seconds = run_logged(step, command, state.out / "logs", env)
    if read_manifest(model_dir) is None:
        raise StudyError(f"step {step} wrote no checkpoint manifest in {model_dir}; see "
                         f"{log_path(state.out / 'logs', step)}")
    state.finish(step, seconds=seconds, command=command)


def points_of(arm: Arm, out: Path) -> list[tuple[str, Path]]:
    """The checkpoints an arm's training wrote, as (point name, folder): the arm's own, then one per extra point its
    mitigations wrote beside it (:func:`forgetbench.train.extra_points`: WiSE-FT's alphas become
    ``<arm>@wise-<alpha>``), each a point of the E-versus-F frontier without retraining."""
    folder = out / "arms" / arm.name
    return [(arm.name, folder)] + [(f"{arm.name}@{suffix}", path) for suffix, path in train.extra_points(folder)]


def evaluate_point(name: str, model_dir: Path, plan: Plan, state: State, env: dict) -> None:
    step = f"eval/{name}"
    if state.done(step):
        return
    seconds, command, speed = evaluate_into(step, str(model_dir), state.out / "eval" / name, plan,
                                            state.out / "logs", env)
    state.finish(step, seconds=seconds, command=command, throughput=speed)
