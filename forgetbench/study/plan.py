"""What a study is: its arms (a recipe plus overrides), its tasks and its evaluation settings, read from the command
line and a study YAML and checked before anything is written (:func:`plan_from_args`)."""

from __future__ import annotations

import argparse
import json
import shlex
from dataclasses import asdict, dataclass
from pathlib import Path

from forgetbench import evaluate, recipes_path, suite
from forgetbench.checkpoint import LAB_MODEL_ALIAS, manifest_path, read_manifest, resolve_model, same_model
from forgetbench.errors import one_line
from forgetbench.study.errors import StudyError
from forgetbench.train import configs

DESCRIPTION = ("``forgetbench study``: which way of tuning keeps the model itself, in one command (the embedded lab "
               "by default).")


def _lab_replay_args() -> list[str]:
    """The lab's replay: its general replay set (instruction rows no evaluated lab task asks,
    :func:`forgetbench.lab.general_replay_path`), or, where that set is not shipped, the lab's upstream tasks."""
    try:
        from forgetbench.lab import general_replay_path

        path = general_replay_path()
        if Path(path).is_file():
            return ["--replay_data", str(path), "--replay_ratio", "0.2"]
    except (ImportError, OSError):
        pass
    return ["--replay_tasks", ",".join(suite.tasks_in_role("upstream", suite.lab.PREFIX)), "--replay_ratio", "0.2"]


# The default lab study: a reparameterization arm, full selective tuning (with a WiSE-FT sweep between base and
# tuned), a partial selective arm, and full selective tuning with 20 % replay of the lab's general replay set.
# Another model's default study has the first three (its replay data is the user's to name: an arm's args).
DEFAULT_ARMS = {
    "lora": {"recipe": "lora"},
    "full_st": {"recipe": "full_st", "args": ["--wise_alphas", "0.25,0.5,0.75"]},
    "top_layers": {"recipe": "top_layers"},
    "full_st+replay": {"recipe": "full_st", "args": _lab_replay_args()},
}
DEFAULT_UPSTREAM = "forgetbench_upstream"  # any model but the lab's: the paper's upstream group
INSTRUCTBLIP_REFUSAL = ("InstructBLIP: lmms-eval 0.7.3's instructblip wrapper decodes all of generate()'s output, "
                        "which begins with the prompt in transformers 5; it has no loglikelihood; its processor has "
                        "no chat template (needed by --model forgetbench and TRL)")


@dataclass(frozen=True)
class Arm:
    name: str
    recipe: str | None  # None: a checkpoint tuned elsewhere (no training step)
    config: str | None  # the recipe config the arm trains with
    args: tuple[str, ...] = ()  # the study's (--dataset_name, --tasks_dir, CPU), the arm's own, then --recipe-args
    train_dataset: str | None = None  # what the arm trains on (the recipe's --dataset_name)
    train_dataset_note: str | None = None  # the same, in words, for the plan and the report
    checkpoint: str | None = None  # a checkpoint tuned elsewhere (--checkpoint NAME=DIR): its folder, resolved
    tuned_elsewhere: bool = False  # True for such a checkpoint: the report says "tuned elsewhere"
    elsewhere: dict | None = None  # what is known of it: kind (merged, adapter), adapter type, base, files

    @property
    def adapter(self) -> bool:
        return bool(self.elsewhere and self.elsewhere.get("kind") == "adapter")


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
    tasks_dir: str | None = None  # --tasks-dir: user tasks (forgetbench task add), lmms-eval's --include_path
    budget: float = 2.0  # --budget: compare's forgetting budget, in points

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
        for key, default in (("tasks_dir", None), ("budget", 2.0)):  # likewise
            if fields[key] == default:
                del fields[key]
        for arm in fields["arms"]:  # an arm trained by the study has no checkpoint of its own
            if arm["checkpoint"] is None:
                del arm["checkpoint"], arm["tuned_elsewhere"], arm["elsewhere"]
        return json.loads(json.dumps({"version": 1, **fields}))


