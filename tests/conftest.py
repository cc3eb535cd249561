"""Shared fixtures. No test reaches a hub: the lab model and data ship with the package."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Under pytest-xdist each worker already keeps one core busy: one thread per process (the worker and every command it
# starts) instead of two workers each spreading two threads over the same two cores. Tiny models lose nothing.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for _variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_variable, "1")
# The study caches baselines under the user's cache folder: the tests get one of their own, shared by every xdist
# worker of one run (a cache entry has one writer at a time; the others wait and reuse it).
_RUN = os.environ.get("PYTEST_XDIST_TESTRUNUID")
if _RUN:
    os.environ["XDG_CACHE_HOME"] = str(Path(tempfile.gettempdir()) / f"forgetbench-test-cache-{_RUN}")
    Path(os.environ["XDG_CACHE_HOME"]).mkdir(exist_ok=True)
else:
    os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="forgetbench-test-cache-")

REPO = Path(__file__).resolve().parents[1]
# lmms-eval records `git describe` of whatever repository holds its site-packages as its version: with .venv inside
# this checkout, a commit made while the suite runs would make a pre and a post run look like two lmms-eval versions.
# Git does not take the checkout itself for the venv's repository (tests of that trap set GIT_DIR themselves).
os.environ["GIT_CEILING_DIRECTORIES"] = str(REPO)
BIN = Path(sys.executable).parent


# Module- and session-scoped fixtures that cost nothing to build twice: they do not pull their users onto one worker.
CHEAP_SHARED_FIXTURES = {"lab_model", "summary", "one_thread"}


def pytest_configure(config):
    # pytest-xdist declares the mark; declared here too, so `-p no:xdist` runs (one process) keep --strict-markers.
    config.addinivalue_line("markers", "xdist_group(name): tests that share a worker under --dist loadgroup")


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
    # xdist hands out work units (a group, or one ungrouped test) largest group first, then in this order: the
    # ungrouped tests marked heavy go first, so the two workers do not end with one of them alone on a long test.
    items.sort(key=lambda item: item.get_closest_marker("heavy") is None)


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


class LabStudy(NamedTuple):
    out: Path  # the study's --out
    cache: Path  # its baseline cache (--cache-dir), for studies that reuse the baseline
    stdout: str


# The one real study most tests read (the study, end-to-end and lmms-model tests): the lab's LoRA recipe as one arm, cut
# to a few documents and steps (one training, two lmms-eval runs). Other studies (more arms, checkpoints tuned
# elsewhere, a killed one) reuse its settings, and so its cached baseline.
LAB_STUDY_RECIPE_ARGS = "--max_steps 6 --logging_steps 2"


def lab_study_command(out: Path, cache: Path, *extra: str) -> list[str]:
    """A lab study with the shared one's documents and steps (so its baseline comes from the shared cache)."""
    return [str(BIN / "forgetbench"), "study", "--out", str(out), "--cache-dir", str(cache), "--limit", "24",
            "--recipe-args", LAB_STUDY_RECIPE_ARGS, *extra]


def plain_peft_adapter(folder: Path) -> Path:
    """A LoRA adapter on the lab model trained outside forgetbench: plain transformers + PEFT, two steps."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    from forgetbench.checkpoint import lab_base_model_path

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForImageTextToText.from_pretrained(str(lab_base_model_path())),
                           LoraConfig(target_modules=["q_proj", "v_proj"], r=4))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    vocab = model.config.get_text_config().vocab_size
    for _ in range(2):
        ids = torch.randint(0, vocab, (2, 12))
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(str(folder))
    return folder


def perturbed_copy(folder: Path, scale: float) -> Path:
    """A copy of the lab base model with Gaussian noise (``scale`` standard deviations of each matrix) on its weight
    matrices: a full checkpoint of the base's lineage, made in a second without training. Without the base's
    forgetbench manifest (which says "trained from scratch")."""
    import numpy as np
    from safetensors.numpy import load_file, save_file

    from forgetbench.checkpoint import MANIFEST_NAME, lab_base_model_path

    shutil.copytree(lab_base_model_path(), folder, ignore=shutil.ignore_patterns(MANIFEST_NAME))
    weights, rng = load_file(str(folder / "model.safetensors")), np.random.default_rng(0)
    save_file({k: (v + scale * v.std() * rng.standard_normal(v.shape)).astype(v.dtype)
               if v.dtype.kind == "f" and v.ndim >= 2 else v for k, v in weights.items()},
              str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


@pytest.fixture(scope="session")
def lab_study(tmp_path_factory) -> LabStudy:
    """The real ``forgetbench study`` (real lmms-eval CLI, a real accelerate + TRL recipe) on the lab: the arm lora,
    6 steps, 24 documents per task."""
    root = tmp_path_factory.mktemp("lab-study")
    out, cache = root / "study", root / "baselines"
    completed = run_command(lab_study_command(out, cache, "--methods", "lora"), cwd=root)
    return LabStudy(out, cache, completed.stdout)


def train_here(method: str, argv: list[str]) -> None:
    """``tests/helpers/hooked_recipe.py METHOD ARGV`` (recipes/<method>.py with the tests' fault-injection callbacks)
    in this process, for tests where no process boundary is under test: no interpreter start-up is paid."""
    helpers = str(REPO / "tests" / "helpers")
    if helpers not in sys.path:
        sys.path.insert(0, helpers)
    import hooked_recipe

    hooked_recipe.main([method, *argv])


def lmms_eval_runs(runs: list[list[str]], cwd: Path, environments: list[dict[str, str]] | None = None) -> None:
    """Several ``lmms-eval ARGS...`` runs in one child process: each calls the function the ``lmms-eval`` command
    runs (``lmms_eval.cli.dispatch:main``, its console script) with its own ``sys.argv`` (and, when given, its own
    environment variables set first). The output is lmms-eval's own; its imports and task index (about 8 s on 2
    cores) are paid once, not once per run. Tests whose point is the installed command itself run
    ``lmms_eval_bin()``."""
    plan = [([str(a) for a in run], env) for run, env in zip(runs, environments or [{}] * len(runs), strict=True)]
    script = ("import os, sys\nfrom lmms_eval.cli.dispatch import main\n"
              f"for argv, env in {plan!r}:\n"
              "    os.environ.update(env)\n    sys.argv = ['lmms-eval', *argv]\n    main()\n")
    run_command([sys.executable, "-c", script], cwd=cwd)


def lmms_eval_bin() -> str:
    found = BIN / "lmms-eval"
    return str(found) if found.exists() else shutil.which("lmms-eval")
