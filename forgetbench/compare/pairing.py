"""Reading lmms-eval 0.7.x outputs (results.json, sample logs), the checkpoint manifest, and the pairing checks
between a pre and a post run.

A broken input is a :class:`~forgetbench.compare.errors.CompareError` (one line naming the input and what is
wrong). A difference between two sound runs is a :class:`Mismatch`: ``--allow-mismatch`` may tolerate it, and
code decides on its fields, never on its message.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from forgetbench.checkpoint import MANIFEST_NAME, read_manifest, same_model
from forgetbench.compare.errors import CompareError


@dataclass(frozen=True)
class Mismatch:
    """One difference between the pre (or first) run and another run.

    ``field`` names what differs: ``tasks``, ``limit``, ``offset``, ``n-samples``, ``version``, ``sample-log``,
    ``doc-ids``, ``asked``, ``base-model`` or ``common-samples``; ``pre`` and ``post`` are the two sides' values.
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
    """``pretrained=`` of ``config.model_args`` (a ``k=v,k=v`` string or a mapping), or None.

    >>> pretrained({"config": {"model_args": "pretrained=/ckpt/lora,device=cpu"}})
    '/ckpt/lora'
    >>> pretrained({"config": {"model_args": {"pretrained": "org/model"}}})
    'org/model'
    """
    args = run["config"].get("model_args")
    if isinstance(args, str):
        args = dict(part.partition("=")[::2] for part in args.split(",") if "=" in part)
    value = args.get("pretrained") if isinstance(args, dict) else None
    return value.strip() if isinstance(value, str) and value.strip() else None


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
    return out


@dataclass
class Sample:
    """One line of a sample log: what forgetbench needs of it."""

    input: object
    target: object
    answer: object
    value: float | None  # None: the metric is not a per-sample number (e.g. MME's dicts)
    cluster: str | None


def load_samples(run: dict, task: str, metric: str, cluster_key: str | None, label: str) -> dict[int, Sample] | None:
    """``{doc_id: Sample}`` from ``<date>_samples_<task>.jsonl`` beside the results file, or None if absent.

    ``metric`` is the bare metric name (per-sample values are logged under it). With ``cluster_key``, every
    line must carry that field (the task's ``process_results`` returns it beside the metric).
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
            cluster = row.get(cluster_key)
            if not isinstance(cluster, (str, int)) or isinstance(cluster, bool):
                raise CompareError(f"{where} line {number}: cluster key '{cluster_key}' is missing or not a "
                                   f"string/integer")
            cluster = str(cluster)
        samples[doc_id] = Sample(row["input"], row["target"], row.get("filtered_resps"),
                                 float(value) if is_number else None, cluster)
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
