"""The task registry: every forgetbench task (the benchmark suite and the lab), its role, its one prompt definition
and scorer, and its training rows.

lmms-eval reads the prompts and scorers through the task YAMLs in ``tasks/`` (``!function
forgetbench.suite.<module>.<hook>``); training reads the same prompts through :func:`train_conversations`.
docs/tasks.md has one card per task.
"""

from __future__ import annotations

import functools
import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from forgetbench.suite import images, lab

ROLES = ("downstream", "upstream", "emt")  # where a study puts a task by default (E, F, EMT's classification)


def _groups() -> dict[str, tuple[str, ...]]:
    """Every group YAML under ``tasks/`` (a file with a top-level ``group:``): its name and its ``task:`` list."""
    import yaml

    import forgetbench

    found = {}
    for path in sorted(forgetbench.tasks_path().rglob("*.yaml")):
        text = path.read_text()
        if text.startswith("group:") or "\ngroup:" in text:  # task files and templates hold !function tags
            config = yaml.safe_load(text)
            found[config["group"]] = tuple(config["task"])
    return found


GROUPS: dict[str, tuple[str, ...]] = _groups()


def _group_role(group: str) -> str | None:
    """A group's role is its name: ``forgetbench_[lab_]<role>[_closed]``.

    >>> _group_role("forgetbench_lab_upstream"), _group_role("forgetbench_emt_closed"), _group_role("mine")
    ('upstream', 'emt', None)
    """
    role = group.removeprefix("forgetbench_").removeprefix("lab_").removesuffix("_closed")
    return role if group.startswith("forgetbench_") and role in ROLES else None


# The groups' task lists are the one declaration of which task has which role.
_ROLE_OF = {task: role for group, tasks in GROUPS.items() if (role := _group_role(group)) for task in tasks}


@dataclass(frozen=True)
class SuiteTask:
    name: str  # lmms-eval task name
    module: str  # forgetbench.suite module holding the prompt and ``to_sft_example``
    example: str = "to_sft_example"
    # For lmms-eval's own tasks, whose hub copies hold only the evaluated split: (hub id, the hub split that holds
    # the requested one or "" for the same name, the forgetbench.suite.reused function that keeps its rows).
    train_source: tuple[str, str, str] | None = None
    # A task in no group takes the role of the grouped task it is a variant of (a closed set, another resolution).
    variant_of: str | None = None

    @property
    def role(self) -> str:
        """"downstream", "upstream" or "emt": the role of the group YAML that lists the task (or its original)."""
        role = _ROLE_OF.get(self.name) or _ROLE_OF.get(self.variant_of or "")
        if role is None:
            raise KeyError(f"{self.name}: in no group YAML under tasks/ (nor is a task it is a variant of)")
        return role


def _closed(task: SuiteTask) -> list[SuiteTask]:
    """A task and its closed-set variant (``<name>_closed``, likelihood over the label set)."""
    return [task, SuiteTask(task.name + "_closed", task.module, variant_of=task.name)]


# A variant that no group lists takes the role of the grouped task it varies (closed sets are found by their suffix).
VARIANTS = {"forgetbench_rsvqa_hr": "forgetbench_rsvqa_lr"}  # RSVQA-HR: the alternative to LR, not in the group


def _hook_module(path: Path) -> str:
    """The ``forgetbench.suite`` module whose hooks a task YAML (or the template it includes) names."""
    text = path.read_text()
    found = re.search(r"forgetbench\.suite\.(\w+)\.", text)
    if found:
        return found.group(1)
    include = re.search(r"^include:\s*(\S+)", text, re.M)
    if include is None:
        raise KeyError(f"{path}: names no forgetbench.suite hook, and includes no template that does")
    return _hook_module(path.parent / include.group(1))


def _own_tasks() -> list[SuiteTask]:
    """Every forgetbench task YAML under ``tasks/`` but the lab's is a registry row (so a new task is its YAML and
    its hooks): its name is the YAML's ``task:``, its module the one its hooks name."""
    import forgetbench

    rows = []
    for path in sorted(forgetbench.tasks_path().rglob("forgetbench_*.yaml")):
        text = path.read_text()
        name = re.search(r"^task:[ \t]*(\w+)[ \t]*$", text, re.M)  # a group's task: is a list
        if name is None or name.group(1).startswith(lab.PREFIX):  # a group, or a lab task (rows of suite.lab)
            continue
        task = name.group(1)
        closed_of = task.removesuffix("_closed") if task.endswith("_closed") else None
        rows.append(SuiteTask(task, _hook_module(path), variant_of=VARIANTS.get(task, closed_of)))
    return rows


