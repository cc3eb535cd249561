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
    revision: str | None = None  # --revision: the hub model's branch, tag or commit every step loads

    @property
    def tasks(self) -> str:
        return ",".join(self.downstream + self.upstream)

    def signature(self) -> dict:
        """What makes two studies the same study (a rerun resumes only the same one), as JSON reads it back. The
        default backend adds nothing, so a study started before backends existed still resumes."""
        fields = asdict(self)
        if self.eval_backend == "forgetbench" and not self.backend_args:
            del fields["eval_backend"], fields["backend_args"]
        if self.revision is None:  # likewise for a study started before --revision existed
            del fields["revision"]
        return json.loads(json.dumps({"version": 1, **fields}))


def _lab_tasks(role: str) -> str:
    return ",".join(suite.tasks_in_role(role, suite.lab.PREFIX))


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.add_argument("--out", type=Path, default=Path("runs/lab-study"), help="output folder (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start over: remove the study's own outputs from --out (a folder with a study.json), "
                             "leaving anything else there")
    parser.add_argument("--model", default=None, help="base model folder or hub id (default: the lab model)")
    parser.add_argument("--revision", default=None,
                        help="a hub model's branch, tag or commit: every step loads that snapshot, and the baseline "
                             "cache is keyed by the commit it resolves to (default: the hub's main, as resolved "
                             "when the study starts)")
    parser.add_argument("--methods", default=None, metavar="RECIPE[,RECIPE...]",
                        help=f"arms, one recipe each (default: {', '.join(DEFAULT_ARMS)})")
    parser.add_argument("--recipe", default=None, help="a single arm (same as --methods RECIPE)")
    parser.add_argument("--config", type=Path, default=None,
                        help="a study YAML (model, downstream, upstream, limit, arms), or, with --recipe, the "
                             "recipe config (default: recipes/configs/<family>/<recipe>.yaml)")
    parser.add_argument("--recipe-args", default="", help='overrides for every arm, e.g. "--max_steps 50"')
    parser.add_argument("--downstream", default=None, help=f"default: {_lab_tasks('downstream')}")
    parser.add_argument("--upstream", default=None, help=f"default: {_lab_tasks('upstream')}")
    parser.add_argument("--limit", type=int, default=None,
                        help="evaluate only the first N documents per task (N >= 1; default: all)")
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


def is_hub_id(model: str) -> bool:
    """Whether the study loads ``model`` from the hub: neither the lab alias nor a folder."""
    return model != LAB_MODEL_ALIAS and not Path(model).exists()


def model_location(model: str, revision: str | None) -> str:
    """What every step loads: the lab's folder for its alias, a folder as is, a hub id as is, or, with
    ``revision``, the local snapshot of that revision (downloaded when the hub is reachable), so that every step
    loads the very same files."""
    if revision is None:
        return resolve_model(model)
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(model, revision=revision)
    except Exception as exc:  # noqa: BLE001 - offline and not cached, no such revision or repository: one refusal
        raise StudyError(f"--model {model} --revision {revision}: cannot get that snapshot "
                         f"({type(exc).__name__}: {one_line(exc)})") from None


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


def config_family(model: str, location: str | None = None) -> str:
    """The recipe config folder (``recipes/configs/<family>/``) for a model: the lab's by its alias (its config.json
    says llava, as LLaVA-1.5's does), else by its ``model_type`` (``recipes/configs/_sources/models.yml``), read
    from ``location`` (:func:`model_location`) when given."""
    if same_model(model, LAB_MODEL_ALIAS):
        return configs.config_folder_for(alias=LAB_MODEL_ALIAS)
    kind = model_type(location or model)
    found = configs.config_folder_for(kind)
    if found is None:
        known = [entry["model_type"] for entry in configs.load_sources()["models"].values() if "model_type" in entry]
        raise StudyError(f"--model {model}: no recipe configs for model_type {kind} (known: {', '.join(known)}); "
                         f"{_ASK_FOR_CONFIGS}")
    return found


# -- the plan ----------------------------------------------------------------------------------------------------

