"""``forgetbench tasks``: every registered task with its role, data source, primary metric and offline availability;
and what ``lmms-eval tasks list`` needs to see them."""

from __future__ import annotations

import json
import subprocess

import pytest
from conftest import BIN, lmms_eval_bin

from forgetbench import suite, tasks_path
from forgetbench.compare.scores import TASK_METRICS


def test_lists_every_registered_task(capsys):
    done = subprocess.run([str(BIN / "forgetbench"), "tasks", "--json"], capture_output=True, text=True, check=True,
                          timeout=120)
    rows = {r["task"]: r for r in json.loads(done.stdout)}
    assert list(rows) == list(suite.TASKS)
    for name, task in suite.TASKS.items():
        assert rows[name]["role"] == task.role
        assert rows[name]["metric"] != "-", name
    for name in suite.tasks_in_role("upstream", "forgetbench_lab_") + suite.tasks_in_role("downstream",
                                                                                            "forgetbench_lab_"):
        assert rows[name]["offline"] and rows[name]["source"].startswith("local parquet: data/"), rows[name]
    assert rows["forgetbench_pathvqa"]["source"] == "hub: flaviagiammarino/path-vqa"
    assert rows["flickr30k_test"]["metric"] == TASK_METRICS["flickr30k_test"] == "flickr_CIDEr"
    table = subprocess.run([str(BIN / "forgetbench"), "tasks"], capture_output=True, text=True, check=True,
                           timeout=120).stdout.splitlines()
    assert table[0].split() == ["task", "role", "metric", "offline", "data"] and len(table) == len(rows) + 1


@pytest.mark.heavy
def test_lmms_eval_tasks_list_needs_the_include_path():
    """``lmms-eval tasks list`` builds its TaskManager without importing lmms_eval.models, so the entry point that
    adds forgetbench's folder does not run there: --include-path does it (docs/lmms-eval.md)."""
    done = subprocess.run([lmms_eval_bin(), "tasks", "list", "--include-path", str(tasks_path())],
                          capture_output=True, text=True, timeout=300, check=True)
    listed = {line.strip() for line in done.stdout.splitlines()}
    assert set(suite.TASKS) <= listed
