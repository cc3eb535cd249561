"""``--launcher local|slurm``: the study's steps as jobs through submitit (facebookincubator/submitit), side by side.

The job graph: the baseline evaluation, each arm's training, and each point's evaluation, which depends on its arm's
training. Each job runs the very step function the sequential study runs (:mod:`forgetbench.study.steps`), through
:func:`run_step` (picklable: a module-level function of plain arguments). A job never writes ``study.json``: its
:class:`~forgetbench.study.state.JobState` writes the step's record to ``OUT/jobs/<step>.json`` (atomically), and the
controller, the one writer of ``study.json``, merges it. ``study.json["jobs"]`` holds each job's id, folder, logs and
state, so a controller killed at any point and started again re-attaches to the jobs still running, keeps what
finished and resubmits only what failed or never ran.

- ``local``: submitit's ``LocalExecutor``, at most ``--max-parallel`` jobs at a time; an evaluation is submitted
  when its training's record is in;
- ``slurm``: submitit's ``SlurmExecutor``; an evaluation is submitted with its training at once, held by
  ``--dependency=afterok:<training job id>``; the points an arm's mitigations add (WiSE-FT) are submitted when its
  training is done.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import os
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from forgetbench.errors import one_line
from forgetbench.study import steps
from forgetbench.study.errors import StudyError
from forgetbench.study.plan import Arm, Plan
from forgetbench.study.state import JobState, State, job_record

LAUNCHERS = ("none", "local", "slurm")
# A study YAML's `slurm:` mapping (and an arm's, for its training); flags override the study's.
SLURM_KEYS = {"partition": str, "gpus_per_job": int, "cpus_per_task": int, "time": (int, str), "account": str,
              "extra": dict}
ARM_SLURM_KEYS = {**SLURM_KEYS, "accelerate_config": str}
_ALIVE = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING", "UNKNOWN",
          "READY"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("launcher (docs/study.md#on-a-cluster)")
    group.add_argument("--launcher", choices=LAUNCHERS, default="none",
                       help="none: one step after another in this process (default); local: the steps as jobs on "
                            "this machine through submitit, --max-parallel at a time; slurm: the steps as Slurm jobs")
    group.add_argument("--max-parallel", type=int, default=2, help="--launcher local: jobs at a time (default: 2)")
    group.add_argument("--detach", action="store_true",
                       help="--launcher slurm: submit the jobs and exit; rerun the same command to re-attach, "
                            "compare and report")
    group.add_argument("--slurm-partition", default=None)
    group.add_argument("--slurm-gpus-per-job", type=int, default=None)
    group.add_argument("--slurm-cpus-per-task", type=int, default=None)
    group.add_argument("--slurm-time", default=None, help="minutes, or Slurm's [D-]HH:MM:SS")
    group.add_argument("--slurm-account", default=None)
    group.add_argument("--slurm-extra", action="append", default=[], metavar="KEY=VALUE",
                       help="another #SBATCH --KEY=VALUE (repeatable), e.g. qos=high")


# -- the study YAML's slurm: mappings ----------------------------------------------------------------------------


def _checked(mapping: object, where: str, keys: dict) -> dict:
    if not isinstance(mapping, dict):
        raise StudyError(f"{where}: must map {', '.join(keys)} to values, not {mapping!r}")
    unknown = set(mapping) - set(keys)
    if unknown:
        raise StudyError(f"{where}: unknown keys {', '.join(sorted(map(str, unknown)))} (known: {', '.join(keys)})")
    for key, value in mapping.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, keys[key])):
            raise StudyError(f"{where}: {key}: {value!r} is not a {getattr(keys[key], '__name__', 'number or text')}")
    return {k: v for k, v in mapping.items() if v is not None}


@contextlib.contextmanager
def without_slurm(args) -> Iterator[tuple[object, dict, dict]]:
    """``args`` with its study YAML's ``slurm:`` mappings taken out (plan.py knows nothing of them), the study's
    Slurm settings and each arm's. The stripped YAML is a temporary copy; refusals name the user's file."""
    path = getattr(args, "config", None)
    loaded = None
    if path is not None and Path(path).is_file():
        import yaml

        with contextlib.suppress(yaml.YAMLError, UnicodeDecodeError):
            loaded = yaml.safe_load(Path(path).read_text())
    if not (isinstance(loaded, dict) and "arms" in loaded
            and ("slurm" in loaded or any(isinstance(a, dict) and "slurm" in a for a in (loaded["arms"] or {}).values()
                                          if isinstance(loaded["arms"], dict)))):
        yield args, {}, {}
        return
    study = _checked(loaded.pop("slurm", None) or {}, f"--config {path}: slurm", SLURM_KEYS)
    arms = {}
    for name, spec in loaded["arms"].items():
        if isinstance(spec, dict) and "slurm" in spec:
            arms[name] = _checked(spec.pop("slurm") or {}, f"--config {path}: arm '{name}': slurm", ARM_SLURM_KEYS)
    import yaml

    with tempfile.TemporaryDirectory(prefix="forgetbench-study-") as tmp:
        stripped = Path(tmp) / Path(path).name
        stripped.write_text(yaml.safe_dump(loaded, sort_keys=False))
        changed = copy.copy(args)
        changed.config = stripped
        try:
            yield changed, study, arms
        except StudyError as exc:
            raise StudyError(str(exc).replace(str(stripped), str(path))) from None


def slurm_settings(args, study: dict, arm: dict | None = None) -> dict:
    """Defaults < the study YAML's slurm: < flags < (for a training) the arm's slurm:."""
    settings = {"time": 24 * 60, "gpus_per_job": 0, **study}
    flags = {"partition": args.slurm_partition, "gpus_per_job": args.slurm_gpus_per_job,
             "cpus_per_task": args.slurm_cpus_per_task, "time": args.slurm_time, "account": args.slurm_account}
    settings.update({k: v for k, v in flags.items() if v is not None})
    extra = dict(settings.get("extra") or {})
    for item in args.slurm_extra:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise StudyError(f"--slurm-extra {item}: must be KEY=VALUE (an #SBATCH option)")
        extra[key.removeprefix("--")] = value
    settings["extra"] = extra
    if arm:
        settings.update({k: v for k, v in arm.items() if k != "extra"})
        settings["extra"] = {**extra, **(arm.get("extra") or {})}
    return settings


def _minutes(time_value: object) -> float:
    if isinstance(time_value, int):
        return float(time_value)
    text = str(time_value)
    days, _, rest = text.rpartition("-")
    parts = [float(p) for p in rest.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0.0)
    return (float(days or 0) * 24 + parts[0]) * 60 + parts[1] + parts[2] / 60


# -- a job ---------------------------------------------------------------------------------------------------------


def run_step(kind: str, plan: Plan, out: str, arm: Arm | None, point: str | None, folder: str | None, cache: str,
             env: dict, location: str) -> str:
    """One step of the study in a job: the sequential study's own step function, recording into
    ``OUT/jobs/<step>.json``."""
    state = JobState(Path(out), plan)
    if kind == "baseline":
        steps.baseline(plan, state, Path(cache), env, location)
        return "baseline"
    if kind == "train":
        steps.train_arm(arm, plan, state, env, location)
        return f"train/{arm.name}"
    steps.evaluate_point(point, Path(folder), plan, state, env)
    return f"eval/{point}"


@dataclasses.dataclass
class Node:
    step: str
    kind: str
    arm: Arm | None = None
    point: str | None = None
    folder: Path | None = None
    after: str | None = None  # the step it depends on


class Launcher:
    """Submits, re-creates and watches submitit jobs of one kind."""

    def __init__(self, kind: str, out: Path, args, study_slurm: dict, arm_slurm: dict):
        import submitit

        self.kind, self.args, self.folder = kind, args, out / "jobs" / "submitit" / "%j"
        self.study_slurm, self.arm_slurm = study_slurm, arm_slurm
        self.submitit = submitit

    def settings(self, node: Node) -> dict:
        return slurm_settings(self.args, self.study_slurm, self.arm_slurm.get(node.arm.name) if node.kind == "train"
                              and node.arm else None)

    def submit(self, node: Node, after_id: str | None, call: tuple):
        settings = self.settings(node)
        name = f"forgetbench-{node.step.replace('/', '_')}"
        try:
            return self._executor(node, after_id, settings, name).submit(run_step, *call)
        except Exception as exc:  # noqa: BLE001 - no sbatch or srun here, sbatch refused: one line
            raise StudyError(f"[{node.step}] could not be submitted ({type(exc).__name__}: {one_line(exc)})") from None

    def _executor(self, node: Node, after_id: str | None, settings: dict, name: str):
        if self.kind == "local":
            executor = self.submitit.LocalExecutor(folder=self.folder)
            executor.update_parameters(timeout_min=_minutes(settings["time"]), name=name)
        else:
            executor = self.submitit.SlurmExecutor(folder=self.folder)
            params = {"job_name": name, "time": settings["time"], "use_srun": True}
            for ours, theirs in (("partition", "partition"), ("cpus_per_task", "cpus_per_task"),
                                 ("account", "account")):
                if settings.get(ours) is not None:
                    params[theirs] = settings[ours]
            if settings.get("gpus_per_job"):
                params["gpus_per_node"] = settings["gpus_per_job"]
            if settings["extra"]:
                params["additional_parameters"] = dict(settings["extra"])
            if after_id is not None:
                params["dependency"] = f"afterok:{after_id}"
            executor.update_parameters(**params)
        return executor

    def job(self, info: dict):
        folder = Path(info["folder"]).parent / "%j"
        if self.kind == "local":
            return self.submitit.LocalJob(folder, info["job_id"])
        return self.submitit.SlurmJob(folder, info["job_id"])

    def alive(self, job) -> bool:
        if self.kind == "local":
            process = getattr(job, "_process", None)
            if process is not None:
                return process.poll() is None
            if job.paths.result_pickle.exists():
                return False
            try:
                os.kill(int(job.job_id), 0)
            except (ProcessLookupError, ValueError):
                return False
            except PermissionError:
                return True
            return True
        try:
            state = job.get_info(mode="force").get("State", "UNKNOWN")
        except Exception:  # noqa: BLE001 - sacct hiccup: still alive until it says otherwise
            return True
        return state.split()[0] in _ALIVE

    def cancel(self, job) -> None:
        with contextlib.suppress(Exception):
            if self.kind == "local":
                os.kill(int(job.job_id), signal.SIGINT)
            else:
                job.cancel(check=False)

    @staticmethod
    def logs(job) -> tuple[str, str]:
        return str(job.paths.stdout), str(job.paths.stderr)


def run_graph(args, plan: Plan, location: str, state: State, env: dict, cache: Path, study_slurm: dict,
              arm_slurm: dict) -> tuple[list[tuple[str, Path]], list[dict]]:
    """Run the study's job graph to its end (or, with ``--detach``, submit it and return). Returns the points whose
    evaluation finished, in the plan's order, and the missing steps ``[{step, job_id, log}]``."""
    out = state.out
    if args.max_parallel < 1:
        raise StudyError(f"--max-parallel {args.max_parallel}: must be at least 1")
    launcher = Launcher(args.launcher, out, args, study_slurm, arm_slurm)
    jobs = state.data.setdefault("jobs", {})
    nodes: dict[str, Node] = {"baseline": Node("baseline", "baseline")}
    for arm in plan.arms:
        nodes[f"train/{arm.name}"] = Node(f"train/{arm.name}", "train", arm)
        nodes[f"eval/{arm.name}"] = Node(f"eval/{arm.name}", "eval", arm, arm.name, out / "arms" / arm.name,
                                         f"train/{arm.name}")

    def add_points(arm: Arm) -> None:
        for name, folder in steps.points_of(arm, out)[1:]:
            nodes.setdefault(f"eval/{name}", Node(f"eval/{name}", "eval", arm, name, folder, f"train/{arm.name}"))

    running: dict[str, object] = {}
    failed: dict[str, dict] = {}

    def save() -> None:
        state.finish_jobs()

    def merge(step: str) -> bool:
        record = job_record(out, step)
        if state.done(step) is None:
            if not record.is_file():
                return False
            import json

            jobs[step]["state"] = "COMPLETED"
            jobs[step]["finished"] = time.time()
            state.finish(step, **json.loads(record.read_text()))
        print(f"[{step}] done (job {jobs.get(step, {}).get('job_id')})", flush=True)
        return True

    # re-attach: what a previous controller submitted
    for step, info in list(jobs.items()):
        if state.done(step) is not None or step not in nodes and not step.startswith("eval/"):
            continue
        if merge(step):
            continue
        job = launcher.job(info)
        if launcher.alive(job):
            running[step] = job
            print(f"[{step}] re-attached to job {info['job_id']} ({info['state']})", flush=True)
        else:
            print(f"[{step}] job {info['job_id']} did not finish; submitting it again", flush=True)
            del jobs[step]
    for arm in plan.arms:
        if state.done(f"train/{arm.name}"):
            add_points(arm)
    save()

    def job_id_of(step: str) -> str | None:
        return jobs[step]["job_id"] if step in running else None

    def fail(step: str, job) -> None:
        stdout, stderr = launcher.logs(job)
        log = stderr if Path(stderr).is_file() and Path(stderr).stat().st_size else stdout
        jobs[step]["state"] = "FAILED"
        failed[step] = {"step": step, "job_id": str(job.job_id), "log": log}
        print(f"[{step}] job {job.job_id} failed; see {log} (the other steps go on)", flush=True)
        for other, node in nodes.items():  # what depends on it will not run
            if node.after == step and state.done(other) is None and other not in failed:
                if other in running:
                    launcher.cancel(running.pop(other))
                    jobs[other]["state"] = "CANCELLED"
                failed[other] = {"step": other, "job_id": jobs.get(other, {}).get("job_id"),
                                 "log": f"not run: {step} failed"}

    while True:
        for step, job in list(running.items()):
            if merge(step):
                del running[step]
                node = nodes.get(step)
                if node is not None and node.kind == "train":
                    add_points(node.arm)
            elif not launcher.alive(job):
                if merge(step):  # the record landed between the two looks
                    del running[step]
                    continue
                del running[step]
                fail(step, job)
        for step, node in list(nodes.items()):
            if state.done(step) is not None or step in running or step in failed:
                continue
            after_done = node.after is None or state.done(node.after) is not None
            if args.launcher == "local":
                if not after_done or len(running) >= args.max_parallel:
                    continue
                after_id = None
            else:
                if not after_done and node.after not in running:
                    continue
                after_id = None if after_done else job_id_of(node.after)
            state.remove(f"jobs/{step.replace('/', '_')}.json")
            call = ("baseline" if node.kind == "baseline" else node.kind, plan, str(out), node.arm, node.point,
                    str(node.folder) if node.folder else None, str(cache), env, location)
            job = launcher.submit(node, after_id, call)
            stdout, stderr = launcher.logs(job)
            jobs[step] = {"job_id": str(job.job_id), "launcher": args.launcher,
                          "folder": str(Path(job.paths.folder)), "stdout": stdout, "stderr": stderr,
                          "state": "SUBMITTED", "submitted": time.time(), **({"after": after_id} if after_id else {})}
            running[step] = job
            print(f"[{step}] submitted job {job.job_id}" + (f" (afterok:{after_id})" if after_id else "")
                  + f"; log {stdout}", flush=True)
        for step in running:  # a local job runs once submitted; a Slurm job may wait in the queue
            jobs[step]["state"] = "RUNNING" if args.launcher == "local" else "SUBMITTED"
        save()
        if not running or getattr(args, "detach", False):
            break
        time.sleep(1.0)
    if getattr(args, "detach", False) and running:
        return [], []
    points = [(name, out / "eval" / name) for arm in plan.arms
              for name, _ in (steps.points_of(arm, out) if state.done(f"train/{arm.name}") else [])
              if state.done(f"eval/{name}") is not None]
    return points, list(failed.values())


def detached(args) -> bool:
    return args.launcher == "slurm" and getattr(args, "detach", False)


__all__ = ["ARM_SLURM_KEYS", "LAUNCHERS", "SLURM_KEYS", "Launcher", "Node", "add_arguments", "detached", "run_graph",
           "run_step", "slurm_settings", "without_slurm"]
