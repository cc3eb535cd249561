"""``forgetbench tasks``: every registered task (:data:`forgetbench.suite.TASKS`) with its role, where its data
comes from, its primary metric and whether that data is there offline.

Reads the task YAMLs as text (``!function`` hooks are not imported, lmms-eval is not loaded), so it answers in a
fraction of a second. lmms-eval's own reused tasks (``scienceqa_img``, ``flickr30k_test``) are read from the
installed lmms-eval's task folder, found without importing it.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Mapping
from pathlib import Path

import yaml

from forgetbench import tasks_path
from forgetbench.suite import TASKS


class _Loader(yaml.SafeLoader):
    """YAML as lmms-eval writes it, ``!function`` kept as its dotted name."""


_Loader.add_constructor("!function", lambda loader, node: f"!function {loader.construct_scalar(node)}")


def read_task_yaml(file: Path) -> dict:
    """A task YAML with its ``include`` chain merged (the including file wins), as plain data.

    >>> config = read_task_yaml(tasks_path() / "lab" / "forgetbench_lab_color.yaml")
    >>> config["task"], config["dataset_path"], config["metadata"]["forgetbench"]["primary_metric"]
    ('forgetbench_lab_color', 'parquet', 'exact_match')
    """
    data = yaml.load(file.read_text(encoding="utf-8"), Loader=_Loader) or {}
    include = data.pop("include", None)
    return {**read_task_yaml(file.parent / include), **data} if include else data


def _lmms_eval_tasks() -> Path | None:
    spec = importlib.util.find_spec("lmms_eval")
    return Path(spec.origin).parent / "tasks" if spec and spec.origin else None


def task_file(name: str) -> Path | None:
    """The YAML defining ``name``: forgetbench's own (under ``forgetbench tasks-path``), else lmms-eval's."""
    for root in (tasks_path(), _lmms_eval_tasks()):
        found = sorted(root.rglob(f"{name}.yaml")) if root and root.is_dir() else []
        if found:
            return found[0]
    return None


def _hub_cached(repo: str) -> bool:
    """Whether the hub dataset ``repo`` is in the local Hugging Face caches (hub files or a prepared dataset)."""
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    hub = Path(os.environ.get("HF_HUB_CACHE", home / "hub"))
    prepared = Path(os.environ.get("HF_DATASETS_CACHE", home / "datasets"))
    return (hub / f"datasets--{repo.replace('/', '--')}").is_dir() or (prepared / repo.replace("/", "___")).is_dir()


def data_source(config: Mapping, folder: Path) -> tuple[str, bool]:
    """``(where the evaluation data comes from, whether it is available offline)`` of a task config.

    Local parquet files resolve against the YAML's folder (as lmms-eval reads them) or the working directory
    (RSVQA's converted release); ``load_from_disk`` reads a saved folder; anything else is a hub dataset id,
    available offline when it is in the Hugging Face cache.
    """
    path = str(config.get("dataset_path", ""))
    kwargs = config.get("dataset_kwargs") or {}
    files = kwargs.get("data_files") if isinstance(kwargs, dict) else None
    if path in ("parquet", "json", "csv", "imagefolder") and files:
        names = list(files.values()) if isinstance(files, dict) else [files]
        names = [n for v in names for n in (v if isinstance(v, list) else [v])]
        here = all((folder / n).is_file() or Path(n).is_file() for n in names)
        return f"local {path}: {', '.join(names)}", here
    if isinstance(kwargs, dict) and kwargs.get("load_from_disk"):
        return f"saved dataset: {path}", Path(path).is_dir()
    return f"hub: {path}" + (f" ({config['dataset_name']})" if config.get("dataset_name") else ""), _hub_cached(path)


def rows(metrics: Mapping[str, str] | None = None) -> list[dict]:
    """One record per registered task: ``task``, ``role``, ``source``, ``metric``, ``offline``.

    A forgetbench task's metric is the one its YAML declares (``metadata.forgetbench.primary_metric``, the
    declaration compare reads from the run). ``metrics`` is the compare part's table of lmms-eval's own tasks'
    primary metrics (``forgetbench.compare.scores.TASK_METRICS``, passed in by ``forgetbench tasks``: suite imports
    no other part), used for the reused tasks, whose lmms-eval YAML declares none.
    """
    out = []
    for name, task in TASKS.items():
        file = task_file(name)
        config = read_task_yaml(file) if file else {}
        meta = config.get("metadata")
        meta = next((m for m in meta if isinstance(m, dict) and "forgetbench" in m), {}) if isinstance(meta, list) \
            else meta if isinstance(meta, dict) else {}
        declared = (meta.get("forgetbench") or {}).get("primary_metric")
        source, offline = data_source(config, file.parent) if file else ("unknown (no task YAML found)", False)
        out.append({"task": name, "role": task.role, "source": source,
                     "metric": declared or (metrics or {}).get(name) or "-", "offline": offline})
    return out


def text(as_json: bool = False, metrics: Mapping[str, str] | None = None) -> str:
    """What ``forgetbench tasks`` prints: a table of :func:`rows`, or JSON (``as_json``)."""
    found = rows(metrics)
    if as_json:
        return json.dumps(found, indent=2)
    grid = [("task", "role", "metric", "offline", "data")] + [
        (r["task"], r["role"], r["metric"], "yes" if r["offline"] else "no", r["source"]) for r in found]
    widths = [max(len(row[i]) for row in grid) for i in range(len(grid[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in grid)
