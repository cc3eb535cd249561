"""``forgetbench study``: which way of tuning keeps the model itself, in one command (the embedded lab by default).

1. evaluate the base model on the downstream and upstream tasks with the stock ``lmms-eval`` CLI and
   ``--model forgetbench`` (batched), once: the result is cached, keyed by everything pairing checks;
2. per arm (a recipe plus overrides), fine-tune with ``accelerate launch recipes/<recipe>.py --config ...``;
3. evaluate each fine-tuned checkpoint the same way;
4. compare every arm with the base: E, F, O with intervals, then ``report.html``.

Every step records its state atomically in ``OUT/study.json``; rerunning the same command after a crash continues
from the last finished step. Every artefact stays in one folder::

    OUT/study.json  OUT/eval/pre/  OUT/arms/<arm>/  OUT/eval/<arm>/  OUT/compare.{json,md,csv}  OUT/report.html
    OUT/logs/<step>.log  OUT/summary.txt

The parts: :mod:`~forgetbench.study.plan` (what the study is, from the command line and a study YAML),
:mod:`~forgetbench.study.state` (``study.json``), :mod:`~forgetbench.study.steps` (each step, the baseline cache),
:mod:`~forgetbench.study.report` (``report.html``); this module runs them in order.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from forgetbench import compare
from forgetbench.checkpoint import LAB_MODEL_ALIAS
from forgetbench.errors import guarded
from forgetbench.outputs import write_all_atomic
from forgetbench.study.cache import baseline_key, cache_root
from forgetbench.study.errors import StudyError
from forgetbench.study.plan import (
    DEFAULT_ARMS,
    Arm,
    Plan,
    check_name,
    config_family,
    model_location,
    model_type,
    plan_from_args,
)
from forgetbench.study.plan import configure_parser as _plan_parser
from forgetbench.study.state import LOCK_NAME, OWNED, STATE_NAME, State, check_out, study_lock
from forgetbench.study.steps import baseline, eval_command, evaluate_point, log_path, points_of, train_arm

__all__ = ["DEFAULT_ARMS", "LOCK_NAME", "OWNED", "STATE_NAME", "Arm", "Plan", "State", "StudyError", "baseline_key",
           "cache_root", "check_name", "config_family", "configure_parser", "eval_command", "log_path",
           "model_location", "model_type", "plan_from_args", "points_of", "run", "study"]


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """The plan's options (:func:`forgetbench.study.plan.configure_parser`) and the launcher's
    (:func:`forgetbench.study.launch.add_arguments`)."""
    from forgetbench.study import launch

    _plan_parser(parser)
    launch.add_arguments(parser)


def study(args) -> dict:
    from forgetbench.study import launch

    for name, default in (("launcher", "none"), ("max_parallel", 2), ("detach", False), ("slurm_extra", [])):
        if not hasattr(args, name):  # a Namespace built before the launcher existed
            setattr(args, name, default)
    with launch.without_slurm(args) as (planned, study_slurm, arm_slurm):
        plan = plan_from_args(planned)
    unknown = set(arm_slurm) - {arm.name for arm in plan.arms}
    if unknown:
        raise StudyError(f"--config {args.config}: slurm settings for arms the study does not have: "
                         f"{', '.join(sorted(unknown))}")
    args._slurm = (study_slurm, arm_slurm)
    args.cache_dir = planned.cache_dir  # as the plan resolved it (a study YAML's cache_dir:)
    location = model_location(plan.model, plan.revision)
    if getattr(args, "dry_run", False):  # the plan, before anything is spent: nothing written, no cache touched
        from forgetbench.study.steps import describe, render_plan

        described = describe(plan, location, cache_root(args.cache_dir))
        print(json.dumps(described) if getattr(args, "json", False) else render_plan(described), flush=True)
        return described
    out = args.out.resolve()
    check_out(out, args.overwrite)  # before the lock: nothing is written into a folder that is not the study's
    out.mkdir(parents=True, exist_ok=True)
    with study_lock(out) as lock_fd:
        state = State.open(out, plan, args.overwrite)
        state.lock_fds = (lock_fd,)
        return _run_study(args, plan, location, state)


def _run_study(args, plan: Plan, location: str, state: State) -> dict:
    out = state.out
    env = dict(os.environ)
    if plan.model == LAB_MODEL_ALIAS:  # the lab needs nothing from the hub: never wait on it
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("HF_DATASETS_OFFLINE", "1")
    from tqdm.auto import tqdm

    def announce(step: str) -> None:
        if state.done(step):
            print(f"[{step}] already done (resumed from {state.file})", flush=True)

    missing: list[dict] = []
    if getattr(args, "launcher", "none") != "none":
        from forgetbench.study import launch

        for step in ("baseline", *(f"train/{arm.name}" for arm in plan.arms)):
            announce(step)
        points, missing = launch.run_graph(args, plan, location, state, env, cache_root(args.cache_dir),
                                           *getattr(args, "_slurm", ({}, {})))
        state.data["missing"] = missing
        state.finish_jobs()
        if launch.detached(args) and not state.done("baseline") or launch.detached(args) and not points:
            print(f"jobs submitted; rerun the same command to re-attach, compare and report ({state.file})",
                  flush=True)
            return {}
        if state.done("baseline") is None:
            raise StudyError("the baseline evaluation failed: nothing to compare with; " + "; ".join(
                f"{m['step']} (job {m['job_id']}): {m['log']}" for m in missing))
        if not points:
            raise StudyError("no arm's evaluation finished: " + "; ".join(
                f"{m['step']} (job {m['job_id']}): {m['log']}" for m in missing))
    else:
        from forgetbench.study.progress import step_progress

        logs = out / "logs"
        announce("baseline")
        with step_progress("baseline", log_path(logs, "eval_pre")):
            baseline(plan, state, cache_root(args.cache_dir), env, location)
        points = []
        for arm in tqdm(plan.arms, desc="forgetbench study", unit="arm", file=sys.stdout):
            announce(f"train/{arm.name}")
            with step_progress(f"train/{arm.name}", log_path(logs, f"train/{arm.name}")):
                train_arm(arm, plan, state, env, location)
            for name, folder in points_of(arm, out):
                announce(f"eval/{name}")
                with step_progress(f"eval/{name}", log_path(logs, f"eval/{name}")):
                    evaluate_point(name, folder, plan, state, env)
                points.append((name, out / "eval" / name))

    start = time.perf_counter()
    try:
        comparison = compare.compare_runs(out / "eval" / "pre", points, list(plan.downstream), list(plan.upstream),
                                          compare.CompareOptions(budget=plan.budget))
        comparison.write(out=out)
    except compare.CompareError as exc:
        raise StudyError(f"compare refused the runs: {exc}") from None
    state.finish("compare", seconds=time.perf_counter() - start)

    from forgetbench.study.report import write_report

    start = time.perf_counter()
    write_report(out, plan, state.data, comparison, [name for name, _ in points])
    state.finish("report", seconds=time.perf_counter() - start)
    summary = [f"forgetbench study: {plan.model}, points {', '.join(name for name, _ in points)}", comparison.table(),
               "seconds: " + ", ".join(f"{k} {v.get('seconds') or 0:.0f}" for k, v in state.data["steps"].items()),
               "samples/s (whole lmms-eval process): " + ", ".join(
                   f"{k} {t['samples']} in {t['wall_seconds']:.0f} s = {t['samples_per_second']:.2f}/s"
                   + (" (cached)" if t.get("from_cache") else "")
                   for k, t in ((k, v.get("throughput")) for k, v in state.data["steps"].items())
                   if t and t.get("samples_per_second") is not None)]
    if missing:
        summary.append("missing (not compared): " + "; ".join(
            f"{m['step']} (job {m['job_id']}; log {m['log']})" for m in missing))
    write_all_atomic({out / "summary.txt": ("\n".join(summary) + "\n").encode()})
    print(comparison.table())
    for m in missing:
        print(f"missing: {m['step']} (job {m['job_id']}; log {m['log']})")
    print(f"artefacts in {out} (report: {out / 'report.html'})")
    return comparison.report


def run(args: argparse.Namespace) -> int:
    def action() -> None:
        try:
            study(args)  # looked up at call time: tests stand in for it
        except BrokenPipeError:  # stdout closed early: guarded's exit 1, not a file error
            raise
        except OSError as exc:  # disk full, no permission: every state file is written all-or-nothing, so the last
            # finished step is intact and a rerun resumes from it
            raise StudyError(f"{exc.filename or 'a file'}: {exc.strerror or exc} (the steps finished so far are "
                             "kept; rerun to continue)") from None

    return guarded("forgetbench study", action)
