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
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from forgetbench import __version__, compare, evaluate, recipes_path, suite, tasks_path, train
from forgetbench.checkpoint import LAB_MODEL_ALIAS, read_manifest, resolve_model
from forgetbench.outputs import json_bytes, write_all_atomic

STATE_NAME = "study.json"
# The default lab study: a reparameterization arm, full selective tuning (with a WiSE-FT sweep between base and
# tuned), a partial selective arm, and full selective tuning with 20 % replay of the upstream tasks.
DEFAULT_ARMS = {
    "lora": {"recipe": "lora"},
    "full_st": {"recipe": "full_st", "args": ["--wise_alphas", "0.25,0.5,0.75"]},
    "top_layers": {"recipe": "top_layers"},
    "full_st+replay": {"recipe": "full_st", "args": [
        "--replay_tasks", ",".join(suite.tasks_in_role("upstream", suite.lab.PREFIX)), "--replay_ratio", "0.2"]},
}
# Recipe config folder per model family, by a substring of the model's name (first match wins).
CONFIG_FAMILIES = (("llava-onevision", "llava-onevision-0.5b"), ("qwen2.5-vl", "qwen2.5-vl-3b"),
                   ("qwen2-vl", "qwen2-vl-2b"), ("llava-1.5", "llava-1.5-7b"))


class StudyError(Exception):
    """A step failed or the input is unusable; printed as one line, exit 2."""


@dataclass(frozen=True)
class Arm:
    name: str
    recipe: str
    config: str  # the recipe config the arm trains with
    args: tuple[str, ...] = ()  # the arm's own overrides, then --recipe-args


@dataclass(frozen=True)
class Plan:
    model: str
    downstream: tuple[str, ...]
    upstream: tuple[str, ...]
    arms: tuple[Arm, ...]
    limit: int | None = None
    device: str = "cpu"
    batch_size: int = 8
    num_processes: int = 1
    accelerate_config: str | None = None
    eval_backend: str = "forgetbench"  # lmms-eval's --model for every evaluation (evaluate.BACKENDS)
    backend_args: tuple[tuple[str, object], ...] = ()  # vLLM's tensor_parallel_size, gpu_memory_utilization

    @property
    def tasks(self) -> str:
        return ",".join(self.downstream + self.upstream)

    def signature(self) -> dict:
        """What makes two studies the same study (a rerun resumes only the same one), as JSON reads it back. The
        default backend adds nothing, so a study started before backends existed still resumes."""
        fields = asdict(self)
        if self.eval_backend == "forgetbench" and not self.backend_args:
            del fields["eval_backend"], fields["backend_args"]
        return json.loads(json.dumps({"version": 1, **fields}))


