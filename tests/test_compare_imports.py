"""The compare package stays light and self-contained: no torch, transformers, trl or lmms_eval on import, and
nothing from forgetbench but ``forgetbench.checkpoint``, ``forgetbench.outputs``, ``forgetbench.errors`` (the one way
every command refuses) and its own modules."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "forgetbench" / "compare"
HEAVY = ("torch", "transformers", "trl", "lmms_eval", "matplotlib", "statsmodels")
ALLOWED = ("forgetbench", "forgetbench.checkpoint", "forgetbench.outputs", "forgetbench.errors", "forgetbench.compare")


@pytest.mark.parametrize("module", ["forgetbench.compare", "forgetbench.compare.cli", "forgetbench.compare.stages"])
def test_import_loads_no_heavy_module(module):
    code = (f"import {module}, sys, json; print(json.dumps(sorted(m for m in sys.modules "
            f"if m.split('.')[0] in {HEAVY!r} or m.startswith('forgetbench'))))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          check=True)
    loaded = json.loads(proc.stdout)
    assert not [m for m in loaded if m.split(".")[0] in HEAVY]
    assert [m for m in loaded if not m.startswith("forgetbench.compare")] == [
        "forgetbench", "forgetbench.checkpoint", "forgetbench.errors", "forgetbench.outputs"]


def _forgetbench_imports(file: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        found |= {n for n in names if n.split(".")[0] == "forgetbench"}
    return found


@pytest.mark.parametrize("file", sorted(PACKAGE.glob("*.py")), ids=lambda p: p.name)
def test_imports_only_checkpoint_outputs_and_itself(file):
    """Also the imports inside functions: the whole compare part runs without the lab, the recipes or the study."""
    for name in _forgetbench_imports(file):
        assert name in ALLOWED or name.startswith(tuple(f"{a}." for a in ALLOWED[1:])), f"{file.name} imports {name}"