def _lab_tasks(role: str) -> str:
    return ",".join(suite.tasks_in_role(role, suite.lab.PREFIX))


def _option(parser, name: str, **kwargs) -> None:
    """An option under both spellings, ``--batch-size`` and ``--batch_size`` (one argument)."""
    names = [f"--{name}"] + ([f"--{name.replace('-', '_')}"] if "-" in name else [])
    parser.add_argument(*names, **kwargs)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Every option of the study; every one but --config, --out, --overwrite, --dry-run and --json can also be set
    in a study YAML under its own name (``batch_size: 4``). Defaults are applied in :func:`plan_from_args`, after
    the YAML: the command line wins over the YAML, the YAML over the defaults."""
    parser.description = DESCRIPTION
    _option(parser, "out", type=Path, default=Path("runs/lab-study"), help="output folder (default: %(default)s)")
    _option(parser, "overwrite", action="store_true",
            help="start over: remove the study's own outputs from --out (a folder with a study.json), leaving "
                 "anything else there")
    _option(parser, "dry-run", action="store_true",
            help="print the plan (arms, what each trains on, tasks, evaluations, whether the baseline is cached) "
                 "and exit, writing nothing")
    _option(parser, "json", action="store_true", help="with --dry-run: the plan as one JSON object")
    _option(parser, "model", default=None, help="base model folder or hub id (default: the lab model)")
    _option(parser, "revision", default=None,
            help="a hub model's branch, tag or commit: every step loads that snapshot, and the baseline cache is "
                 "keyed by the commit it resolves to (default: the hub's main, as resolved when the study starts)")
    _option(parser, "methods", default=None, metavar="RECIPE[,RECIPE...]",
            help=f"arms, one recipe each (default: {', '.join(DEFAULT_ARMS)} for the lab model; "
                 f"{', '.join(list(DEFAULT_ARMS)[:3])} for another)")
    _option(parser, "recipe", default=None, help="a single arm (same as --methods RECIPE)")
    _option(parser, "checkpoint", action="append", default=None, metavar="NAME=DIR",
            help="an arm tuned elsewhere (repeatable): a merged model folder, or a PEFT adapter folder over the "
                 "study's base; evaluated and reported like a trained arm, without training")
    _option(parser, "allow-lineage-mismatch", action="store_true", default=None,
            help="evaluate a --checkpoint whose base or architecture does not match the study's model")
    parser.add_argument("--config", type=Path, default=None,
                        help="a study YAML (any option below under its own name, and arms), or, with --recipe, the "
                             "recipe config (default: recipes/configs/<family>/<recipe>.yaml)")
    _option(parser, "recipe-args", default=None, help='overrides for every arm, e.g. "--max_steps 50"')
    _option(parser, "downstream", default=None,
            help=f"task or group names (lab model: {_lab_tasks('downstream')}; another model: required)")
    _option(parser, "upstream", default=None,
            help=f"task or group names (lab model: {_lab_tasks('upstream')}; another model: {DEFAULT_UPSTREAM})")
    _option(parser, "tasks-dir", type=Path, default=None,
            help="a folder of user tasks (forgetbench task add --dir): --downstream/--upstream may name them")
    _option(parser, "limit", type=int, default=None,
            help="evaluate only the first N documents per task (N >= 1; default: all)")
    _option(parser, "budget", type=float, default=None,
            help="forgetting budget in points for compare's verdicts (default: 2.0)")
    _option(parser, "device", default=None, help="lmms-eval device (default: cuda when a GPU is seen, else cpu)")
    _option(parser, "batch-size", type=int, default=None, help="evaluation batch size (default: 8)")
    _option(parser, "num-processes", type=int, default=None, help="data-parallel lmms-eval processes (default: 1)")
    _option(parser, "eval-backend", choices=evaluate.BACKENDS, default=None,
            help="lmms-eval --model for every evaluation: forgetbench (batched, every task kind) or vllm (lmms-eval's "
                 "own vLLM wrapper: needs vllm and a GPU; generation tasks only) (default: forgetbench)")
    _option(parser, "tensor-parallel-size", type=int, default=None,
            help="--eval-backend vllm: GPUs per model (default: lmms-eval's 1)")
    _option(parser, "gpu-memory-utilization", type=float, default=None,
            help="--eval-backend vllm: share of GPU memory vLLM may take (default: lmms-eval's 0.8)")
    _option(parser, "accelerate-config", type=Path, default=None,
            help="an accelerate config for every arm's training (recipes/accelerate/*.yaml)")
    _option(parser, "cache-dir", type=Path, default=None,
            help="baseline cache (default: $XDG_CACHE_HOME/forgetbench/baselines)")


# Every option a study YAML may set, its default, and what it must be (the command line's names, '-' as '_').
OPTION_DEFAULTS = {"model": None, "revision": None, "methods": None, "recipe": None, "recipe_args": "",
                   "downstream": None, "upstream": None, "tasks_dir": None, "limit": None, "budget": 2.0,
                   "device": None, "batch_size": 8, "num_processes": 1, "eval_backend": "forgetbench",
                   "tensor_parallel_size": None, "gpu_memory_utilization": None, "accelerate_config": None,
                   "cache_dir": None, "checkpoint": None, "allow_lineage_mismatch": False}
_PATH_OPTIONS = ("tasks_dir", "accelerate_config", "cache_dir")


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
    if kind == "instructblip":
        raise StudyError(INSTRUCTBLIP_REFUSAL)
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


def _dataset_named(args: list[str]) -> str | None:
    """The last ``--dataset_name`` among a recipe's overrides (``--dataset-name``, ``=VALUE`` too), or None."""
    found = None
    for i, arg in enumerate(args):
        option, eq, value = arg.partition("=")
        if option in ("--dataset_name", "--dataset-name"):
            found = value if eq else (args[i + 1] if i + 1 < len(args) else None)
    return found


