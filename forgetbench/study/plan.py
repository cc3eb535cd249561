"""What a study is: its arms (a recipe plus overrides), its tasks and its evaluation settings, read from the command
line and a study YAML and checked before anything is written (:func:`plan_from_args`)."""

from __future__ import annotations

import argparse
import json
import shlex
from dataclasses import asdict, dataclass
from pathlib import Path

from forgetbench import evaluate, recipes_path, suite
from forgetbench.checkpoint import LAB_MODEL_ALIAS, resolve_model, same_model
from forgetbench.errors import one_line
from forgetbench.study.errors import StudyError
from forgetbench.train import configs

DESCRIPTION = ("``forgetbench study``: which way of tuning keeps the model itself, in one command (the embedded lab "
               "by default).")
# The default lab study: a reparameterization arm, full selective tuning (with a WiSE-FT sweep between base and
# tuned), a partial selective arm, and full selective tuning with 20 % replay of the upstream tasks.
DEFAULT_ARMS = {
    "lora": {"recipe": "lora"},
    "full_st": {"recipe": "full_st", "args": ["--wise_alphas", "0.25,0.5,0.75"]},
    "top_layers": {"recipe": "top_layers"},
    "full_st+replay": {"recipe": "full_st", "args": [
        "--replay_tasks", ",".join(suite.tasks_in_role("upstream", suite.lab.PREFIX)), "--replay_ratio", "0.2"]},
}


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
    parser.description = DESCRIPTION
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


# -- the model's recipe configs ----------------------------------------------------------------------------------

_ASK_FOR_CONFIGS = "pass each arm's recipe config in a study YAML (--config study.yaml; arms: NAME: {recipe, config})"


def model_type(model: str) -> str:
    """The ``model_type`` of the model's config.json: read from a folder, or through transformers for a hub id."""
    folder = Path(resolve_model(model))
    if folder.is_dir():
        config = folder / "config.json"
        try:
            found = json.loads(config.read_text()).get("model_type")
        except (OSError, ValueError, AttributeError) as exc:
            raise StudyError(f"--model {model}: cannot read {config} ({one_line(exc)}); {_ASK_FOR_CONFIGS}") from None
        if not isinstance(found, str):
            raise StudyError(f"--model {model}: {config} names no model_type; {_ASK_FOR_CONFIGS}")
        return found
    try:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(model).model_type
    except Exception as exc:  # noqa: BLE001 - offline, no such repo, gated, unknown architecture: all one refusal
        raise StudyError(f"--model {model}: cannot read its config to choose recipe configs "
                         f"({type(exc).__name__}: {one_line(exc)}); {_ASK_FOR_CONFIGS}") from None


def config_family(model: str) -> str:
    """The recipe config folder (``recipes/configs/<family>/``) for a model: the lab's by its alias (its config.json
    says llava, as LLaVA-1.5's does), else by its ``model_type`` (``recipes/configs/_sources/models.yml``)."""
    if same_model(model, LAB_MODEL_ALIAS):
        return configs.config_folder_for(alias=LAB_MODEL_ALIAS)
    kind = model_type(model)
    found = configs.config_folder_for(kind)
    if found is None:
        known = [entry["model_type"] for entry in configs.load_sources()["models"].values() if "model_type" in entry]
        raise StudyError(f"--model {model}: no recipe configs for model_type {kind} (known: {', '.join(known)}); "
                         f"{_ASK_FOR_CONFIGS}")
    return found


# -- the plan ----------------------------------------------------------------------------------------------------


def _arm(name: str, spec: dict, family, recipe_args: list[str], where: str) -> Arm:
    """``family``: a callable giving the model's config folder, asked only for an arm without its own config."""
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
    config = spec.get("config") or recipes_path() / "configs" / family() / f"{recipe}.yaml"
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
    families: list[str] = []  # the model's config folder, looked up once and only if an arm needs it

    def family() -> str:
        if not families:
            families.append(config_family(model))
        return families[0]

    arms = tuple(_arm(name, spec, family, recipe_args, f"--config {args.config}") for name, spec in specs.items())
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
