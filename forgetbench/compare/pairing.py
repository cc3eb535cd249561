"""Reading lmms-eval 0.7.x outputs (results.json, sample logs), the checkpoint manifest, and the pairing checks
between a pre and a post run.

A broken input is a :class:`~forgetbench.compare.errors.CompareError` (one line naming the input and what is
wrong). A difference between two sound runs is a :class:`Mismatch`: ``--allow-mismatch`` may tolerate it, and
code decides on its fields, never on its message.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from forgetbench.checkpoint import MANIFEST_NAME, read_manifest, same_model
from forgetbench.compare.errors import CompareError

# Mismatch fields of settings (how documents were asked and answered), as opposed to which documents were scored.
SETTING_FIELDS = frozenset({"model", "model-backend", "dtype", "model-args", "chat-template", "system-instruction",
                            "fewshot-as-multiturn", "lmms-eval-version", "cli", "generation", "num-fewshot",
                            "fewshot-seed", "task-config"})


@dataclass(frozen=True)
class Mismatch:
    """One difference between the pre (or first) run and another run.

    ``field`` names what differs: ``tasks``, ``limit``, ``offset``, ``n-samples``, ``version``, ``sample-log``,
    ``doc-ids``, ``asked``, ``base-model`` or ``common-samples`` (which documents were scored), ``lineage``
    (``forgetbench stages``: a stage not tuned from the one before), or one of
    :data:`SETTING_FIELDS` (how they were asked and answered); ``pre`` and ``post`` are the two sides' values.
    ``restrictable`` is False for a difference that comparing only the common samples cannot repair.
    ``message`` is the one-line text reported (``pairing.mismatches`` of compare.json).
    """

    field: str
    pre: object
    post: object
    message: str
    restrictable: bool = True
    task: str | None = None

    def __str__(self) -> str:
        return self.message

    def refusal(self) -> str:
        """The one line ``forgetbench compare`` refuses with, saying what ``--allow-mismatch`` would do.

        >>> Mismatch("limit", None, 5, "--post P: limit differs").refusal()
        '--post P: limit differs (--allow-mismatch compares the common samples only)'
        """
        if self.field in SETTING_FIELDS:
            return f"{self.message} (--allow-mismatch accepts it and lists it in the report)"
        return f"{self.message} (--allow-mismatch compares the common samples only)"


def find_results_file(path: Path, label: str) -> Path:
    """The single ``*_results.json`` in ``path`` or its immediate sub-folders.

    ``path`` may also be the results file itself. ``label`` (e.g. ``--pre DIR``)
    prefixes error messages.
    """
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise CompareError(f"{label}: no such file or folder")
    # lmms-eval writes OUT/<model_name_sanitized>/<date>_results.json.
    found = sorted(path.glob("*_results.json")) + sorted(path.glob("*/*_results.json"))
    if not found:
        raise CompareError(f"{label}: not an lmms-eval output (no *_results.json here or one folder down)")
    if len(found) > 1:
        names = ", ".join(str(p) for p in found)
        raise CompareError(f"{label}: several results files, pass one of them: {names}")
    return found[0]


def load_run(path: Path, label: str) -> dict:
    """Load an lmms-eval results.json and check the parts forgetbench relies on.

    The file's path is kept under the key ``"_file"`` (sample logs lie beside it).
    """
    file = find_results_file(path, label)
    try:
        with open(file, encoding="utf-8") as fh:
            run = json.load(fh)
    except (OSError, ValueError, RecursionError) as exc:  # ValueError covers bad JSON and bad UTF-8
        raise CompareError(f"{label}: not an lmms-eval output (cannot read {file.name} ({exc}))") from None
    if not isinstance(run, dict) or not isinstance(run.get("results"), dict):
        raise CompareError(f"{label}: not an lmms-eval output ({file} has no 'results' object)")
    # Optional sections must at least have the right shape, so later code can index them.
    for key in ("n-samples", "higher_is_better", "config", "configs", "versions"):
        if not isinstance(run.setdefault(key, {}), dict):
            raise CompareError(f"{label}: not an lmms-eval output ({file}: '{key}' is not an object)")
    for task, res in run["results"].items():
        if not isinstance(res, dict):
            raise CompareError(f"{label}: not an lmms-eval output ({file}: results of '{task}' is not an object)")
    run["_file"] = file
    return run


def pretrained(run: dict) -> str | None:
    """The evaluated model: ``pretrained=`` of ``config.model_args`` (a ``k=v,k=v`` string or a mapping), else
    ``model=`` (lmms-eval's vLLM wrapper names the checkpoint so), or None.

    >>> pretrained({"config": {"model_args": "pretrained=/ckpt/lora,device=cpu"}})
    '/ckpt/lora'
    >>> pretrained({"config": {"model_args": {"pretrained": "org/model"}}})
    'org/model'
    >>> pretrained({"config": {"model": "vllm", "model_args": "model=/ckpt/lora,tensor_parallel_size=1"}})
    '/ckpt/lora'
    """
    args = run["config"].get("model_args")
    if isinstance(args, str):
        args = dict(part.partition("=")[::2] for part in args.split(",") if "=" in part)
    for key in ("pretrained", "model"):
        value = args.get(key) if isinstance(args, dict) else None
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def load_manifest(run: dict, label: str) -> dict | None:
    """The forgetbench manifest of the checkpoint a run evaluated, or None when it has none.

    The folder it was read from is kept under the key ``"_folder"``.
    """
    model = pretrained(run)
    if model is None:
        return None
    file = Path(model) / MANIFEST_NAME
    try:
        manifest = read_manifest(model)
    except (OSError, ValueError, RecursionError) as exc:  # ValueError covers bad JSON and bad UTF-8
        raise CompareError(f"{label}: manifest: cannot read {file.name} ({exc})") from None
    if manifest is None:
        return None
    # base_model is null for a model trained from scratch (the lab base model's own manifest).
    if not isinstance(manifest, dict) or not isinstance(manifest.get("base_model", ""), (str, type(None))):
        raise CompareError(f"{label}: manifest {file} has no 'base_model' string or null")
    manifest["_folder"] = str(file.parent)
    params = manifest.get("trainable_parameters")
    if params is not None and (isinstance(params, bool) or not isinstance(params, int)):
        raise CompareError(f"{label}: manifest {file}: 'trainable_parameters' is not an integer")
    return manifest


def load_unscorable(run: dict, label: str) -> dict[str, int] | None:
    """Documents per task whose image ``--model forgetbench`` could not decode (answered without scoring), from
    the ``unscorable*.json`` it writes (one per rank) beside the results folder; None when the run has none
    (another wrapper, or an older forgetbench)."""
    folder = run["_file"].parent
    files = sorted(folder.glob("unscorable*.json")) or sorted(folder.parent.glob("unscorable*.json"))
    if not files:
        return None
    counts: dict[str, int] = {}
    for file in files:
        try:
            with open(file, encoding="utf-8") as fh:
                items = json.load(fh)["items"]
            for item in items:
                counts[item["task"]] = counts.get(item["task"], 0) + 1
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CompareError(f"{label}: cannot read {file.name} ({type(exc).__name__}: {exc})") from None
    return counts


def manifest_mismatch(pre: dict, manifest: dict | None, label: str) -> Mismatch | None:
    """Why the checkpoint's base model is not the pre run's model, or None.

    >>> manifest_mismatch({"config": {"model_args": "pretrained=org/a"}}, {"base_model": "org/b"}, "--post P")
    ... # doctest: +NORMALIZE_WHITESPACE
    Mismatch(field='base-model', pre='org/a', post='org/b',
             message="--post P: checkpoint was tuned from 'org/b' but --pre evaluated 'org/a'",
             restrictable=True, task=None)
    """
    if manifest is None:
        return None
    model = pretrained(pre)
    names = [manifest.get("base_model"), manifest.get("base_model_path")]
    if model is not None and any(isinstance(n, str) and same_model(n, model) for n in names):
        return None
    if model is not None and same_model(manifest.get("_folder", ""), model):
        return None  # post evaluated the very model pre evaluated
    base = manifest.get("base_model")
    if base is None:
        message = f"{label}: checkpoint was trained from scratch, not tuned from --pre's '{model}'"
    else:
        message = f"{label}: checkpoint was tuned from '{base}' but --pre evaluated '{model}'"
    return Mismatch("base-model", model, base, message)


def run_mismatches(pre: dict, post: dict, tasks: list[str], pre_label: str, post_label: str,
                   reference: str = "--pre") -> list[Mismatch]:
    """Run-level differences (task sets, limit/offset, sample counts, versions) of ``post`` from ``pre``.

    ``reference`` names ``pre`` in the messages (``forgetbench stages`` says "the first stage"). A requested
    task missing from either run is an error, not a mismatch.
    """
    for run, label in ((pre, pre_label), (post, post_label)):
        missing = [t for t in tasks if t not in run["results"]]
        if missing:
            raise CompareError(f"{label}: task(s) not found: {', '.join(missing)}")
    out = []
    only_pre = sorted(set(pre["results"]) - set(post["results"]))
    only_post = sorted(set(post["results"]) - set(pre["results"]))
    if only_pre or only_post:
        out.append(Mismatch("tasks", tuple(only_pre), tuple(only_post),
                            f"{post_label}: tasks differ from {reference}: only in pre: {', '.join(only_pre) or '-'}; "
                            f"only in post: {', '.join(only_post) or '-'}"))
    # --limit (and --offset) pick which documents are scored.
    for key in ("limit", "offset"):
        a, b = pre["config"].get(key), post["config"].get(key)
        if a != b:
            out.append(Mismatch(key, a, b, f"{post_label}: {key} differs from {reference}: pre {a}; post {b}"))
    # Every task, not only the requested ones: the two runs must be the same evaluation.
    for task in sorted(set(pre["n-samples"]) | set(post["n-samples"])):
        counts = []
        for run in (pre, post):
            n = run["n-samples"].get(task)
            counts.append((n.get("original"), n.get("effective")) if isinstance(n, dict) else n)
        if counts[0] != counts[1]:
            out.append(Mismatch("n-samples", counts[0], counts[1],
                                f"{post_label}: sample counts of '{task}' differ from {reference} (original, "
                                f"effective): pre {counts[0]}; post {counts[1]}", task=task))
    for task in sorted(set(pre["versions"]) | set(post["versions"])):
        a, b = pre["versions"].get(task), post["versions"].get(task)
        if a != b:
            out.append(Mismatch("version", a, b, f"{post_label}: version of task '{task}' differs from "
                                                 f"{reference}: pre {a}; post {b}", task=task))
    return out + setting_mismatches(pre, post, post_label, reference)


# --------------------------------------------------------------------------
# Settings: what the model was asked and how it answered (docs/metrics.md, "What pairing compares")
# --------------------------------------------------------------------------

# model_args keys that name the model (pre and post differ there by design; the manifest checks lineage) or
# only place it: they never change an answer. Every other model argument must agree.
IDENTITY_ARGS = frozenset({"pretrained", "adapter", "peft", "delta", "model", "model_name", "model_id",
                           "model_version", "path", "engine", "revision"})
PLACEMENT_ARGS = frozenset({"device", "device_map", "batch_size", "max_batch_size", "trust_remote_code",
                            "cache_dir", "token", "num_processes", "parallelize",
                            # vLLM's: how many GPUs hold the model and how much of their memory it may take
                            "tensor_parallel_size", "data_parallel_size", "gpu_memory_utilization",
                            "disable_log_stats"})
DTYPE_ARGS = ("dtype", "torch_dtype")
# lmms-eval CLI arguments (results.json config.resolved_cli_args) that change prompts, answers or scores.
CLI_SETTINGS = {"apply_chat_template": "--apply_chat_template", "reasoning_tags": "--reasoning_tags",
                "max_tokens": "--max_tokens (token budget)", "predict_only": "--predict_only",
                "process_with_media": "--process_with_media", "repeats": "--repeats"}
# Keys of configs[task] checked on their own (generation settings, few-shot count), or that change no answer
# (names, the metadata forgetbench reads through scores.py, lmms-eval's per-sample statistics keys).
CONFIG_SKIPPED = frozenset({"generation_kwargs", "num_fewshot", "task", "task_alias", "tag", "group",
                            "group_alias", "metadata", "score_key", "cluster_key"})


def show(value: object, width: int = 80) -> str:
    """A setting's value in a refusal message: JSON, cut at ``width`` characters.

    >>> show(0), show(True), show("llava_hf"), show(None)
    ('0', 'true', '"llava_hf"', 'null')
    """
    text = json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    return text if len(text) <= width else text[: width - 3] + "..."


def model_args(run: dict) -> dict:
    """``config.model_args`` (a ``k=v,k=v`` string or a mapping) as a mapping of strings.

    >>> model_args({"config": {"model_args": "pretrained=/m,dtype=bfloat16"}})
    {'pretrained': '/m', 'dtype': 'bfloat16'}
    """
    args = run["config"].get("model_args")
    if isinstance(args, str):
        return {k.strip(): v.strip() for k, _, v in (p.partition("=") for p in args.split(",") if "=" in p)}
    return {str(k): str(v) for k, v in args.items()} if isinstance(args, dict) else {}


def _typed(text: str) -> object:
    """A ``--gen_kwargs`` value as lmms-eval's ``simple_parse_args_string`` types it."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def generation_settings(run: dict, task: str) -> dict | None:
    """The generation settings ``task`` ran with: ``configs[task].generation_kwargs`` updated with lmms-eval's
    ``--gen_kwargs`` (``config.gen_kwargs``), which lmms-eval applies to every ``generate_until`` task; None for
    a task that does not generate.

    >>> run = {"config": {"gen_kwargs": "temperature=1.5,do_sample=True"}, "configs": {"t": {
    ...     "output_type": "generate_until", "generation_kwargs": {"max_new_tokens": 8, "temperature": 0}}}}
    >>> generation_settings(run, "t")
    {'max_new_tokens': 8, 'temperature': 1.5, 'do_sample': True}
    """
    config = run["configs"].get(task)
    config = config if isinstance(config, dict) else {}
    if "generate_until" not in str(config.get("output_type", "generate_until")):
        return None
    settings = dict(config["generation_kwargs"]) if isinstance(config.get("generation_kwargs"), dict) else {}
    cli = run["config"].get("gen_kwargs")
    if isinstance(cli, str):
        cli = {k.strip(): _typed(v.strip()) for k, _, v in (p.partition("=") for p in cli.split(",") if "=" in p)}
    settings.update(cli if isinstance(cli, dict) else {})
    return settings


def num_fewshot(run: dict, task: str) -> object:
    """Few-shot examples of ``task``: ``n-shot[task]``, else ``configs[task].num_fewshot``."""
    shots = run.get("n-shot")
    if isinstance(shots, dict) and task in shots:
        return shots[task]
    config = run["configs"].get(task)
    return config.get("num_fewshot") if isinstance(config, dict) else None


def _sha(run: dict, key: str) -> str | None:
    """``<key>_sha`` (what lmms-eval records beside the text), else a hash of ``<key>``, else None."""
    sha, text = run.get(f"{key}_sha"), run.get(key)
    if isinstance(sha, str) and sha:
        return sha
    return hashlib.sha256(text.encode()).hexdigest() if isinstance(text, str) and text else None


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+>")


def _normalized(value: object) -> object:
    """A task config value without the memory addresses lmms-eval prints for its ``!function`` hooks."""
    if isinstance(value, str):
        return _ADDRESS.sub(">", value)
    if isinstance(value, dict):
        return {k: _normalized(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalized(v) for v in value]
    return value


def _differences(a: dict, b: dict) -> list[str]:
    """``KEY pre A; post B`` for every key whose value differs, in ``a``'s key order then ``b``'s."""
    keys = list(a) + [k for k in b if k not in a]
    return [f"{k} pre {show(a.get(k), 60)}; post {show(b.get(k), 60)}" for k in keys if a.get(k) != b.get(k)]


def _run_settings(run: dict) -> list[tuple[str, str, object]]:
    """``(field, what, value)`` of every run-level setting that changes answers."""
    args = model_args(run)
    dtype = next((args[k] for k in DTYPE_ARGS if k in args), None)
    cli = run["config"].get("resolved_cli_args")
    cli = cli if isinstance(cli, dict) else {}
    # The evaluation backend is lmms-eval's --model (forgetbench, vllm, llava_hf, ...): another backend builds
    # other prompts, preprocesses images and decodes differently.
    out = [("model", "evaluation backend (config.model, lmms-eval --model)", run["config"].get("model")),
           ("model-backend", "model class (config.model_backend)", run["config"].get("model_backend")),
           ("dtype", "dtype (model_args)", dtype)]
    out += [("model-args", f"model argument '{k}'", v) for k, v in args.items()
            if k not in IDENTITY_ARGS | PLACEMENT_ARGS and k not in DTYPE_ARGS]
    out += [("chat-template", "chat template (sha256)", _sha(run, "chat_template")),
            ("system-instruction", "system instruction", run.get("system_instruction")),
            ("fewshot-as-multiturn", "fewshot_as_multiturn", run.get("fewshot_as_multiturn")),
            ("lmms-eval-version", "lmms-eval version", run.get("lmms_eval_version"))]
    out += [("cli", f"lmms-eval {flag}", cli.get(key)) for key, flag in CLI_SETTINGS.items()]
    return out


def setting_mismatches(pre: dict, post: dict, label: str, reference: str = "--pre") -> list[Mismatch]:
    """Differences in how the two runs asked and answered: the evaluation backend (lmms-eval's ``--model``) and its
    arguments (dtype, ...), the chat template, the system instruction, the lmms-eval version and answer-changing
    CLI arguments; per task, the generation settings, the few-shot count (and seed) and the rest of the task
    config.

    ``pretrained=`` (the model itself) is not compared: it differs by design, and :func:`manifest_mismatch`
    checks the lineage.

    >>> pre = {"config": {"model": "forgetbench", "model_args": "pretrained=/a"}, "configs": {}}
    >>> post = {"config": {"model": "llava_hf", "model_args": "pretrained=/b,dtype=bfloat16"}, "configs": {}}
    >>> print(*setting_mismatches(pre, post, "--post P"), sep="\\n")  # doctest: +NORMALIZE_WHITESPACE
    --post P: evaluation backend (config.model, lmms-eval --model) differs from --pre: pre "forgetbench";
      post "llava_hf"
    --post P: dtype (model_args) differs from --pre: pre null; post "bfloat16"
    """
    out = []
    settings = {(f, w): v for f, w, v in _run_settings(pre)}
    theirs = {(f, w): v for f, w, v in _run_settings(post)}
    for (field, what) in list(settings) + [k for k in theirs if k not in settings]:
        a, b = settings.get((field, what)), theirs.get((field, what))
        if a != b:
            out.append(Mismatch(field, a, b, f"{label}: {what} differs from {reference}: pre {show(a)}; "
                                             f"post {show(b)}"))
    shared = [t for t in pre["configs"] if t in post["configs"]]
    for task in shared:
        a, b = generation_settings(pre, task), generation_settings(post, task)
        if a != b:
            found = _differences(a or {}, b or {}) or [f"pre {show(a)}; post {show(b)}"]
            out.append(Mismatch("generation", a, b, f"{label}: generation settings of task '{task}' differ from "
                                                    f"{reference}: {', '.join(found)}", task=task))
        a, b = num_fewshot(pre, task), num_fewshot(post, task)
        if a != b:
            out.append(Mismatch("num-fewshot", a, b, f"{label}: few-shot examples of task '{task}' differ from "
                                                     f"{reference}: pre {show(a)}; post {show(b)}", task=task))
        elif isinstance(a, int) and a > 0:
            seeds = [run["config"].get("fewshot_seed") for run in (pre, post)]
            if seeds[0] != seeds[1]:
                out.append(Mismatch("fewshot-seed", *seeds, f"{label}: few-shot seed differs from {reference} "
                                                            f"(task '{task}' is {a}-shot): pre {show(seeds[0])}; "
                                                            f"post {show(seeds[1])}", task=task))
        configs = []
        for run in (pre, post):
            config = run["configs"][task]
            configs.append({k: _normalized(v) for k, v in config.items() if k not in CONFIG_SKIPPED}
                           if isinstance(config, dict) else {"(config)": config})
        found = _differences(*configs)
        if found:
            out.append(Mismatch("task-config", *configs, f"{label}: config of task '{task}' differs from "
                                                         f"{reference}: {', '.join(found)}", task=task))
    return out


@dataclass
class Sample:
    """One line of a sample log: what forgetbench needs of it."""

    input: object
    target: object
    answer: object
    value: float | None  # None: the metric is not a per-sample number (e.g. MME's dicts)
    cluster: str | None
    raw: object = None  # the logged metric value when it is not a number (a CIDEr or MME dict), else None


def load_samples(run: dict, task: str, metric: str, cluster_key: str | None, label: str) -> dict[int, Sample] | None:
    """``{doc_id: Sample}`` from ``<date>_samples_<task>.jsonl`` beside the results file, or None if absent.

    ``metric`` is the bare metric name (per-sample values are logged under it). With ``cluster_key``, every
    line must carry that field (the task's ``process_results`` returns it beside the metric), or the metric's
    logged dict must (lmms-eval's convention for dict-valued metrics).
    """
    file: Path = run["_file"]
    prefix = file.name[: -len("results.json")] if file.name.endswith("results.json") else None
    path = file.parent / f"{prefix}samples_{task}.jsonl" if prefix else None
    if path is None or not path.is_file():
        return None
    where = f"{label}: {path.name}"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, ValueError) as exc:
        raise CompareError(f"{where}: cannot read ({exc})") from None
    samples: dict[int, Sample] = {}
    numeric = set()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError) as exc:
            raise CompareError(f"{where} line {number}: not JSON ({exc})") from None
        if not isinstance(row, dict):
            raise CompareError(f"{where} line {number}: not a JSON object")
        doc_id = row.get("doc_id")
        if isinstance(doc_id, bool) or not isinstance(doc_id, int):
            raise CompareError(f"{where} line {number}: 'doc_id' is missing or not an integer")
        if doc_id in samples:
            raise CompareError(f"{where} line {number}: duplicate doc_id {doc_id}")
        for key in ("input", "target"):
            if key not in row:
                raise CompareError(f"{where} line {number}: no '{key}'")
        value = row.get(metric)  # absent everywhere: a metric that is not logged per sample
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if is_number and not math.isfinite(value):
            raise CompareError(f"{where} line {number}: '{metric}' is not a finite number: {value!r}")
        numeric.add(is_number)
        cluster = None
        if cluster_key is not None:
            # forgetbench's convention: a top-level field; lmms-eval's: a field of a dict-valued metric
            cluster = row.get(cluster_key, value.get(cluster_key) if isinstance(value, dict) else None)
            if not isinstance(cluster, (str, int)) or isinstance(cluster, bool):
                raise CompareError(f"{where} line {number}: cluster key '{cluster_key}' is missing or not a "
                                   f"string/integer")
            cluster = str(cluster)
        samples[doc_id] = Sample(row["input"], row["target"], row.get("filtered_resps"),
                                 float(value) if is_number else None, cluster, None if is_number else value)
    if len(numeric) > 1:
        raise CompareError(f"{where}: '{metric}' is a number in some lines and missing or not a number in others")
    effective = run["n-samples"].get(task, {}).get("effective") if isinstance(run["n-samples"].get(task), dict) \
        else None
    if effective is not None and effective != len(samples):
        raise CompareError(f"{where}: {len(samples)} samples but n-samples says {effective}")
    return samples