def _cpu_overrides(config: str, device: str) -> list[str]:
    """On a CPU, what a GPU-profile recipe config needs turned off (as ``tests/test_families.py`` runs the real-model
    configs): bf16, gradient checkpointing, bfloat16/float16 weights. None for a config that is CPU-sized already
    (the lab's), or on a GPU."""
    if device != "cpu":
        return []
    import yaml

    try:
        loaded = yaml.safe_load(Path(config).read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return []
    loaded = loaded if isinstance(loaded, dict) else {}
    over = []
    if loaded.get("bf16") or loaded.get("fp16"):
        over += ["--bf16", "false", "--fp16", "false"]
    if loaded.get("gradient_checkpointing"):
        over += ["--gradient_checkpointing", "false"]
    if loaded.get("dtype") in ("bfloat16", "float16", "auto"):
        over += ["--dtype", "float32"]
    return ["--use_cpu", "true", *over] if over else []


def _trainable(task: str, tasks_dir: str | None) -> bool:
    """Whether a recipe's --dataset_name can load ``task``: a forgetbench task or a user task under ``tasks_dir``."""
    from forgetbench.suite import user_tasks

    return task in suite.TASKS or (tasks_dir is not None and user_tasks.is_user_task(task, tasks_dir))


@dataclass
class _Context:
    """What every arm of a plan shares."""
    recipe_args: list[str]
    downstream: tuple[str, ...]
    tasks_dir: str | None
    device: str
    model: str
    location: str
    allow_lineage_mismatch: bool
    where: str


def _arm(name: str, spec: object, family, ctx: _Context) -> Arm:
    """``family``: a callable giving the model's config folder, asked only for an arm without its own config."""
    where = ctx.where
    check_name("arm", name, {"@": "'@' (it names an arm's points: <arm>@wise-0.5)"})
    if not isinstance(spec, dict):
        raise StudyError(f"{where}: arm '{name}': must map recipe, config, args to values, not {spec!r}")
    unknown = set(spec) - {"recipe", "config", "args", "train_dataset", "checkpoint"}
    if unknown:
        raise StudyError(f"{where}: arm '{name}': unknown keys {', '.join(sorted(map(str, unknown)))} (known: recipe, "
                         f"config, args, train_dataset, checkpoint)")
    if "checkpoint" in spec:
        if set(spec) != {"checkpoint"}:
            raise StudyError(f"{where}: arm '{name}': a checkpoint arm is evaluated as it is: only 'checkpoint' "
                             f"(not {', '.join(sorted(set(spec) - {'checkpoint'}))})")
        return checkpoint_arm(name, spec["checkpoint"], ctx)
    recipe = spec.get("recipe", name)
    if not isinstance(recipe, str) or not (recipes_path() / f"{recipe}.py").is_file():
        raise StudyError(f"--recipe {recipe}: no such recipe ({recipes_path() / f'{recipe}.py'})")
    if recipe == "prompt_tuning":
        raise StudyError(f"arm '{name}': prompt tuning cannot be evaluated faithfully: --model forgetbench merges "
                         "adapters and a soft prompt cannot be merged (it would be evaluated as the base model)")
    config = spec.get("config") or recipes_path() / "configs" / family() / f"{recipe}.yaml"
    if not isinstance(config, (str, Path)) or not Path(config).is_file():
        raise StudyError(f"--config {config}: no such file")
    own = _overrides(spec.get("args", []), f"arm '{name}': args")
    named = _dataset_named(own + ctx.recipe_args)
    given = spec.get("train_dataset")
    if given is not None and (not isinstance(given, str) or not given.strip()):
        raise StudyError(f"{where}: arm '{name}': train_dataset: must be a task name, a folder or a hub id, "
                         f"not {given!r}")
    if given and named:
        raise StudyError(f"arm '{name}': train_dataset {given} and --dataset_name {named} both name its training "
                         "data; keep one")
    if given:
        dataset, study_args = given, ["--dataset_name", given]
        note = f"{given}: the arm's own train_dataset (study YAML), not the downstream task"
    elif named:
        dataset, study_args = named, []
        note = (f"{named}: the downstream task's train split, asked with its evaluation prompt"
                if named in ctx.downstream else f"{named}: named by --dataset_name in the arm's overrides, not the "
                                                "downstream task")
    else:
        if len(ctx.downstream) != 1:
            raise StudyError(f"--downstream {','.join(ctx.downstream)}: a recipe trains on one dataset "
                             "(--dataset_name), so the study trains on the downstream task only when there is one; "
                             "pass one downstream task, or name each arm's train_dataset in a study YAML")
        dataset = ctx.downstream[0]
        if not _trainable(dataset, ctx.tasks_dir):
            raise StudyError(f"--downstream {dataset}: not a forgetbench task nor a user task under --tasks-dir "
                             f"({ctx.tasks_dir or 'not given'}), so no recipe can train on it; add it with "
                             "forgetbench task add and pass --tasks-dir, or name the arms' train_dataset")
        study_args = ["--dataset_name", dataset]
        note = f"{dataset}: the downstream task's train split, asked with its evaluation prompt"
    study_args += ["--tasks_dir", ctx.tasks_dir] if ctx.tasks_dir else []
    study_args += _cpu_overrides(str(config), ctx.device)
    return Arm(name, recipe, str(Path(config).resolve()), tuple(study_args + own + ctx.recipe_args), dataset, note)


# -- checkpoints tuned elsewhere ---------------------------------------------------------------------------------

_ALLOW_LINEAGE = "--allow-lineage-mismatch"


def _read_json(path: Path, what: str) -> dict:
    try:
        loaded = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise StudyError(f"{what}: cannot read {path} ({one_line(exc)})") from None
    if not isinstance(loaded, dict):
        raise StudyError(f"{what}: {path} is not a JSON object")
    return loaded


def _sizes(config: dict) -> dict:
    """A config's architecture and the sizes that make two checkpoints one lineage (the LLM's, for a VLM)."""
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    found = {"architectures": config.get("architectures"), "model_type": config.get("model_type")}
    for key in ("hidden_size", "num_hidden_layers", "vocab_size"):
        found[key] = config.get(key, text.get(key))
    return found


def _base_config(model: str, location: str) -> dict | None:
    folder = Path(location)
    if (folder / "config.json").is_file():
        try:
            return json.loads((folder / "config.json").read_text())
        except (OSError, ValueError):
            return None
    try:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(model).to_dict()
    except Exception:  # noqa: BLE001 - offline, gated: the lineage cannot be checked
        return None


def _same_base(base: str, model: str, location: str) -> bool:
    if base in (model, location):
        return True
    try:
        if Path(base).exists() and Path(base).resolve() == Path(location).resolve():
            return True
    except OSError:
        pass
    return same_model(base, model)


def _check_own_manifest(path: Path, what: str, ctx: _Context) -> None:
    """A checkpoint that carries a forgetbench manifest (a copy of a forgetbench output, or of the base model's folder)
    is paired by compare through it: refused now when it names another origin than the study's base, which compare
    would refuse after the evaluation was paid for (no --allow-lineage-mismatch: compare does not take it)."""
    try:
        manifest = read_manifest(path)
    except (OSError, ValueError) as exc:
        raise StudyError(f"{what}: cannot read its {manifest_path(path).name} ({one_line(exc)})") from None
    if manifest is None or _same_base(str(path), ctx.model, ctx.location):  # none, or the base's own folder
        return
    if not isinstance(manifest, dict):
        raise StudyError(f"{what}: its {manifest_path(path).name} is not a forgetbench manifest (not a JSON object)")
    names = [manifest.get(key) for key in ("base_model", "base_model_path")]
    if any(isinstance(n, str) and _same_base(n, ctx.model, ctx.location) for n in names):
        return
    origin = "trained from scratch" if names[0] is None else f"tuned from {names[0]!r}"
    raise StudyError(f"{what}: its {manifest_path(path).name} says it was {origin}, not tuned from the study's base "
                     f"{ctx.model}: compare would refuse to pair it with the baseline")


def checkpoint_arm(name: str, folder: object, ctx: _Context) -> Arm:
    """An arm tuned elsewhere: a merged model folder or a PEFT adapter folder over the study's base, its lineage
    checked before anything runs (refused unless --allow-lineage-mismatch)."""
    check_name("arm", name, {"@": "'@' (it names an arm's points: <arm>@wise-0.5)"})
    what = f"--checkpoint {name}={folder}"
    if not isinstance(folder, (str, Path)) or not str(folder).strip():
        raise StudyError(f"{what}: must be a folder")
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise StudyError(f"{what}: no such folder")
    path = path.resolve()
    if "," in str(path) or "=" in str(path):
        raise StudyError(f"{what}: holds ',' or '=', which split lmms-eval's model_args; use a path without them")
    files = sorted(p.name for p in path.iterdir() if p.is_file())
    why = None
    if (path / "adapter_config.json").is_file():
        adapter = _read_json(path / "adapter_config.json", what)
        base = adapter.get("base_model_name_or_path")
        info = {"kind": "adapter", "adapter_type": adapter.get("peft_type"), "base": base, "files": files}
        if not isinstance(base, str) or not _same_base(base, ctx.model, ctx.location):
            why = f"its adapter_config.json names base_model_name_or_path {base!r}, the study's base is {ctx.model}"
        note = f"tuned elsewhere: a {adapter.get('peft_type') or 'PEFT'} adapter over {base}"
    elif (path / "config.json").is_file():
        mine = _sizes(_read_json(path / "config.json", what))
        info = {"kind": "merged", **{k: v for k, v in mine.items() if v is not None}, "files": files}
        base_config = _base_config(ctx.model, ctx.location)
        if base_config is None:
            why = f"the study's base ({ctx.model}) has no config.json that can be read here to check lineage"
        else:
            theirs = _sizes(base_config)
            differ = [f"{k} {mine[k]} (base: {theirs[k]})" for k in ("architectures", "hidden_size",
                                                                       "num_hidden_layers", "vocab_size")
                      if mine[k] != theirs[k]]
            if differ:
                why = f"its config.json differs from the study's base: {'; '.join(differ)}"
        note = f"tuned elsewhere: a merged model ({', '.join(mine['architectures'] or ['?'])})"
    else:
        raise StudyError(f"{what}: holds neither adapter_config.json (a PEFT adapter) nor config.json (a merged "
                         "model)")
    _check_own_manifest(path, what, ctx)
    if why is not None:
        if not ctx.allow_lineage_mismatch:
            raise StudyError(f"{what}: {why}; pass {_ALLOW_LINEAGE} to evaluate it anyway")
        info["lineage_mismatch"] = why
    return Arm(name, None, None, (), None, note, str(path), True, info)


def _checkpoint_specs(value: object, where: str) -> dict[str, dict]:
    """``--checkpoint NAME=DIR`` (repeatable) or a study YAML's ``checkpoint:`` (a list of them, or NAME: DIR)."""
    if value is None:
        return {}
    if isinstance(value, dict):
        pairs = list(value.items())
    else:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
            raise StudyError(f"{where}: must be NAME=DIR (or a list of them), not {value!r}")
        pairs = []
        for item in items:
            name, eq, folder = item.partition("=")
            if not eq or not name or not folder:
                raise StudyError(f"{where} {item}: must be NAME=DIR (the arm's name, then its folder)")
            pairs.append((name, folder))
    names = [n for n, _ in pairs]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise StudyError(f"{where}: an arm is named twice ({', '.join(twice)})")
    return {str(name): {"checkpoint": folder} for name, folder in pairs}


# -- the study YAML and the plan ---------------------------------------------------------------------------------


def _is_str_list(value: object) -> bool:
    return isinstance(value, str) or isinstance(value, list) and bool(value) and all(isinstance(v, str) for v in value)


# What each study YAML key must be: a check and its words.
_YAML_TYPES = {
    **{key: (lambda v: isinstance(v, str), "a string") for key in (
        "model", "revision", "methods", "recipe", "device", "eval_backend", "tasks_dir", "accelerate_config",
        "cache_dir")},
    "recipe_args": (lambda v: isinstance(v, (str, list)), "a string of options or a list of them"),
    "downstream": (_is_str_list, "task names (a list, or one comma-separated string)"),
    "upstream": (_is_str_list, "task names (a list, or one comma-separated string)"),
    **{key: (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "a whole number, at least 1")
       for key in ("batch_size", "num_processes", "tensor_parallel_size")},
    "limit": (lambda v: True, "a number of documents"),  # checked by _check_limit, with its own words
    **{key: (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number")
       for key in ("budget", "gpu_memory_utilization")},
    "checkpoint": (lambda v: isinstance(v, (str, list, dict)), "NAME=DIR, a list of them, or NAME: DIR"),
    "allow_lineage_mismatch": (lambda v: isinstance(v, bool), "true or false"),
    "arms": (lambda v: isinstance(v, dict) and bool(v), "arm names mapped to {recipe, config, args, "
                                                         "train_dataset} or {checkpoint}"),
}


def _study_yaml(path: Path) -> tuple[dict, str | None]:
    """A study YAML (its keys checked: any study option under its own name, and arms), or, for a file that is
    not one (a key no study option has, and no ``arms``), the single arm's recipe config."""
    import yaml

    if not path.is_file():
        raise StudyError(f"--config {path}: no such file")
    try:
        loaded = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:  # also python/object tags: safe_load builds no objects
        raise StudyError(f"--config {path}: not a YAML file the study can read ({one_line(exc)})") from None
    if not isinstance(loaded, dict) or not loaded:
        return {}, str(path)
    loaded = {str(k).replace("-", "_"): v for k, v in loaded.items()}
    unknown = set(loaded) - set(_YAML_TYPES)
    if "arms" not in loaded and unknown:
        return {}, str(path)  # a recipe config
    if unknown:
        raise StudyError(f"--config {path}: unknown keys {', '.join(sorted(unknown))} "
                         f"(known: {', '.join(sorted(_YAML_TYPES))})")
    for key, value in loaded.items():
        check, words = _YAML_TYPES[key]
        if value is not None and not check(value):
            raise StudyError(f"--config {path}: {key}: must be {words}, not {value!r}")
    if "eval_backend" in loaded and loaded["eval_backend"] not in (None, *evaluate.BACKENDS):
        raise StudyError(f"--config {path}: eval_backend: must be one of {', '.join(evaluate.BACKENDS)}, "
                         f"not {loaded['eval_backend']!r}")
    return loaded, None


def _check_limit(limit: object, where: str) -> int | None:
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise StudyError(f"{where} {limit}: must be a whole number of documents, at least 1 (leave it out to "
                         "evaluate every document)")
    return limit


def expand_tasks(value: str | list[str]) -> tuple[str, ...]:
    """Task names, comma-separated or a list, with group names expanded (``forgetbench_upstream``), as lmms-eval's
    ``--tasks`` reads them; each task once, in order.

    >>> expand_tasks("forgetbench_lab_downstream")
    ('forgetbench_lab_digits',)
    """
    names = value.split(",") if isinstance(value, str) else list(value)
    found: list[str] = []
    for name in (n.strip() for n in names):
        for task in suite.GROUPS.get(name, (name,)) if name else ():
            if task not in found:
                found.append(task)
    return tuple(found)


def default_device() -> str:
    """A GPU when torch sees one (``cuda``), else ``cpu``."""
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def _refuse_instructblip(model: str, location: str) -> None:
    kind = None
    config = Path(location) / "config.json"
    if config.is_file():
        try:
            kind = json.loads(config.read_text()).get("model_type")
        except (OSError, ValueError, AttributeError):
            kind = None
    if kind == "instructblip" or (kind is None and "instructblip" in model.lower()):
        raise StudyError(INSTRUCTBLIP_REFUSAL)


def plan_from_args(args) -> Plan:
    """The study the command line (and a study YAML) asks for, checked before anything is written. The command line
    wins over the study YAML, the YAML over the defaults (:data:`OPTION_DEFAULTS`); ``args.cache_dir`` is set to
    the resolved one."""
    study_yaml, recipe_config = _study_yaml(args.config) if args.config is not None else ({}, None)

    def option(key: str):
        given = getattr(args, key, None)
        if given is not None:
            return given
        value = study_yaml.get(key)
        if value is None:
            return OPTION_DEFAULTS[key]
        return Path(value) if key in _PATH_OPTIONS else value

    where = f"--config {args.config}"
    model = option("model") or LAB_MODEL_ALIAS
    lab = same_model(model, LAB_MODEL_ALIAS)
    if model != LAB_MODEL_ALIAS and not Path(model).exists() and "/" not in model:
        raise StudyError(f"--model {model}: not a folder, a hub id or {LAB_MODEL_ALIAS}")
    revision = option("revision")
    if revision is not None and not is_hub_id(model):
        raise StudyError(f"--revision {revision}: only for a hub model (--model {model} is "
                         f"{'the lab model' if model == LAB_MODEL_ALIAS else 'a folder'})")
    location = model_location(model, revision)
    if not lab:
        _refuse_instructblip(model, location)
    for what, value in (("--model", location), ("--out", str(Path(args.out).resolve()))):
        if "," in value or "=" in value:  # both reach lmms-eval's model_args: pretrained=OUT/arms/<arm>,...
            raise StudyError(f"{what} {value}: holds ',' or '=', which split lmms-eval's model_args; use a path "
                             "without them")
    tasks_dir = option("tasks_dir")
    if tasks_dir is not None:
        if not Path(tasks_dir).expanduser().is_dir():
            raise StudyError(f"--tasks-dir {tasks_dir}: no such folder (the --dir of forgetbench task add)")
        tasks_dir = str(Path(tasks_dir).expanduser().resolve())

    downstream = option("downstream")
    if downstream is None:
        if not lab:
            raise StudyError(f"--model {model}: no downstream task: pass --downstream TASK (a forgetbench task, or a "
                             "user task from forgetbench task add with --tasks-dir DIR); the lab's tasks are the "
                             "lab model's only")
        downstream = _lab_tasks("downstream")
    upstream = option("upstream") or (_lab_tasks("upstream") if lab else DEFAULT_UPSTREAM)
    downstream, upstream = expand_tasks(downstream), expand_tasks(upstream)
    if not downstream or not upstream:
        raise StudyError(f"--{'downstream' if not downstream else 'upstream'}: names no task")
    both = [t for t in downstream if t in upstream]
    if both:
        raise StudyError(f"{', '.join(both)}: both downstream and upstream; a task is one or the other")
    device = option("device") or default_device()
    allow = bool(option("allow_lineage_mismatch"))
    ctx = _Context(_overrides(option("recipe_args"), "--recipe-args"), downstream, tasks_dir, device, model,
                   location, allow, where)

    methods, recipe = option("methods"), option("recipe")
    checkpoints = _checkpoint_specs(getattr(args, "checkpoint", None), "--checkpoint") \
        if getattr(args, "checkpoint", None) is not None else _checkpoint_specs(study_yaml.get("checkpoint"),
                                                                              f"{where}: checkpoint:")
    if study_yaml.get("arms"):
        specs = {str(name): {} if spec is None else spec for name, spec in study_yaml["arms"].items()}
    elif recipe or methods:
        names = [recipe] if recipe else methods.split(",")
        if len(set(names)) != len(names):
            raise StudyError(f"--methods {methods}: an arm is named twice (a study YAML gives two arms of one recipe "
                             "names of their own)")
        specs = {name: ({"config": recipe_config} if recipe_config else {}) for name in names}
    elif checkpoints:
        specs = {}  # only checkpoints tuned elsewhere: nothing to train
    else:
        specs = dict(DEFAULT_ARMS) if lab else {k: v for k, v in DEFAULT_ARMS.items() if k != "full_st+replay"}
    twice = sorted(set(specs) & set(checkpoints))
    if twice:
        raise StudyError(f"--checkpoint {twice[0]}: an arm of that name is also trained; give it another name")
    specs.update(checkpoints)
    families: list[str] = []  # the model's config folder, looked up once and only if an arm needs it

    def family() -> str:
        if not families:
            families.append(config_family(model, location))
        return families[0]

    arms = tuple(_arm(name, spec, family, ctx) for name, spec in specs.items())
    if args.limit is not None:
        limit = _check_limit(args.limit, "--limit")
    else:
        limit = _check_limit(study_yaml.get("limit"), f"{where}: limit:")
    budget = option("budget")
    from forgetbench.compare.errors import CompareError
    from forgetbench.compare.report import check_budget

    try:
        check_budget(budget)
    except CompareError as exc:
        raise StudyError(str(exc)) from None
    accelerate_config = option("accelerate_config")
    if accelerate_config is not None and not Path(accelerate_config).is_file():
        raise StudyError(f"--accelerate-config {accelerate_config}: no such file")
    backend = option("eval_backend")
    resolved = argparse.Namespace(**{k: option(k) for k in ("tensor_parallel_size", "gpu_memory_utilization",
                                                              "num_processes")})
    backend_args = _backend_args(resolved, backend, downstream + upstream)
    adapters = [arm.name for arm in arms if arm.adapter]
    if backend == "vllm" and adapters:
        raise StudyError(f"--checkpoint {adapters[0]}: a PEFT adapter, and lmms-eval's vllm wrapper takes none; "
                         "merge it first, or use --eval-backend forgetbench")
    args.cache_dir = option("cache_dir")
    return Plan(model, downstream, upstream, arms, limit, device, option("batch_size"), option("num_processes"),
                str(Path(accelerate_config).resolve()) if accelerate_config else None, backend, backend_args,
                revision, tasks_dir, float(budget))


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