def _lab_tasks(role: str) -> str:
    return ",".join(suite.tasks_in_role(role, suite.lab.PREFIX))


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.splitlines()[0]
    parser.add_argument("--out", type=Path, default=Path("runs/lab-study"), help="output folder (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="start over, replacing what --out holds")
    parser.add_argument("--model", default=None, help="base model folder or hub id (default: the lab model)")
    parser.add_argument("--methods", default=None, metavar="RECIPE[,RECIPE...]",
                        help=f"arms, one recipe each (default: {', '.join(DEFAULT_ARMS)})")
    parser.add_argument("--recipe", default=None, help="a single arm (same as --methods RECIPE)")
    parser.add_argument("--config", type=Path, default=None,
                        help="a study YAML (model, downstream, upstream, limit, arms), or, with --recipe, the "
                             "recipe config (default: recipes/configs/<family>/<recipe>.yaml)")
    parser.add_argument("--recipe-args", default="", help='overrides for every arm, e.g. "--max_steps 50"')
    parser.add_argument("--downstream", default=None, help=f"default: {_lab_tasks('downstream')}")
    parser.add_argument("--upstream", default=None, help=f"default: {_lab_tasks('upstream')}")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N documents per task")
    parser.add_argument("--device", default="cpu", help="lmms-eval device (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=8, help="evaluation batch size (default: %(default)s)")
    parser.add_argument("--num-processes", type=int, default=1, help="data-parallel lmms-eval processes")
    parser.add_argument("--eval-backend", choices=evaluate.BACKENDS, default="forgetbench",
                        help="lmms-eval --model for every evaluation: forgetbench (batched, every task kind) or "
                             "vllm (lmms-eval's own vLLM wrapper: needs vllm and a GPU; generation tasks only) "
                             "(default: %(default)s)")
    parser.add_argument("--tensor-parallel-size", type=int, default=None,
                        help="--eval-backend vllm: GPUs per model (default: lmms-eval's 1)")
    parser.add_argument("--gpu-memory-utilization", type=float, default=None,
                        help="--eval-backend vllm: share of GPU memory vLLM may take (default: lmms-eval's 0.8)")
    parser.add_argument("--accelerate-config", type=Path, default=None,
                        help="an accelerate config for every arm's training (recipes/accelerate/*.yaml)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="baseline cache (default: $XDG_CACHE_HOME/forgetbench/baselines)")


def _config_family(model: str) -> str:
    if model == LAB_MODEL_ALIAS:
        return "lab"
    name = model.lower()
    found = next((folder for key, folder in CONFIG_FAMILIES if key in name), None)
    if found is None:
        raise StudyError(f"--model {model}: no recipe config family matches its name "
                         f"({', '.join(k for k, _ in CONFIG_FAMILIES)}); pass arm configs in --config study.yaml")
    return found


def _arm(name: str, spec: dict, model: str, recipe_args: list[str], where: str) -> Arm:
    unknown = set(spec) - {"recipe", "config", "args"}
    if unknown:
        raise StudyError(f"{where}: arm '{name}': unknown keys {', '.join(sorted(unknown))} (known: recipe, config, "
                         f"args)")
    recipe = spec.get("recipe", name)
    if not isinstance(recipe, str) or not (recipes_path() / f"{recipe}.py").is_file():
        raise StudyError(f"--recipe {recipe}: no such recipe ({recipes_path() / f'{recipe}.py'})")
    if recipe == "prompt_tuning":
        raise StudyError(f"arm '{name}': prompt tuning cannot be evaluated faithfully: --model forgetbench merges "
                         "adapters and a soft prompt cannot be merged (it would be evaluated as the base model)")
    config = spec.get("config") or recipes_path() / "configs" / _config_family(model) / f"{recipe}.yaml"
    if not Path(config).is_file():
        raise StudyError(f"--config {config}: no such file")
    args = spec.get("args", [])
    args = shlex.split(args) if isinstance(args, str) else [str(a) for a in args]
    return Arm(name, recipe, str(Path(config).resolve()), tuple(args + recipe_args))


def plan_from_args(args) -> Plan:
    """The study the command line (and a study YAML) asks for, checked before anything is written."""
    study_yaml: dict = {}
    recipe_config = None
    if args.config is not None:
        if not args.config.is_file():
            raise StudyError(f"--config {args.config}: no such file")
        import yaml

        loaded = yaml.safe_load(args.config.read_text())
        if isinstance(loaded, dict) and "arms" in loaded:
            study_yaml = loaded
        else:  # a recipe config for the single --recipe arm
            recipe_config = str(args.config)
    known = {"model", "downstream", "upstream", "limit", "arms"}
    if set(study_yaml) - known:
        raise StudyError(f"--config {args.config}: unknown keys {', '.join(sorted(set(study_yaml) - known))} "
                         f"(known: {', '.join(sorted(known))})")
    model = args.model or study_yaml.get("model") or LAB_MODEL_ALIAS
    if model != LAB_MODEL_ALIAS and not Path(model).exists() and "/" not in model:
        raise StudyError(f"--model {model}: not a folder, a hub id or {LAB_MODEL_ALIAS}")

    def tasks(option: str, role: str) -> tuple[str, ...]:
        value = getattr(args, option) or study_yaml.get(option) or _lab_tasks(role)
        return tuple(value.split(",") if isinstance(value, str) else value)

    recipe_args = shlex.split(args.recipe_args)
    if study_yaml:
        if not isinstance(study_yaml["arms"], dict) or not study_yaml["arms"]:
            raise StudyError(f"--config {args.config}: 'arms' must map arm names to {{recipe, config, args}}")
        specs = {name: spec or {} for name, spec in study_yaml["arms"].items()}
    else:
        if args.recipe or args.methods:
            names = [args.recipe] if args.recipe else args.methods.split(",")
            specs = {name: ({"config": recipe_config} if recipe_config else {}) for name in names}
        else:
            specs = DEFAULT_ARMS
    arms = tuple(_arm(name, spec, model, recipe_args, f"--config {args.config}") for name, spec in specs.items())
    if any(arm.name in ("pre", "post") or "/" in arm.name for arm in arms):
        raise StudyError("arm names 'pre', 'post' and names with '/' are reserved")
    limit = args.limit if args.limit is not None else study_yaml.get("limit")
    if args.accelerate_config is not None and not args.accelerate_config.is_file():
        raise StudyError(f"--accelerate-config {args.accelerate_config}: no such file")
    downstream, upstream = tasks("downstream", "downstream"), tasks("upstream", "upstream")
    backend = getattr(args, "eval_backend", "forgetbench")
    backend_args = _backend_args(args, backend, downstream + upstream)
    return Plan(model, downstream, upstream, arms, limit, args.device, args.batch_size, args.num_processes,
                str(args.accelerate_config.resolve()) if args.accelerate_config else None, backend, backend_args)


def _backend_args(args, backend: str, tasks: tuple[str, ...]) -> tuple[tuple[str, object], ...]:
    """The evaluation backend's own settings, checked before anything is written: vLLM must import here, run in
    one process (it spreads a model over GPUs itself, --tensor-parallel-size), and every task must generate."""
    given = {"tensor_parallel_size": getattr(args, "tensor_parallel_size", None),
             "gpu_memory_utilization": getattr(args, "gpu_memory_utilization", None)}
    if backend != "vllm":
        for key, value in given.items():
            if value is not None:
                raise StudyError(f"--{key.replace('_', '-')}: only for --eval-backend vllm (the backend is {backend})")
        return ()
    missing = evaluate.vllm_missing()
    if missing:
        raise StudyError(f"--eval-backend vllm: vllm cannot be imported here ({missing}); install vllm on a machine "
                         "with a CUDA GPU, or use --eval-backend forgetbench")
    if args.num_processes > 1:
        raise StudyError(f"--num-processes {args.num_processes}: not with --eval-backend vllm (one lmms-eval process; "
                         "spread a model over GPUs with --tensor-parallel-size)")
    if given["tensor_parallel_size"] is not None and given["tensor_parallel_size"] < 1:
        raise StudyError(f"--tensor-parallel-size {given['tensor_parallel_size']}: must be at least 1")
    if given["gpu_memory_utilization"] is not None and not 0 < given["gpu_memory_utilization"] <= 1:
        raise StudyError(f"--gpu-memory-utilization {given['gpu_memory_utilization']}: must be in (0, 1]")
    # lmms-eval 0.7.3's vLLM wrapper has no loglikelihood (it asserts): closed-set tasks would fail mid-study.
    # Only forgetbench's own tasks are checked; lmms-eval's reused tasks are the generation tasks of the paper.
    closed = [t for t in tasks if t in suite.TASKS and suite.task_config(t).get("output_type") != "generate_until"]
    if closed:
        raise StudyError(f"--eval-backend vllm: lmms-eval's vllm wrapper cannot score closed-set tasks (it has no "
                         f"loglikelihood): {', '.join(closed)}")
    return tuple((k, v) for k, v in given.items() if v is not None)


# -- state -------------------------------------------------------------------------------------------------------


class State:
    """``OUT/study.json``: the plan and every finished step, rewritten atomically after each step."""

    def __init__(self, out: Path, plan: Plan):
        self.out, self.file = out, out / STATE_NAME
        self.data = {"signature": plan.signature(), "steps": {}}

    @classmethod
    def open(cls, out: Path, plan: Plan, overwrite: bool) -> State:
        state = cls(out, plan)
        if overwrite and out.exists():
            shutil.rmtree(out)
        if state.file.is_file():
            stored = json.loads(state.file.read_text())
            if stored.get("signature") != state.data["signature"]:
                raise StudyError(f"--out {out}: holds another study (different settings); pass --overwrite to "
                                 "replace it")
            state.data = stored
        elif out.exists() and any(out.iterdir()):
            raise StudyError(f"--out {out}: exists and is not empty; pass --overwrite to replace it")
        (out / "logs").mkdir(parents=True, exist_ok=True)
        return state

    def done(self, step: str) -> dict | None:
        return self.data["steps"].get(step)

    def finish(self, step: str, **record) -> None:
        self.data["steps"][step] = record
        write_all_atomic({self.file: json_bytes(self.data)})


# -- steps -------------------------------------------------------------------------------------------------------


def _run_logged(name: str, command: list[str], logs: Path, env: dict) -> float:
    log = logs / f"{name.replace('/', '_')}.log"
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


def _evaluate_into(name: str, model: str, target: Path, plan: Plan, logs: Path,
                   env: dict) -> tuple[float, list, dict]:
    """Evaluate into a scratch folder, then move it into place: a half-written evaluation never looks finished.
    Returns the wall seconds of the lmms-eval process, its command and :func:`forgetbench.evaluate.throughput`."""
    scratch = target.parent / f".{target.name}.partial"
    shutil.rmtree(scratch, ignore_errors=True)
    command = eval_command(plan, model, scratch)
    seconds = _run_logged(name, command, logs, env)
    try:
        speed = evaluate.throughput(scratch, seconds)
    except evaluate.EvaluationError as exc:
        raise StudyError(f"step {name} wrote no results ({exc}); see {logs / (name + '.log')}") from None
    shutil.rmtree(target, ignore_errors=True)
    os.replace(scratch, target)
    return seconds, command, speed


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


def _baseline(plan: Plan, state: State, cache: Path, env: dict) -> None:
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
    seconds, command, speed = _evaluate_into("eval_pre", resolve_model(plan.model), target, plan, out / "logs", env)
    scratch = cache / f".{entry.name}.partial"
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.copytree(target, scratch / "eval")
    (scratch / "DONE").write_text(json.dumps({"model": plan.model, "tasks": plan.tasks, "limit": plan.limit,
                                              "throughput": speed}) + "\n")
    shutil.rmtree(entry, ignore_errors=True)
    os.replace(scratch, entry)
    state.finish("baseline", seconds=seconds, cached=None, stored=str(entry), command=command, throughput=speed)


def _train(arm: Arm, plan: Plan, state: State, env: dict) -> None:
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
    seconds = _run_logged(step, command, state.out / "logs", env)
    if read_manifest(model_dir) is None:
        raise StudyError(f"step {step} wrote no checkpoint manifest in {model_dir}")
    state.finish(step, seconds=seconds, command=command)


def points_of(arm: Arm, out: Path) -> list[tuple[str, Path]]:
    """The checkpoints an arm's training wrote, as (point name, folder): the arm's own, then one per WiSE-FT alpha
    (``--wise_alphas``: ``<arm>@wise-<alpha>``), each a point of the E-versus-F frontier without retraining."""
    folder = out / "arms" / arm.name
    wise = ((read_manifest(folder) or {}).get("mitigations") or {}).get("wise") or {}
    return [(arm.name, folder)] + [(f"{arm.name}@{name}", folder / name) for name in wise.get("folders", [])]


def _evaluate_point(name: str, model_dir: Path, plan: Plan, state: State, env: dict) -> None:
    step = f"eval/{name}"
    if state.done(step):
        return
    seconds, command, speed = _evaluate_into(step, str(model_dir), state.out / "eval" / name, plan,
                                             state.out / "logs", env)
    state.finish(step, seconds=seconds, command=command, throughput=speed)


def study(args) -> dict:
    plan = plan_from_args(args)
    out = args.out.resolve()
    state = State.open(out, plan, args.overwrite)
    env = dict(os.environ)
    if plan.model == LAB_MODEL_ALIAS:  # the lab needs nothing from the hub: never wait on it
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("HF_DATASETS_OFFLINE", "1")
    from tqdm.auto import tqdm

    def announce(step: str) -> None:
        if state.done(step):
            print(f"[{step}] already done (resumed from {state.file})", flush=True)

    announce("baseline")
    _baseline(plan, state, cache_root(args.cache_dir), env)
    points = []
    for arm in tqdm(plan.arms, desc="forgetbench study", unit="arm", file=sys.stdout):
        announce(f"train/{arm.name}")
        _train(arm, plan, state, env)
        for name, folder in points_of(arm, out):
            announce(f"eval/{name}")
            _evaluate_point(name, folder, plan, state, env)
            points.append((name, out / "eval" / name))

    start = time.perf_counter()
    try:
        comparison = compare.compare_runs(out / "eval" / "pre", points, list(plan.downstream), list(plan.upstream))
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
    write_all_atomic({out / "summary.txt": ("\n".join(summary) + "\n").encode()})
    print(comparison.table())
    print(f"artefacts in {out} (report: {out / 'report.html'})")
    return comparison.report


def run(args: argparse.Namespace) -> int:
    try:
        study(args)
    except (StudyError, train.RecipeError) as exc:
        print(f"forgetbench study: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, no permission: every state file is written all-or-nothing, so the last
        # finished step is intact and a rerun resumes from it
        print(f"forgetbench study: error: {exc.filename or 'a file'}: {exc.strerror or exc} (the steps finished so "
              "far are kept; rerun to continue)", file=sys.stderr)
        return 2
    return 0