RESERVED_NAMES = ("pre", "post")  # compare's own names for the two sides
# A name becomes a folder (arms/<name>, eval/<name>, logs/eval_<name>.log) and part of lmms-eval's model_args
# (pretrained=...,key=value), and an arm's points are named <arm>@<suffix>.
_NOT_IN_NAMES = {"/": "a path separator", "\\": "a path separator", ",": "',' (it splits lmms-eval's model_args)",
                 "=": "'=' (it splits lmms-eval's model_args)", "*": "a wildcard", "?": "a wildcard",
                 "[": "a wildcard", "]": "a wildcard"}


def check_name(kind: str, name: object, also: dict[str, str] | None = None) -> str:
    """``name`` if it can name an arm or a point (``kind``), else StudyError saying why, before anything runs.

    >>> check_name("arm", "full_st+replay")
    'full_st+replay'
    >>> check_name("arm", "../x")
    Traceback (most recent call last):
    ...
    forgetbench.study.errors.StudyError: arm '../x': not a usable name: it holds a path separator
    """
    forbidden = {**_NOT_IN_NAMES, **(also or {})}
    if not isinstance(name, str) or not name.strip():
        why = "it is empty" if isinstance(name, str) or name is None else f"it is a {type(name).__name__}"
    elif any(char in name for char in forbidden):
        why = next(f"it holds {what}" for char, what in forbidden.items() if char in name)
    elif name.startswith("."):  # ".", ".." and the scratch folders' .<point>.partial
        why = "it starts with '.' (a hidden or parent folder)"
    elif name in RESERVED_NAMES:
        why = f"{', '.join(repr(n) for n in RESERVED_NAMES)} are compare's names for the two sides"
    elif any(ord(c) < 32 or c == "\x7f" for c in name):
        why = "it holds a control character"
    else:
        why = None
    if why is not None:
        raise StudyError(f"{kind} {name!r}: not a usable name: {why}")
    return name


# Options of the recipes that the study sets itself for every arm.
_STUDY_OWNS = {"output_dir": "the study puts each arm in OUT/arms/<arm>", "model_name_or_path": "use --model"}


def _overrides(text: object, where: str) -> list[str]:
    """An arm's overrides (a string split as a shell would, or a list), refusing the options the study owns."""
    if isinstance(text, str):
        try:
            args = shlex.split(text)
        except ValueError as exc:
            raise StudyError(f"{where}: {text!r}: {exc}") from None
    elif isinstance(text, list) and all(isinstance(a, (str, int, float)) for a in text):
        args = [str(a) for a in text]
    else:
        raise StudyError(f"{where}: must be a string of options or a list of them, not {text!r}")
    for arg in args:
        option = arg.split("=", 1)[0].removeprefix("--").replace("-", "_") if arg.startswith("--") else None
        if option in _STUDY_OWNS:
            raise StudyError(f"{where}: {arg.split('=', 1)[0]} is the study's to set ({_STUDY_OWNS[option]})")
    return args


def _arm(name: str, spec: object, family, recipe_args: list[str], where: str) -> Arm:
    """``family``: a callable giving the model's config folder, asked only for an arm without its own config."""
    check_name("arm", name, {"@": "'@' (it names an arm's points: <arm>@wise-0.5)"})
    if not isinstance(spec, dict):
        raise StudyError(f"{where}: arm '{name}': must map recipe, config, args to values, not {spec!r}")
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
    if not isinstance(config, (str, Path)) or not Path(config).is_file():
        raise StudyError(f"--config {config}: no such file")
    args = _overrides(spec.get("args", []), f"arm '{name}': args")
    return Arm(name, recipe, str(Path(config).resolve()), tuple(args + recipe_args))


_STUDY_KEYS = {"model": "a folder, a hub id or forgetbench-lab", "downstream": "task names",
               "upstream": "task names", "limit": "a number of documents", "arms": "arms"}


