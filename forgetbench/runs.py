"""Reading lmms-eval 0.7.x outputs for ``forgetbench compare``: results.json, sample logs, the checkpoint manifest,
and the pairing checks between a pre and a post run.

Every problem is a :class:`CompareError` whose text is one line naming the input and what is wrong.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

MANIFEST_NAME = "forgetbench_manifest.json"  # written by forgetbench.training.save_checkpoint


class CompareError(Exception):
    """A refusal: bad input the user can fix. Printed as one line, exit 2."""


def find_results_file(path: Path, label: str) -> Path:
    """The single ``*_results.json`` in ``path`` or its immediate sub-folders.

    ``path`` may also be the results file itself. ``label`` (e.g. ``--pre DIR``)
    prefixes error messages.
    """
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


def _read_json(file: Path, label: str):
    try:
        with open(file, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError, RecursionError) as exc:  # ValueError covers bad JSON and bad UTF-8
        raise CompareError(f"{label}: cannot read {file.name} ({exc})") from None


def load_run(path: Path, label: str) -> dict:
    """Load an lmms-eval results.json and check the parts forgetbench relies on.

    The file's path is kept under the key ``"_file"`` (sample logs lie beside it).
    """
    file = find_results_file(path, label)
    try:
        run = _read_json(file, label)
    except CompareError as exc:
        raise CompareError(f"{label}: not an lmms-eval output ({str(exc).split(': ', 1)[1]})") from None
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
    """The forgetbench manifest of the checkpoint a run evaluated, or None when it has none."""
    model = pretrained(run)
    file = Path(model) / MANIFEST_NAME if model else None
    if file is None or not file.is_file():
        return None
    manifest = _read_json(file, f"{label}: manifest")
    # base_model is null for a model trained from scratch (the lab base model's own manifest).
    if not isinstance(manifest, dict) or not isinstance(manifest.get("base_model", ""), (str, type(None))):
        raise CompareError(f"{label}: manifest {file} has no 'base_model' string or null")
    manifest["_folder"] = str(file.parent)
    params = manifest.get("trainable_parameters")
    if params is not None and (isinstance(params, bool) or not isinstance(params, int)):
        raise CompareError(f"{label}: manifest {file}: 'trainable_parameters' is not an integer")
    return manifest


def _same_model(a: str, b: str) -> bool:
    def norm(name: str) -> str:
        if name == "forgetbench-lab":  # the lab alias names the shipped base model
            from forgetbench.lab.model import base_model_path

            name = str(base_model_path())
        return os.path.realpath(name) if os.path.exists(name) else name

    return norm(a) == norm(b)


def manifest_mismatch(pre: dict, manifest: dict | None, label: str) -> str | None:
    """Why the checkpoint's base model is not the pre run's model, or None."""
    if manifest is None:
        return None
    model = pretrained(pre)
    names = [manifest.get("base_model"), manifest.get("base_model_path")]
    if model is not None and any(isinstance(n, str) and _same_model(n, model) for n in names):
        return None
    if model is not None and _same_model(pretrained_path_of(manifest), model):
        return None  # post evaluated the very model pre evaluated
    if manifest.get("base_model") is None:
        return f"{label}: checkpoint was trained from scratch, not tuned from --pre's '{model}'"
    return f"{label}: checkpoint was tuned from '{manifest['base_model']}' but --pre evaluated '{model}'"


def pretrained_path_of(manifest: dict) -> str:
    """The folder the manifest was read from (set by :func:`load_manifest`)."""
    return manifest.get("_folder", "")


def run_mismatches(pre: dict, post: dict, tasks: list[str], pre_label: str, post_label: str) -> list[str]:
    """Run-level differences (task sets, limit/offset, sample counts, versions), one line each.

    A requested task missing from either run is an error, not a mismatch.
    """
    for run, label in ((pre, pre_label), (post, post_label)):
        missing = [t for t in tasks if t not in run["results"]]
        if missing:
            raise CompareError(f"{label}: task(s) not found: {', '.join(missing)}")
    out = []
    only_pre = sorted(set(pre["results"]) - set(post["results"]))
    only_post = sorted(set(post["results"]) - set(pre["results"]))
    if only_pre or only_post:
        out.append(f"{post_label}: tasks differ from --pre: only in pre: {', '.join(only_pre) or '-'}; "
                   f"only in post: {', '.join(only_post) or '-'}")
    # --limit (and --offset) pick which documents are scored.
    for key in ("limit", "offset"):
        a, b = pre["config"].get(key), post["config"].get(key)
        if a != b:
            out.append(f"{post_label}: {key} differs from --pre: pre {a}; post {b}")
    # Every task, not only the requested ones: the two runs must be the same evaluation.
    for task in sorted(set(pre["n-samples"]) | set(post["n-samples"])):
        counts = []
        for run in (pre, post):
            n = run["n-samples"].get(task)
            counts.append((n.get("original"), n.get("effective")) if isinstance(n, dict) else n)
        if counts[0] != counts[1]:
            out.append(f"{post_label}: sample counts of '{task}' differ from --pre (original, effective): "
                       f"pre {counts[0]}; post {counts[1]}")
    for task in sorted(set(pre["versions"]) | set(post["versions"])):
        a, b = pre["versions"].get(task), post["versions"].get(task)
        if a != b:
            out.append(f"{post_label}: version of task '{task}' differs from --pre: pre {a}; post {b}")
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


def sample_mismatches(pre: dict[int, Sample], post: dict[int, Sample], task: str, label: str) -> tuple[list, list]:
    """``(common doc ids in pre's order, mismatch lines)``: documents must be the same, asked the same way.

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
        out.append(f"{label}: doc ids of task '{task}' differ from --pre: {len(only_pre)} only in pre"
                   f"{f' (e.g. {only_pre[0]})' if only_pre else ''}, {len(only_post)} only in post"
                   f"{f' (e.g. {only_post[0]})' if only_post else ''}")
    common, asked = [], []
    for doc in (d for d in pre if d in post):
        differs = [f for f in ("input", "target") if getattr(pre[doc], f) != getattr(post[doc], f)]
        (asked if differs else common).append((doc, differs))
    if asked:
        doc, fields = asked[0]
        out.append(f"{label}: task '{task}': {len(asked)} doc(s) asked differently from --pre "
                   f"(e.g. doc {doc}: {' and '.join(fields)} differs)")
    common = [doc for doc, _ in common]
    return common, out
