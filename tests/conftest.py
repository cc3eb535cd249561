"""Shared fixtures. No test reaches a hub: the lab model and data ship with the package."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The study caches baselines under the user's cache folder: the tests get one of their own, shared by the session.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="forgetbench-test-cache-")

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run_command(command: list[str], cwd: Path | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run a command, failing the test with its output tail if it exits non-zero."""
    completed = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    if completed.returncode != 0:
        tail = f"{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}"
        pytest.fail(f"{command[:3]} exited {completed.returncode}:\n{tail}")
    return completed


@pytest.fixture(scope="session")
def lab_model() -> Path:
    from forgetbench.lab.model import base_model_path

    path = base_model_path()
    assert (path / "model.safetensors").is_file(), "the lab base model is missing: python -m forgetbench.lab.pretrain"
    return path


@pytest.fixture(scope="session")
def small_study(tmp_path_factory) -> Path:
    """The real ``forgetbench study`` (real lmms-eval CLI, real accelerate + TRL recipe), one arm (lora), cut to a
    few docs/steps."""
    out = tmp_path_factory.mktemp("study") / "lab"
    run_command(
        [str(BIN / "forgetbench"), "study", "--out", str(out), "--limit", "24", "--methods", "lora",
         "--recipe-args", "--max_steps 40 --logging_steps 10"],
        cwd=tmp_path_factory.getbasetemp(),
    )
    return out


def lmms_eval_bin() -> str:
    found = BIN / "lmms-eval"
    return str(found) if found.exists() else shutil.which("lmms-eval")