def _study_yaml(path: Path) -> tuple[dict, str | None]:
    """A study YAML (its keys checked), or, for a file without ``arms``, the single arm's recipe config."""
    import yaml

    if not path.is_file():
        raise StudyError(f"--config {path}: no such file")
    try:
        loaded = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:  # also python/object tags: safe_load builds no objects
        raise StudyError(f"--config {path}: not a YAML file the study can read ({one_line(exc)})") from None
    if not (isinstance(loaded, dict) and "arms" in loaded):
        return {}, str(path)
    unknown = set(loaded) - set(_STUDY_KEYS)
    if unknown:
        raise StudyError(f"--config {path}: unknown keys {', '.join(sorted(map(str, unknown)))} "
                         f"(known: {', '.join(sorted(_STUDY_KEYS))})")
    for key in ("downstream", "upstream"):
        value = loaded.get(key)
        if value is not None and not (isinstance(value, str) or isinstance(value, list) and value
                                      and all(isinstance(t, str) for t in value)):
            raise StudyError(f"--config {path}: {key}: must be task names (a list, or one comma-separated string), "
                             f"not {value!r}")
    if loaded.get("model") is not None and not isinstance(loaded["model"], str):
        raise StudyError(f"--config {path}: model: must be {_STUDY_KEYS['model']}, not {loaded['model']!r}")
    if not isinstance(loaded["arms"], dict) or not loaded["arms"]:
        raise StudyError(f"--config {path}: 'arms' must map arm names to {{recipe, config, args}}")
    return loaded, None


def _check_limit(limit: object, where: str) -> int | None:
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise StudyError(f"{where} {limit}: must be a whole number of documents, at least 1 (leave it out to "
                         "evaluate every document)")
    return limit


def plan_from_args(args) -> Plan:
    """The study the command line (and a study YAML) asks for, checked before anything is written."""
    study_yaml, recipe_config = _study_yaml(args.config) if args.config is not None else ({}, None)
    model = args.model or study_yaml.get("model") or LAB_MODEL_ALIAS
    if model != LAB_MODEL_ALIAS and not Path(model).exists() and "/" not in model:
        raise StudyError(f"--model {model}: not a folder, a hub id or {LAB_MODEL_ALIAS}")
    revision = getattr(args, "revision", None)
    if revision is not None and not is_hub_id(model):
        raise StudyError(f"--revision {revision}: only for a hub model (--model {model} is "
                         f"{'the lab model' if model == LAB_MODEL_ALIAS else 'a folder'})")
    location = model_location(model, revision)
    for what, value in (("--model", location), ("--out", str(Path(args.out).resolve()))):
        if "," in value or "=" in value:  # both reach lmms-eval's model_args: pretrained=OUT/arms/<arm>,...
            raise StudyError(f"{what} {value}: holds ',' or '=', which split lmms-eval's model_args; use a path "
                             "without them")

    def tasks(option: str, role: str) -> tuple[str, ...]:
        value = getattr(args, option) or study_yaml.get(option) or _lab_tasks(role)
        return tuple(value.split(",") if isinstance(value, str) else value)

    recipe_args = _overrides(args.recipe_args, "--recipe-args")
    if study_yaml:
        specs = {name: {} if spec is None else spec for name, spec in study_yaml["arms"].items()}
    else:
        if args.recipe or args.methods:
            names = [args.recipe] if args.recipe else args.methods.split(",")
            if len(set(names)) != len(names):
                raise StudyError(f"--methods {args.methods}: an arm is named twice (a study YAML gives two arms of "
                                 "one recipe names of their own)")
            specs = {name: ({"config": recipe_config} if recipe_config else {}) for name in names}
        else:
            specs = DEFAULT_ARMS
    families: list[str] = []  # the model's config folder, looked up once and only if an arm needs it

    def family() -> str:
        if not families:
            families.append(config_family(model, location))
        return families[0]

    arms = tuple(_arm(name, spec, family, recipe_args, f"--config {args.config}") for name, spec in specs.items())
    if args.limit is not None:
        limit = _check_limit(args.limit, "--limit")
    else:
        limit = _check_limit(study_yaml.get("limit"), f"--config {args.config}: limit:")
    if args.accelerate_config is not None and not args.accelerate_config.is_file():
        raise StudyError(f"--accelerate-config {args.accelerate_config}: no such file")
    downstream, upstream = tasks("downstream", "downstream"), tasks("upstream", "upstream")
    backend = getattr(args, "eval_backend", "forgetbench")
    backend_args = _backend_args(args, backend, downstream + upstream)
    return Plan(model, downstream, upstream, arms, limit, args.device, args.batch_size, args.num_processes,
                str(args.accelerate_config.resolve()) if args.accelerate_config else None, backend, backend_args,
                revision)


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
