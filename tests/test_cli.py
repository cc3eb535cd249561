"""Every tool under the one ``forgetbench`` command, each also reachable by its old ``python -m`` module path."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest
from conftest import BIN

from forgetbench import cli

TOOLS = [pytest.param(words, module, configure, run, id=" ".join(words))
         for words, module, configure, run, _ in cli.TOOLS]


@pytest.mark.parametrize(("words", "module", "configure", "run"), TOOLS)
def test_every_tool_answers_help_under_the_forgetbench_command(words, module, configure, run, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([*words, "--help"])
    assert exit_.value.code == 0
    assert f"usage: forgetbench {' '.join(words)}" in capsys.readouterr().out
    loaded = importlib.import_module(module)
    assert callable(getattr(loaded, configure)) and callable(getattr(loaded, run))


# The module entry points scripts and docs used before the forgetbench command existed.
OLD_ENTRY_POINTS = {
    "forgetbench.compare": "compare", "forgetbench.train.mitigations": "wise", "forgetbench.train.configs": "configs",
    "forgetbench.suite.rsvqa": "convert rsvqa", "forgetbench.suite.iconqa": "convert iconqa",
    "forgetbench.suite.fixtures": "fixtures", "forgetbench.lab.pretrain": "lab pretrain",
    "forgetbench.lab.data": "lab data",
}


@pytest.mark.parametrize("module", sorted(OLD_ENTRY_POINTS))
def test_old_module_entry_points_still_work(module):
    done = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("usage:")


@pytest.mark.parametrize("argv", [
    ["convert", "iconqa", "--release", "/nonexistent-release", "--out", "never.parquet"],
    ["wise", "--base", "/nonexistent-base", "--tuned", "/nonexistent-tuned", "--alphas", "0.5"],
    ["compare", "--pre", "/nonexistent-pre", "--post", "/nonexistent-post", "--downstream", "a", "--upstream", "b"],
])
def test_a_tool_refuses_bad_input_in_one_line_with_status_2(argv, tmp_path):
    done = subprocess.run([str(BIN / "forgetbench"), *argv], capture_output=True, text=True, cwd=tmp_path,
                          timeout=300, check=False)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"forgetbench {argv[0]}"), done.stderr[-2000:]
    assert list(tmp_path.iterdir()) == []


def test_a_closed_pipe_is_not_a_traceback():
    """``forgetbench tasks-path | head -0``: stdout closes before the line is written."""
    done = subprocess.run(f"'{BIN / 'forgetbench'}' tasks | head -c 0", shell=True, capture_output=True, text=True,
                          timeout=120, check=False)
    assert "Traceback" not in done.stderr and done.stderr == ""
