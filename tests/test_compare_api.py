"""The Python API of forgetbench.compare (what the study calls): the same report, table and files as the CLI."""

from __future__ import annotations

import dataclasses
import json

import pytest
from test_compare import DOWN, POST, PRE, UP, lmms_results, write_output

from forgetbench.compare import CompareError, CompareOptions, compare_runs, find_results_file, main
from forgetbench.compare.pairing import Mismatch, run_mismatches
from forgetbench.compare.report import SCHEMA
from forgetbench.compare.runs import load_run


@pytest.fixture
def dirs(tmp_path):
    return write_output(tmp_path / "pre", lmms_results(PRE)), write_output(tmp_path / "post", lmms_results(POST))


def test_report_table_and_files_match_the_cli(tmp_path, dirs, capsys):
    argv = ["--pre", str(dirs[0]), "--post", str(dirs[1]), "--downstream", DOWN, "--upstream", UP,
            "--resamples", "500", "--seed", "3", "--out", str(tmp_path / "cli")]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    options = CompareOptions(resamples=500, seed=3)
    comparison = compare_runs(str(dirs[0]), [("post", str(dirs[1]))], DOWN.split(","), UP.split(","), options)
    comparison.write(tmp_path / "api", tmp_path / "r.json")
    cli_files = sorted(p.name for p in (tmp_path / "cli").iterdir())
    assert cli_files == sorted(p.name for p in (tmp_path / "api").iterdir())
    for name in ("compare.json", "compare.md", "compare.csv", "forgotten.csv", "ef.png"):
        assert (tmp_path / "cli" / name).read_bytes() == (tmp_path / "api" / name).read_bytes(), name
    assert json.loads((tmp_path / "r.json").read_text()) == comparison.report
    assert comparison.table() == printed.rstrip("\n")
    assert [row["doc_id"] for row in comparison.forgotten] == [16, 17]


def test_many_posts_and_paths(tmp_path, dirs):
    comparison = compare_runs(dirs[0], [("a", dirs[1]), ("b", dirs[0])], ["chartqa", "docvqa"], ["mmbench", "pope"],
                              CompareOptions(resamples=0))
    report = comparison.report
    assert report["schema"] == SCHEMA and list(report["methods"]) == ["a", "b"]
    assert report["pareto"] == ["a", "b"] and report["methods"]["a"]["E_ci"] is None
    assert "Pareto" in comparison.table(relative=True)


def test_refusals_are_compare_errors(tmp_path, dirs):
    with pytest.raises(CompareError, match="both downstream and upstream: pope"):
        compare_runs(dirs[0], [("post", dirs[1])], ["pope"], ["pope"])
    with pytest.raises(CompareError, match="method name used twice: a"):
        compare_runs(dirs[0], [("a", dirs[1]), ("a", dirs[1])], ["chartqa"], ["pope"])
    with pytest.raises(CompareError, match="--metric: 'gqa' is not among the compared tasks"):
        compare_runs(dirs[0], [("post", dirs[1])], ["chartqa"], ["pope"], CompareOptions(metrics={"gqa": "acc"}))
    with pytest.raises(CompareError, match="scale of 'pope' must be"):
        compare_runs(dirs[0], [("post", dirs[1])], ["chartqa"], ["pope"], CompareOptions(scales={"pope": "%"}))
    with pytest.raises(CompareError, match="cannot write"):
        compare_runs(dirs[0], [("post", dirs[1])], ["chartqa"], ["pope"]).write(json_path=tmp_path / "no" / "r.json")
    with pytest.raises(CompareError, match="no such file or folder"):
        find_results_file(tmp_path / "nowhere", "--pre X")
    with pytest.raises(dataclasses.FrozenInstanceError):
        CompareOptions().seed = 1  # type: ignore[misc]


def test_mismatches_are_structured(tmp_path, dirs):
    post = lmms_results(POST, limit=5)
    found = run_mismatches(load_run(dirs[0], "--pre A"), load_run(write_output(tmp_path / "p5", post), "--post B"),
                           ["pope"], "--pre A", "--post B", reference="the first stage")
    limit = next(m for m in found if m.field == "limit")
    assert (limit.pre, limit.post, limit.restrictable) == (None, 5, True)
    assert str(limit) == limit.message == "--post B: limit differs from the first stage: pre None; post 5"
    assert all(isinstance(m, Mismatch) for m in found)
