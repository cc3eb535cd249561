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
# The study caches baselines under the user's cache folder: the tests get one of their own, shared by every xdist
# worker of one run (a cache entry has one writer at a time; the others wait and reuse it).
_RUN = os.environ.get("PYTEST_XDIST_TESTRUNUID")
if _RUN:
    os.environ["XDG_CACHE_HOME"] = str(Path(tempfile.gettempdir()) / f"forgetbench-test-cache-{_RUN}")
    Path(os.environ["XDG_CACHE_HOME"]).mkdir(exist_ok=True)
else:
    os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="forgetbench-test-cache-")

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


# Module- and session-scoped fixtures that cost nothing to build twice: they do not pull their users onto one worker.
CHEAP_SHARED_FIXTURES = {"lab_model", "summary", "one_thread"}


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config, items):
    """Under ``--dist loadgroup`` (make test), tests that share an expensive module- or session-scoped fixture of
    tests/ (a study, a trained checkpoint, an lmms-eval run) run on one worker, so it is built once per run rather
    than once per worker. An explicit ``xdist_group`` mark wins. Which worker runs a group never changes a result."""
    for item in items:
        if item.get_closest_marker("xdist_group") or not hasattr(item, "_fixtureinfo"):
            continue
        shared = sorted(
            f"{defs[-1].func.__module__}.{name}" for name, defs in item._fixtureinfo.name2fixturedefs.items()
            if defs and defs[-1].scope in ("module", "session") and name not in CHEAP_SHARED_FIXTURES
            and defs[-1].func.__module__.split(".")[-1].startswith(("test_", "conftest")))
        if shared:
            item.add_marker(pytest.mark.xdist_group(shared[0]))


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
