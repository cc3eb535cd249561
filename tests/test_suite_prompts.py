"""Prompt snapshots: a change to any suite task's prompt fails here until the snapshot is updated on purpose.

Update after an intended change (then review the diff of the JSON file and commit it with the change):

    FORGETBENCH_UPDATE_SNAPSHOTS=1 pytest tests/test_suite_prompts.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from forgetbench import suite
from forgetbench.suite import fixtures

SNAPSHOT = Path(__file__).parent / "snapshots" / "suite_prompts.json"
UPDATE = os.environ.get("FORGETBENCH_UPDATE_SNAPSHOTS") == "1"


def suite_prompts(written: dict) -> dict[str, list[dict]]:
    """Per task, the prompt and image count of its first fixture documents (IconQA: one per sub-task)."""
    prompts = {}
    lab = {task: None for task in suite.TASKS if task.startswith(suite.lab.PREFIX)}  # shipped data, no fixture
    for task, files in sorted({**written, **lab}.items()):
        module = suite._module(suite.TASKS[task])
        docs = suite.load_split(task, "test", files and {"test": str(files["test"])})
        picked = {doc["ques_type"]: doc for doc in docs}.values() if task == "forgetbench_iconqa" else [docs[0]]
        prompts[task] = [{"prompt": module.doc_to_text(doc), "images": len(module.doc_to_visual(doc))}
                         for doc in picked]
    science = {"image": fixtures.image(1), "question": "Which is a mammal?", "choices": ["cat", "trout"], "answer": 0,
               "hint": "Look at the animals."}
    prompts["scienceqa_img"] = [{"prompt": suite.reused.scienceqa_prompt(science), "images": 1}]
    prompts["flickr30k_test"] = [{"prompt": suite.reused.flickr30k_prompt({}), "images": 1}]
    return prompts


def test_prompts_match_the_snapshot(tmp_path):
    import forgetbench.suite.reused  # noqa: F401  (suite.reused below)

    current = suite_prompts(fixtures.write_all(tmp_path))
    if UPDATE:
        SNAPSHOT.parent.mkdir(exist_ok=True)
        SNAPSHOT.write_text(json.dumps(current, indent=1, ensure_ascii=False) + "\n")
    if not SNAPSHOT.is_file():
        pytest.fail(f"{SNAPSHOT} is missing: run FORGETBENCH_UPDATE_SNAPSHOTS=1 pytest {Path(__file__).name}")
    stored = json.loads(SNAPSHOT.read_text())
    assert set(current) == set(suite.TASKS), "every suite task has a snapshot"
    for task in sorted(set(current) | set(stored)):
        assert current.get(task) == stored.get(task), (
            f"{task}: prompt changed; if intended, run FORGETBENCH_UPDATE_SNAPSHOTS=1 pytest {Path(__file__).name}")