_REUSED = [
    SuiteTask("scienceqa_img", "reused", "scienceqa_example", ("derek-thomas/ScienceQA", "", "scienceqa_rows")),
    SuiteTask("flickr30k_test", "reused", "flickr30k_example", ("nlphuji/flickr30k", "test", "flickr30k_rows")),
]
_LAB = [task for key in lab.LAB_TASKS for task in _closed(SuiteTask(lab.task_name(key), "lab"))]
TASKS: dict[str, SuiteTask] = {task.name: task for task in _own_tasks() + _REUSED + _LAB}

# What the benchmark's groups list (lmms-eval's own task names where a task is reused).
DOWNSTREAM = GROUPS["forgetbench_downstream"]
UPSTREAM = GROUPS["forgetbench_upstream"]
EMT = GROUPS["forgetbench_emt"]


def _module(task: SuiteTask):
    return importlib.import_module(f"forgetbench.suite.{task.module}")


def task_yaml(task_name: str) -> Path:
    """The YAML file that defines one of forgetbench's own suite tasks."""
    import forgetbench

    found = sorted(forgetbench.tasks_path().rglob(f"{task_name}.yaml"))
    if not found:
        raise KeyError(f"{task_name}: no such forgetbench task YAML under {forgetbench.tasks_path()}")
    return found[0]


@functools.cache
def task_config(task_name: str) -> dict:
    """The task's lmms-eval config, includes resolved and ``!function`` hooks imported, as lmms-eval reads it."""
    from lmms_eval.utils import load_yaml_config

    return load_yaml_config(str(task_yaml(task_name)), mode="full")


def load_split(task_name: str, split: str, data_files: str | dict | None = None):
    """One split of a suite task's documents, loaded exactly as its lmms-eval task loads them (hub id or local
    parquet from the YAML, then ``process_docs``). ``data_files`` reads a local parquet copy instead (a path, or
    ``{split: path}``), with the same columns as the hub copy."""
    import datasets

    task = _task(task_name)
    if data_files is not None:
        files = data_files if isinstance(data_files, dict) else {split: str(data_files)}
        with images.quiet_progress():  # a local copy reads in seconds; its bar would be the only line before an error
            dataset = datasets.load_dataset("parquet", data_files=files, split=split)
    elif task.train_source:
        hub_id, hub_split, _ = task.train_source
        dataset = datasets.load_dataset(hub_id, split=hub_split or split)
    else:
        config = task_config(task_name)
        kwargs = dict(config.get("dataset_kwargs") or {})
        if isinstance(kwargs.get("data_files"), dict):  # relative to the YAML's folder, as lmms-eval reads them
            folder = task_yaml(task_name).parent
            kwargs["data_files"] = {k: str(folder / v) for k, v in kwargs["data_files"].items()}
        if kwargs.pop("load_from_disk", False):
            dataset = datasets.load_from_disk(config["dataset_path"])[split]
        else:
            dataset = datasets.load_dataset(config["dataset_path"], config.get("dataset_name"), split=split, **kwargs)
    if task.train_source:
        return getattr(_module(task), task.train_source[2])(dataset, split)
    process_docs = task_config(task_name).get("process_docs")
    return process_docs(dataset) if process_docs else dataset


def train_conversations(task_name: str, split: str = "train", data_files: str | dict | None = None,
                        on_bad_rows: Callable[[images.UnreadableRows], None] | None = None):
    """A suite task's ``split`` as TRL vision-language SFT rows (``images``, ``messages``), asked with the very
    prompt its evaluation uses. ``data_files``: a local parquet copy (see :func:`load_split`).

    Every row's images are read and converted first (``common.rgb``, as evaluation converts them): rows whose
    images cannot be read raise one :class:`~forgetbench.suite.images.UnreadableRows` naming the split, the rows
    and the count; with ``on_bad_rows``, they are handed to it and left out instead.

    Tasks: the keys of :data:`TASKS` (forgetbench's own, plus ``scienceqa_img`` and ``flickr30k_test``, whose
    train splits come from the hub copies named in ``forgetbench.suite.reused``).
    """
    task = _task(task_name)
    example = getattr(_module(task), task.example)
    dataset = images.readable(load_split(task_name, split, data_files), example, split, on_bad_rows)
    return dataset.map(example, remove_columns=dataset.column_names)


def tasks_in_role(role: str, prefix: str = "") -> list[str]:
    """The registered tasks of one role (free-generation variants), optionally of one family by name prefix.

    >>> tasks_in_role("upstream", lab.PREFIX)
    ['forgetbench_lab_color', 'forgetbench_lab_shape', 'forgetbench_lab_count', 'forgetbench_lab_printed']
    """
    return [t.name for t in TASKS.values() if t.role == role and t.name.startswith(prefix)
            and not t.name.endswith("_closed")]


def _task(task_name: str) -> SuiteTask:
    if task_name not in TASKS:
        raise KeyError(f"{task_name}: not a forgetbench suite task (known: {', '.join(TASKS)})")
    return TASKS[task_name]
