"""``forgetbench stages``: the accuracy matrix of sequential fine-tunes and BWT, MFN, MAA, AF."""

from __future__ import annotations

import json

import pytest
from test_compare import lmms_results, write_output

from forgetbench.compare.stages import SCHEMA, main

# The worked example of docs/metrics.md: rows = after stage i, columns = tasks A, B, C (fractions).
MATRIX = [[0.80, 0.10, 0.20], [0.85, 0.70, 0.25], [0.50, 0.65, 0.90]]
TASKS = ["A", "B", "C"]


def stage_dirs(tmp_path, matrix=MATRIX):
    """One run per stage, each of its own model (the model after that stage)."""
    runs = [lmms_results(dict(zip(TASKS, row, strict=True)), pretrained=f"org/after-{t}")
            for t, row in zip(TASKS, matrix, strict=True)]
    return [f"{t}={write_output(tmp_path / f's{i}', run)}" for i, (t, run) in enumerate(zip(TASKS, runs, strict=True))]


def test_worked_example(tmp_path, capsys):
    argv = [a for s in stage_dirs(tmp_path) for a in ("--stage", s)]
    assert main([*argv, "--json", str(tmp_path / "s.json"), "--out", str(tmp_path / "o")]) == 0
    data = json.loads((tmp_path / "s.json").read_text())
    assert data["schema"] == SCHEMA and data["tasks"] == TASKS
    assert [v for row in data["matrix"] for v in row] == pytest.approx([80, 10, 20, 85, 70, 25, 50, 65, 90])
    assert (data["MFN"], data["MAA"], data["BWT"], data["AF"]) == pytest.approx((205 / 3, (80 + 77.5 + 205 / 3) / 3,
                                                                                -17.5, 20.0))
    out = capsys.readouterr().out
    assert "BWT (backward transfer)     = -17.50" in out and "1: A" in out
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["stages.csv", "stages.json", "stages.md"]
    assert "| 3: C | 50.00 | 65.00 | 90.00 |" in (tmp_path / "o" / "stages.md").read_text()


@pytest.mark.parametrize("argv_of, fragment", [
    (lambda dirs: ["--stage", dirs[0]], "at least 2 stages"),
    (lambda dirs: ["--stage", dirs[0], "--stage", dirs[0]], "each on a different task"),
    (lambda dirs: ["--stage", dirs[0], "--stage", "B"], "expected TASK=DIR"),
    (lambda dirs: ["--stage", dirs[0], "--stage", "D=" + dirs[1].split("=", 1)[1]], "not found: D"),
])
def test_refusals(tmp_path, capsys, argv_of, fragment):
    dirs = stage_dirs(tmp_path)
    assert main([*argv_of(dirs), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and fragment in err and not (tmp_path / "o").exists()


def test_stages_must_be_evaluated_alike(tmp_path, capsys):
    dirs = stage_dirs(tmp_path)
    results = lmms_results(dict(zip(TASKS, MATRIX[1], strict=True)), limit=5, pretrained="org/after-B")
    dirs[1] = f"B={write_output(tmp_path / 'other', results)}"
    assert main([a for s in dirs for a in ("--stage", s)]) == 2
    assert "limit differs from the first stage" in capsys.readouterr().err
