"""Every docstring example in forgetbench runs, and every module collected here runs at least one (a doctest test
that runs zero examples cannot fail)."""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "forgetbench"


def _modules_with_examples() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if ">>> " in path.read_text(encoding="utf-8"):
            parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
            found.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return found


MODULES = _modules_with_examples()


def test_the_modules_the_issue_named_are_collected():
    named = {"forgetbench.train.architectures", "forgetbench.suite.rsvqa", "forgetbench.suite.pathvqa",
             "forgetbench.suite.iconqa", "forgetbench.suite.emt", "forgetbench.suite.ocrvqa",
             "forgetbench.suite.reused", "forgetbench.suite.fixtures", "forgetbench.suite.lab",
             "forgetbench.suite.scoring", "forgetbench.checkpoint"}
    assert named <= set(MODULES), named - set(MODULES)


@pytest.mark.parametrize("module", MODULES)
def test_doctests(module):
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{module}: no docstring example ran"
    assert result.failed == 0
