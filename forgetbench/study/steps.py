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
from forgetbench.study.plan import Arm, Plan, check_name, model_location
from forgetbench.study.state import State


def log_path(logs: Path, step: str) -> Path:
    """The log of a step: its name with '/' flattened, since a step's name holds an arm's (``train/lora`` is
    ``logs/train_lora.log``). Every message that points to a log names this file.

    >>> log_path(Path("logs"), "eval/full_st@wise-0.5")
    PosixPath('logs/eval_full_st@wise-0.5.log')
    """
    return logs / f"{step.replace('/', '_')}.log"


def run_logged(name: str, command: list[str], logs: Path, env: dict, lock_fds: tuple[int, ...] = ()) -> float:
    """Run one step's command with its output in :func:`log_path`; the wall seconds, or StudyError naming the log.
    ``lock_fds``: ``OUT``'s lock, which the step's process holds too (:func:`forgetbench.study.state.study_lock`)."""
    log = log_path(logs, name)
    print(f"[{name}] {shlex.join(command)}", flush=True)
    start = time.perf_counter()
    with log.open("w") as handle:
        completed = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env, check=False,
                                   pass_fds=lock_fds)
    elapsed = time.perf_counter() - start
    if completed.returncode != 0:
        raise StudyError(f"step {name} exited {completed.returncode}; see {log}")
    print(f"[{name}] done in {elapsed:.0f} s", flush=True)
    return elapsed


def eval_command(plan: Plan, model: str, output_path: Path, adapter: str | None = None) -> list[str]:
    """The lmms-eval command of every evaluation of the study (the base and each point), on its backend; with
    ``--tasks-dir``, ``--include_path DIR`` (user tasks); ``adapter``: a PEFT adapter over ``model`` (a checkpoint
    tuned elsewhere), ``adapter=DIR`` in ``--model forgetbench``'s model_args."""
    command = evaluate.lmms_eval_command(model, plan.tasks, output_path, wrapper=plan.eval_backend,
                                         device=plan.device, batch_size=plan.batch_size, limit=plan.limit,
                                         num_processes=plan.num_processes, backend_args=dict(plan.backend_args))
    if adapter is not None:
        at = command.index("--model_args") + 1
        command[at] += f",adapter={adapter}"
    if plan.tasks_dir is not None:
        command += ["--include_path", plan.tasks_dir]
    return command


def evaluate_into(name: str, model: str, point: str, plan: Plan, state: State, env: dict,
                  adapter: str | None = None) -> tuple[float, list, dict]:
    """Evaluate ``model`` into ``OUT/eval/<point>`` through a scratch folder moved into place when lmms-eval has
    written its results: a half-written evaluation never looks finished. Returns the wall seconds of the lmms-eval
    process, its command and :func:`forgetbench.evaluate.throughput`."""
    logs, scratch, target = state.out / "logs", f"eval/.{point}.partial", f"eval/{point}"
    state.remove(scratch)
    (state.out / "eval").mkdir(exist_ok=True)
    command = eval_command(plan, model, state.out / scratch, adapter)
    seconds = run_logged(name, command, logs, env, state.lock_fds)
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
    if state.done(step) or arm.checkpoint is not None:  # a checkpoint tuned elsewhere has no training step
        return
    model_dir = state.out / "arms" / arm.name
    model = location if plan.revision is not None and location else plan.model
    overrides = ["--model_name_or_path", model, "--output_dir", str(model_dir), *arm.args]
    try:
        command = train.launch_command(arm.recipe, arm.config, overrides, accelerate_config=plan.accelerate_config)
    except train.RecipeError as exc:
        raise StudyError(str(exc)) from None
    state.remove(f"arms/{arm.name}")  # an unfinished run starts over: the recipe's save is atomic
    seconds = run_logged(step, command, state.out / "logs", env, state.lock_fds)
    if read_manifest(model_dir) is None:
        raise StudyError(f"step {step} wrote no checkpoint manifest in {model_dir}; see "
                         f"{log_path(state.out / 'logs', step)}")
    state.finish(step, seconds=seconds, command=command)


def points_of(arm: Arm, out: Path) -> list[tuple[str, Path]]:
    """The checkpoints an arm's training wrote, as (point name, folder): the arm's own, then one per extra point its
    mitigations wrote beside it (:func:`forgetbench.train.extra_points`: WiSE-FT's alphas become
    ``<arm>@wise-<alpha>``), each a point of the E-versus-F frontier without retraining. A point's name becomes a
    folder and part of lmms-eval's model_args: it is checked before it is evaluated."""
    if arm.checkpoint is not None:  # tuned elsewhere: evaluated from its own folder, as it is
        return [(arm.name, Path(arm.checkpoint))]
    folder = out / "arms" / arm.name
    return [(arm.name, folder)] + [(check_name("point", f"{arm.name}@{suffix}"), path)
                                   for suffix, path in train.extra_points(folder)]


def evaluate_point(name: str, model_dir: Path, plan: Plan, state: State, env: dict) -> None:
    step = f"eval/{name}"
    if state.done(step):
        return
    arm = next((a for a in plan.arms if a.name == name), None)
    if arm is not None and arm.adapter:  # a PEFT adapter tuned elsewhere: over the study's base
        model, adapter = model_location(plan.model, plan.revision), str(model_dir)
    else:
        model, adapter = str(model_dir), None
    seconds, command, speed = evaluate_into(step, model, name, plan, state, env, adapter)
    extra = {"tuned_elsewhere": True, "elsewhere": arm.elsewhere} if arm is not None and arm.tuned_elsewhere else {}
    state.finish(step, seconds=seconds, command=command, throughput=speed, **extra)


