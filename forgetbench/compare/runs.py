"""Reading one lmms-eval 0.7.x run: its results.json, its sample logs, the ``unscorable*.json`` of
``--model forgetbench`` and the forgetbench manifest of the checkpoint it evaluated.

A broken input is a :class:`~forgetbench.compare.errors.CompareError`: one line naming the input (``label``, e.g.
``--pre DIR``) and what is wrong. Comparing two runs is :mod:`.pairing`'s part.
"""

from __future__ import annotations

import json
import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from forgetbench.checkpoint import manifest_path, read_manifest
from forgetbench.compare.errors import CompareError


def read_regular(file: Path, label: str) -> str:
    """The UTF-8 text of ``file``, refusing anything but a regular file (a FIFO, a device, a folder) in one line.

    Opened without blocking and checked on the open descriptor, so a FIFO named like a results file can neither
    hang the command nor be swapped in between a check and the read. OSError and UnicodeDecodeError (a
    ValueError) reach the caller, which names the input.
    """
    fd = os.open(file, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with open(fd, "rb") as fh:  # closes fd
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise CompareError(f"{label}: {file} is not a regular file")
        return fh.read().decode("utf-8")


def find_results_file(path: Path, label: str) -> Path:
    """The single ``*_results.json`` in ``path`` or its immediate sub-folders.

    ``path`` may also be the results file itself. ``label`` (e.g. ``--pre DIR``)
    prefixes error messages.
    """
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise CompareError(f"{label}: {'not a regular file or folder' if path.exists() else 'no such file or folder'}")
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
        run = json.loads(read_regular(file, label))
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


def model_args(run: dict) -> dict:
    """``config.model_args`` (a ``k=v,k=v`` string or a mapping) as a mapping of strings.

    >>> model_args({"config": {"model_args": "pretrained=/m,dtype=bfloat16"}})
    {'pretrained': '/m', 'dtype': 'bfloat16'}
    """
    args = run["config"].get("model_args")
    if isinstance(args, str):
        return {k.strip(): v.strip() for k, _, v in (p.partition("=") for p in args.split(",") if "=" in p)}
    return {str(k): str(v) for k, v in args.items()} if isinstance(args, dict) else {}


def load_manifest(run: dict, label: str) -> dict | None:
    """The forgetbench manifest of the checkpoint a run evaluated, or None when it has none.

    The folder it was read from is kept under the key ``"_folder"``.
    """
    model = pretrained(run)
    if model is None:
        return None
    file = manifest_path(model)
    if file.exists() and not file.is_file():  # read_manifest would take it for no manifest
        raise CompareError(f"{label}: manifest {file} is not a regular file")
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
            items = json.loads(read_regular(file, label))["items"]
            for item in items:
                counts[item["task"]] = counts.get(item["task"], 0) + 1
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CompareError(f"{label}: cannot read {file.name} ({type(exc).__name__}: {exc})") from None
    return counts


def installed_versions(run: dict) -> dict[str, str] | None:
    """``{"lmms-eval": V, "forgetbench": V}``: the installed distributions' versions ``--model forgetbench``
    records in its ``unscorable*.json`` beside the results folder (``versions``); None when the run has none
    (another wrapper, an older forgetbench, a results file away from its output folder), when the file belongs
    to another run (its ``pretrained`` is not this run's: two runs into one ``--output_path``) or is unreadable
    (:func:`load_unscorable` names that), or when its ranks disagree.

    >>> installed_versions({"config": {}})  # a hand-made run, no file
    """
    file = run.get("_file")
    if not isinstance(file, Path):
        return None
    folder = file.parent
    files = sorted(folder.glob("unscorable*.json")) or sorted(folder.parent.glob("unscorable*.json"))
    found = set()
    for path in files:
        try:
            data = json.loads(read_regular(path, "-"))
        except (OSError, ValueError, RecursionError, CompareError):
            return None
        versions = data.get("versions") if isinstance(data, dict) else None
        if not isinstance(versions, dict) or data.get("pretrained") != pretrained(run):
            return None
        found.add(tuple(sorted((str(k), v if isinstance(v, str) else None) for k, v in versions.items())))
    if len(found) != 1:
        return None
    versions = dict(found.pop())
    return versions if isinstance(versions.get("lmms-eval"), str) else None


@dataclass
class Sample:
    """One line of a sample log: what forgetbench needs of it."""

    input: object
    target: object
    answer: object
    value: float | None  # None: the metric is not a per-sample number (e.g. MME's dicts)
    cluster: str | None
    raw: object = None  # the logged metric value when it is not a number (a CIDEr or MME dict), else None


def sample_log_path(run: dict, task: str) -> Path | None:
    """Where lmms-eval writes the sample log of ``task``: ``<date>_samples_<task>.jsonl`` beside the results file."""
    file: Path = run["_file"]
    prefix = file.name[: -len("results.json")] if file.name.endswith("results.json") else None
    return file.parent / f"{prefix}samples_{task}.jsonl" if prefix else None


def load_samples(run: dict, task: str, metric: str, cluster_key: str | None, label: str) -> dict[int, Sample] | None:
    """``{doc_id: Sample}`` from ``<date>_samples_<task>.jsonl`` beside the results file, or None if absent.

    ``metric`` is the bare metric name (per-sample values are logged under it). With ``cluster_key``, every
    line must carry that field (the task's ``process_results`` returns it beside the metric), or the metric's
    logged dict must (lmms-eval's convention for dict-valued metrics).
    """
    path = sample_log_path(run, task)
    if path is None or not path.exists():
        return None
    where = f"{label}: {path.name}"
    try:
        lines = read_regular(path, label).splitlines()
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

