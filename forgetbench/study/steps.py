"""The study's steps: a logged subprocess each (``OUT/logs/<step>.log``), the base model's evaluation with its cache,
one arm's training, one point's evaluation. Every step records itself in the study's :class:`State` when it ends."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path

from forgetbench import evaluate, train
from forgetbench.checkpoint import read_manifest
from forgetbench.study.cache import Entry, baseline_key
from forgetbench.study.errors import StudyError
from forgetbench.study.plan import Arm, Plan, check_name
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


def evaluate_into(name: str, model: str, point: str, plan: Plan, state: State, env: dict) -> tuple[float, list, dict]:
    """Evaluate ``model`` into ``OUT/eval/<point>`` through a scratch folder moved into place when lmms-eval has
    written its results: a half-written evaluation never looks finished. Returns the wall seconds of the lmms-eval
    process, its command and :func:`forgetbench.evaluate.throughput`."""
    logs, scratch, target = state.out / "logs", f"eval/.{point}.partial", f"eval/{point}"
    state.remove(scratch)
    (state.out / "eval").mkdir(exist_ok=True)
    command = eval_command(plan, model, state.out / scratch)
    seconds = run_logged(name, command, logs, env)
    try:
        speed = evaluate.throughput(state.out / scratch, seconds)
    except evaluate.EvaluationError as exc:
        raise StudyError(f"step {name} wrote no results ({exc}); see {log_path(logs, name)}") from None
    state.remove(target)
    os.replace(state.out / scratch, state.out / target)
    return seconds, command, speed


# -- the base model, evaluated once and cached -------------------------------------------------------------------


def baseline(plan: Plan, state: State, cache: Path, env: dict, location: str) -> None:
    """The base model's evaluation in ``OUT/eval/pre``: a copy of the cache's entry, or evaluated and stored there.
    ``location``: what the steps load (:func:`~forgetbench.study.plan.model_location`)."""
    if state.done("baseline"):
        return
    target = state.out / "eval" / "pre"
    with Entry(cache, baseline_key(plan, location)).writing() as entry:
        done = entry.reusable()
        if done is not None:
            state.remove("eval/pre")
            target.parent.mkdir(exist_ok=True)
            shutil.copytree(entry.path / "eval", target)
            print(f"[baseline] reusing the cached evaluation of the base model: {entry.path}", flush=True)
            # Nothing was evaluated now: the figures are those of the run that filled the cache, marked as such.
            speed = done.get("throughput") or evaluate.throughput(target, None)
            state.finish("baseline", seconds=0.0, cached=str(entry.path), command=None,
                         throughput={**speed, "from_cache": True})
            return
        seconds, command, speed = evaluate_into("eval_pre", location, "pre", plan, state, env)
        record = {"model": plan.model, "tasks": plan.tasks, "limit": plan.limit, "throughput": speed}
        if plan.revision is not None:
            record["revision"] = plan.revision
        stored = entry.store(target, record)
        state.finish("baseline", seconds=seconds, cached=None, stored=str(entry.path) if stored else None,
                     command=command, throughput=speed)


# -- the arms ----------------------------------------------------------------------------------------------------


def train_arm(arm: Arm, plan: Plan, state: State, env: dict, location: str | None = None) -> None:
    """Train one arm into ``OUT/arms/<arm>``; an unfinished run starts over. ``location``: with ``--revision``, the
    pinned snapshot the arm loads instead of the model's name."""
    step = f"train/{arm.name}"
    if state.done(step):
        return
    model_dir = state.out / "arms" / arm.name
    model = location if plan.revision is not None and location else plan.model
    overrides = ["--model_name_or_path", model, "--output_dir", str(model_dir), *arm.args]
    try:
        command = train.launch_command(arm.recipe, arm.config, overrides, accelerate_config=plan.accelerate_config)
    except train.RecipeError as exc:
        raise StudyError(str(exc)) from None
    state.remove(f"arms/{arm.name}")  # an unfinished run starts over: the recipe's save is atomic
    seconds = run_logged(step, command, state.out / "logs", env)
    if read_manifest(model_dir) is None:
        raise StudyError(f"step {step} wrote no checkpoint manifest in {model_dir}; see "
                         f"{log_path(state.out / 'logs', step)}")
    state.finish(step, seconds=seconds, command=command)


def points_of(arm: Arm, out: Path) -> list[tuple[str, Path]]:
    """The checkpoints an arm's training wrote, as (point name, folder): the arm's own, then one per extra point its
    mitigations wrote beside it (:func:`forgetbench.train.extra_points`: WiSE-FT's alphas become
    ``<arm>@wise-<alpha>``), each a point of the E-versus-F frontier without retraining. A point's name becomes a
    folder and part of lmms-eval's model_args: it is checked before it is evaluated."""
    folder = out / "arms" / arm.name
    return [(arm.name, folder)] + [(check_name("point", f"{arm.name}@{suffix}"), path)
                                   for suffix, path in train.extra_points(folder)]


def evaluate_point(name: str, model_dir: Path, plan: Plan, state: State, env: dict) -> None:
    step = f"eval/{name}"
    if state.done(step):
        return
    seconds, command, speed = evaluate_into(step, str(model_dir), name, plan, state, env)
    state.finish(step, seconds=seconds, command=command, throughput=speed)