# -- the plan, before anything is spent (--dry-run) --------------------------------------------------------------


def _test_rows(task: str, tasks_dir: str | None) -> int | None:
    """A task's shipped test split size, where it is known offline (a forgetbench task or a user task whose YAML
    names a local parquet file); None otherwise (a hub data set)."""
    from forgetbench import suite
    from forgetbench.suite import user_tasks

    try:
        if task in suite.TASKS:
            yaml_path, config = suite.task_yaml(task), suite.task_config(task)
        elif tasks_dir is not None and user_tasks.is_user_task(task, tasks_dir):
            yaml_path, config = user_tasks.task_yaml(task, tasks_dir), user_tasks.task_config(task, tasks_dir)
        else:
            return None
        files = (config.get("dataset_kwargs") or {}).get("data_files") or {}
        split = config.get("test_split", "test")
        test = files.get(split) if isinstance(files, dict) else None
        if not isinstance(test, str) or not test.endswith(".parquet"):
            return None
        import pyarrow.parquet as pq

        return pq.read_metadata(Path(yaml_path).parent / test).num_rows
    except Exception:  # noqa: BLE001 - a count the plan cannot give is left out, never a refusal
        return None


def describe(plan: Plan, location: str, cache: Path) -> dict:
    """The plan as ``--dry-run --json`` prints it: the model, the tasks (with the documents each evaluation scores,
    where known offline), the arms (what each trains on, its replay, a checkpoint tuned elsewhere), the number of
    lmms-eval runs and whether the baseline is cached. Reads only: nothing is written, no cache entry locked."""
    from forgetbench.study.cache import cache_entry_done

    cached = cache_entry_done(cache, baseline_key(plan, location))
    arms, evaluations = [], 0 if cached else 1
    for arm in plan.arms:
        args = list(arm.args)
        replay = {}
        for flag in ("--replay_data", "--replay_tasks", "--replay_ratio"):
            if flag in args[:-1]:
                replay[flag.removeprefix("--")] = args[len(args) - 1 - args[::-1].index(flag) + 1]
        alphas = args[len(args) - args[::-1].index("--wise_alphas")] if "--wise_alphas" in args[:-1] else None
        points = [arm.name] + [f"{arm.name}@wise-{a}" for a in alphas.split(",")] if alphas else [arm.name]
        evaluations += len(points)
        entry = {"name": arm.name, "recipe": arm.recipe, "config": arm.config, "train_dataset": arm.train_dataset,
                 "train_dataset_note": arm.train_dataset_note, "replay": replay or None, "args": args,
                 "points": points}
        if arm.tuned_elsewhere:
            entry.update(tuned_elsewhere=True, checkpoint=arm.checkpoint, elsewhere=arm.elsewhere)
        arms.append(entry)
    documents = {}
    for task in plan.downstream + plan.upstream:
        rows = _test_rows(task, plan.tasks_dir)
        documents[task] = None if rows is None else min(rows, plan.limit) if plan.limit else rows
    return {"model": plan.model, "location": location, "downstream": list(plan.downstream),
            "upstream": list(plan.upstream), "arms": arms, "evaluations": evaluations,
            "baseline": "cached" if cached else "to run", "documents_per_evaluation": documents,
            "limit": plan.limit, "device": plan.device, "batch_size": plan.batch_size,
            "eval_backend": plan.eval_backend, "tasks_dir": plan.tasks_dir, "budget": plan.budget,
            "cache": str(cache)}


def render_plan(described: dict) -> str:
    """:func:`describe` in words."""
    d = described
    counts = d["documents_per_evaluation"]

    def tasks(names):
        return ", ".join(f"{t} ({counts[t]} docs)" if counts.get(t) is not None else f"{t} (count unknown offline)"
                         for t in names)

    lines = ["forgetbench study plan (dry run: nothing is written, nothing runs)",
             f"  model       {d['model']}" + (f" ({d['location']})" if d["location"] != d["model"] else ""),
             f"  downstream  {tasks(d['downstream'])}", f"  upstream    {tasks(d['upstream'])}",
             f"  limit       {d['limit'] if d['limit'] is not None else 'none (every document)'}; device "
             f"{d['device']}; batch size {d['batch_size']}; backend {d['eval_backend']}; budget {d['budget']} points"]
    if d["tasks_dir"]:
        lines.append(f"  tasks dir   {d['tasks_dir']} (lmms-eval --include_path, the recipes' --tasks_dir)")
    lines.append(f"  arms ({len(d['arms'])}):")
    for arm in d["arms"]:
        if arm.get("tuned_elsewhere"):
            lines.append(f"    {arm['name']}: {arm['train_dataset_note']}; evaluated from {arm['checkpoint']}, "
                         "no training")
            continue
        replay = f"; replay {', '.join(f'{k} {v}' for k, v in arm['replay'].items())}" if arm["replay"] else ""
        lines.append(f"    {arm['name']}: recipe {arm['recipe']} ({arm['config']}); trains on "
                     f"{arm['train_dataset_note']}{replay}; points {', '.join(arm['points'])}")
        lines.append(f"      overrides: {shlex.join(arm['args'])}")
    lines.append(f"  baseline    {d['baseline']} ({d['cache']})")
    lines.append(f"  evaluations {d['evaluations']} lmms-eval runs")
    return "\n".join(lines)
