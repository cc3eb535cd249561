"""Pairing a pre and a post run: are they the same evaluation? Which documents were scored (task sets, limit,
sample counts, versions, doc ids and prompts, the checkpoint's lineage) and how they were asked and answered (the
settings of docs/metrics.md, "Pairing"). Reading the runs is :mod:`.runs`'s part.

A difference between two sound runs is a :class:`Mismatch`: ``--allow-mismatch`` may tolerate it, and code decides
on its fields, never on its message. A broken input is a :class:`~forgetbench.compare.errors.CompareError`.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

from forgetbench.checkpoint import same_model
from forgetbench.compare.errors import CompareError
from forgetbench.compare.runs import Sample, installed_versions, model_args, pretrained

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
            ("fewshot-as-multiturn", "fewshot_as_multiturn", run.get("fewshot_as_multiturn"))]
    out += [("cli", f"lmms-eval {flag}", cli.get(key)) for key, flag in CLI_SETTINGS.items()]
    return out


# --------------------------------------------------------------------------
# The lmms-eval version (docs/metrics.md, "The lmms-eval version")
# --------------------------------------------------------------------------

# A release version ("0.7.3", "v0.4.1.dev2+g1a2b"), as opposed to lmms-eval 0.7.3's "branch@commit", which is
# `git describe` of whatever repository holds site-packages (often the user's own project), or "unknown@unknown".
_RELEASE = re.compile(r"v?\d+(\.\d+)+([.+-]?[0-9A-Za-z]+)*")


def lmms_eval_version(run: dict) -> tuple[str | None, str]:
    """``(version, where from)`` of the lmms-eval a run used: the installed distribution's version that
    ``--model forgetbench`` records (``"installed"``), else ``lmms_eval_version`` when it is a release version
    (``"recorded"``), else ``(None, "unknown")``: a ``branch@commit`` may name any repository.

    >>> lmms_eval_version({"lmms_eval_version": "0.7.3"}), lmms_eval_version({"lmms_eval_version": "main@0a1b2c3d"})
    (('0.7.3', 'recorded'), (None, 'unknown'))
    """
    installed = installed_versions(run)
    if installed is not None:
        return installed["lmms-eval"], "installed"
    recorded = run.get("lmms_eval_version")
    if isinstance(recorded, str) and _RELEASE.fullmatch(recorded.strip()):
        return recorded.strip(), "recorded"
    return None, "unknown"


def version_mismatch(pre: dict, post: dict, label: str, reference: str = "--pre") -> Mismatch | None:
    """The two runs used different lmms-eval versions, or None (also when either version is unknown:
    :func:`version_notes` lists that).

    >>> print(version_mismatch({"lmms_eval_version": "0.7.3"}, {"lmms_eval_version": "0.7.4"}, "--post P"))
    --post P: lmms-eval version differs from --pre: pre "0.7.3"; post "0.7.4"
    >>> version_mismatch({"lmms_eval_version": "main@0a1b2c3d"}, {"lmms_eval_version": "main@9f8e7d6c"}, "--post P")
    """
    (a, where_a), (b, where_b) = lmms_eval_version(pre), lmms_eval_version(post)
    if a is None or b is None or a == b:
        return None
    what = "installed lmms-eval version" if where_a == where_b == "installed" else "lmms-eval version"
    return Mismatch("lmms-eval-version", a, b, f"{label}: {what} differs from {reference}: pre {show(a)}; "
                                               f"post {show(b)}")


def version_notes(pre: dict, post: dict) -> dict | None:
    """What is known about the two runs' versions beyond :func:`version_mismatch`, for compare.json's
    ``pairing`` section; None when there is nothing to say (the recorded strings agree and each side's version
    is known or neither is).

    ``recorded_versions``: both ``lmms_eval_version`` strings; ``installed_versions``: what ``--model forgetbench``
    recorded per side (``{"lmms-eval": V, "forgetbench": V}`` or None); ``note``: one line saying what was
    paired on and what was not compared.

    >>> version_notes({"lmms_eval_version": "main@aaaa111"}, {"lmms_eval_version": "main@bbbb222"})["note"]
    ... # doctest: +NORMALIZE_WHITESPACE
    "lmms-eval version not compared: neither run records an installed lmms-eval version (--model forgetbench
      does) and lmms_eval_version ('main@aaaa111', 'main@bbbb222') is branch@commit of whatever git repository
      holds site-packages, not a release"
    """
    recorded = {"pre": pre.get("lmms_eval_version"), "post": post.get("lmms_eval_version")}
    installed = {"pre": installed_versions(pre), "post": installed_versions(post)}
    (a, where_a), (b, where_b) = lmms_eval_version(pre), lmms_eval_version(post)
    notes = []
    shown = f"lmms_eval_version ({recorded['pre']!r}, {recorded['post']!r})"
    if a is not None and b is not None:
        if recorded["pre"] != recorded["post"] and "installed" in (where_a, where_b):
            notes.append(f"paired on the installed lmms-eval version ({a} and {b}); {shown} differs but is "
                         "branch@commit of whatever git repository holds site-packages, not lmms-eval's version")
    elif a is None and b is None:
        if recorded["pre"] != recorded["post"]:
            notes.append(f"lmms-eval version not compared: neither run records an installed lmms-eval version "
                         f"(--model forgetbench does) and {shown} is branch@commit of whatever git repository "
                         "holds site-packages, not a release")
    else:
        side = "pre" if a is None else "post"
        notes.append(f"lmms-eval version not compared: {side} records no installed lmms-eval version and its "
                     f"lmms_eval_version {recorded[side]!r} is not a release (the other used {a or b})")
    ours = [v.get("forgetbench") if v else None for v in installed.values()]
    if None not in ours and ours[0] != ours[1]:
        notes.append(f"forgetbench differs: pre {ours[0]}; post {ours[1]} (listed, not compared)")
    if not notes:
        return None
    return {"recorded_versions": recorded, "installed_versions": installed, "note": "; ".join(notes)}


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
    out += [m for m in [version_mismatch(pre, post, label, reference)] if m]
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