def sample_log_mismatch(task: str, in_pre: bool, label: str) -> Mismatch:
    """The sample log of ``task`` exists in one run only (``in_pre``: in the pre run).

    >>> print(sample_log_mismatch("t", True, "--post P"))
    --post P: sample log of task 't' only in pre
    """
    return Mismatch("sample-log", in_pre, not in_pre,
                    f"{label}: sample log of task '{task}' only in {'pre' if in_pre else 'post'}", task=task)


def sample_mismatches(pre: dict[int, Sample], post: dict[int, Sample], task: str,
                      label: str) -> tuple[list[int], list[Mismatch]]:
    """``(common doc ids in pre's order, mismatches)``: documents must be the same, asked the same way.

    >>> a = {0: Sample("q0", "x", "x", 1.0, None), 1: Sample("q1", "y", "y", 1.0, None),
    ...      3: Sample("q3", 1, 1, 0.0, None)}
    >>> b = {0: Sample("q0?", "x", "z", 0.0, None), 2: Sample("q2", "y", "y", 1.0, None),
    ...      3: Sample("q3", 1, 0, 0.0, None)}
    >>> common, found = sample_mismatches(a, b, "t", "--post P")
    >>> common
    [3]
    >>> print(*found, sep="\\n")
    --post P: doc ids of task 't' differ from --pre: 1 only in pre (e.g. 1), 1 only in post (e.g. 2)
    --post P: task 't': 1 doc(s) asked differently from --pre (e.g. doc 0: input differs)
    """
    out = []
    only_pre, only_post = sorted(set(pre) - set(post)), sorted(set(post) - set(pre))
    if only_pre or only_post:
        out.append(Mismatch("doc-ids", tuple(only_pre), tuple(only_post),
                            f"{label}: doc ids of task '{task}' differ from --pre: {len(only_pre)} only in pre"
                            f"{f' (e.g. {only_pre[0]})' if only_pre else ''}, {len(only_post)} only in post"
                            f"{f' (e.g. {only_post[0]})' if only_post else ''}", task=task))
    common, asked = [], []
    for doc in (d for d in pre if d in post):
        differs = [f for f in ("input", "target") if getattr(pre[doc], f) != getattr(post[doc], f)]
        (asked if differs else common).append((doc, differs))
    if asked:
        doc, fields = asked[0]
        docs = tuple(d for d, _ in asked)
        out.append(Mismatch("asked", docs, docs,
                            f"{label}: task '{task}': {len(asked)} doc(s) asked differently from --pre "
                            f"(e.g. doc {doc}: {' and '.join(fields)} differs)", task=task))
    return [doc for doc, _ in common], out


def unrestrictable_mismatch(task: str, dropped: dict[str, int], label: str) -> Mismatch:
    """Documents were dropped from ``task`` but its metric cannot be recomputed on the common ones: a mismatch
    that ``--allow-mismatch`` cannot repair.

    >>> print(unrestrictable_mismatch("mme", {"pre": 1, "post": 0}, "--post P"))
    --post P: cannot restrict task 'mme' to the common samples: its metric is not a mean of per-sample numbers
    """
    return Mismatch("common-samples", dropped["pre"], dropped["post"],
                    f"{label}: cannot restrict task '{task}' to the common samples: "
                    f"its metric is not a mean of per-sample numbers", restrictable=False, task=task)
