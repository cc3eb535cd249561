"""What compare and stages refuse to be fooled by (issue 19): sample logs that contradict their own results, a scale
override that contradicts a known scale, bootstrap settings that make no interval, outputs written into an input run,
files that are not regular files, stages that are not what they say, and CSV cells a spreadsheet would run."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_compare import DOWN, POST, PRE, RESULTS_NAME, UP, lmms_results, write_output
from test_compare_features import SUB, samples_file

from forgetbench.checkpoint import MANIFEST_NAME
from forgetbench.compare import CompareError, CompareOptions, compare_runs, main
from forgetbench.compare.report import MIN_RESAMPLES
from forgetbench.compare.stages import main as stages_main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def dirs(tmp_path):
    return write_output(tmp_path / "pre", lmms_results(PRE)), write_output(tmp_path / "post", lmms_results(POST))


def compare(pre, post, *extra) -> int:
    return main(["--pre", str(pre), "--post", str(post), "--downstream", DOWN, "--upstream", UP, "--resamples",
                 "200", *extra])


def refusal(capsys) -> str:
    """The one line of a refusal, with nothing on stdout."""
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and captured.out == "" and "Traceback" not in captured.err, captured.err
    return lines[0]


def edit_log(run: Path, task: str, change) -> None:
    path = samples_file(run, task)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps(change(n, line)) + "\n" for n, line in enumerate(lines)))


# --- (a) every sample log against its own aggregate, whatever --allow-mismatch says ---------------------------

def _flip_and_drop(n, line):
    line = {**line, "exact_match": 1.0 - line["exact_match"]}  # post's chartqa now averages 0.3, results say 0.7
    return {**line, "doc_id": 25} if n == 19 else line  # and one document no longer pairs


@pytest.mark.parametrize("extra", [(), ("--allow-mismatch",)])
def test_flipped_per_sample_scores_are_refused_even_when_documents_drop(dirs, tmp_path, capsys, extra):
    edit_log(dirs[1], "chartqa", _flip_and_drop)
    assert compare(*dirs, "--json", str(tmp_path / "r.json"), *extra) == 2
    line = refusal(capsys)
    assert "task 'chartqa': per-sample 'exact_match' averages to 0.1 (pre) / 0.3 (post) but results say 0.1 / 0.7" \
        in line
    assert not (tmp_path / "r.json").exists()


def test_a_dropped_document_alone_is_still_tolerated(dirs, tmp_path, capsys):
    edit_log(dirs[1], "pope", lambda n, line: {**line, "doc_id": 25} if n == 19 else line)
    assert compare(*dirs, "--allow-mismatch", "--json", str(tmp_path / "r.json")) == 0
    assert json.loads((tmp_path / "r.json").read_text())["pairing"]["dropped"]["pope"] == {"pre": 1, "post": 1}


# --- (b) a scale override that contradicts the known scale ------------------------------------------------------

def test_points_on_a_known_fraction_metric_is_refused(dirs, capsys):
    assert compare(*dirs, "--metric-scale", "pope=points") == 2
    assert refusal(capsys) == (
        "forgetbench compare: error: --metric-scale pope=points contradicts the known scale of 'exact_match' "
        "(fraction, values 0-1): its values 0.5, 0.5 fit it, and points would count 0.5 as 0.5 points instead of 50; "
        "drop the option")


def test_points_on_a_declared_fraction_metric_is_refused(tmp_path, capsys):
    runs = []
    for name, scores in (("pre", PRE), ("post", POST)):
        results = lmms_results(scores)
        results["configs"]["chartqa"]["metadata"]["forgetbench"] = {"primary_metric": "exact_match",
                                                                    "scale": "fraction"}
        runs.append(write_output(tmp_path / name, results))
    assert compare(*runs, "--metric-scale", "chartqa=max:2") == 2
    assert "--metric-scale chartqa=max:2 contradicts the known scale of 'exact_match' (fraction" in refusal(capsys)
    assert compare(*runs, "--metric-scale", "chartqa=fraction") == 0  # saying what is known is fine


# --- (c) bootstrap settings ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("extra, fragment", [
    (("--resamples", "50"), f"--resamples 50: use 0 (no intervals) or at least {MIN_RESAMPLES}"),
    (("--resamples", "1"), "--resamples 1: use 0"),
    (("--seed", "-1"), "--seed -1: must be a whole number >= 0"),
])
def test_bootstrap_settings_are_refused_in_one_line(dirs, capsys, extra, fragment):
    assert compare(*dirs, *extra) == 2
    assert fragment in refusal(capsys)


def test_bootstrap_settings_through_the_api(dirs):
    with pytest.raises(CompareError, match="--seed -3"):
        compare_runs(dirs[0], [("post", dirs[1])], ["chartqa"], ["pope"], CompareOptions(seed=-3))
    with pytest.raises(CompareError, match="at least 100"):
        compare_runs(dirs[0], [("post", dirs[1])], ["chartqa"], ["pope"], CompareOptions(resamples=99))
    assert compare_runs(dirs[0], [("post", dirs[1])], ["chartqa"], ["pope"],
                        CompareOptions(resamples=MIN_RESAMPLES)).report["E_ci"] is not None


# --- (d) outputs never written into an input run -----------------------------------------------------------------

def _inside(dirs, tmp):
    pre, post = dirs
    (tmp / "link").symlink_to(pre)
    return [
        ("--json", pre / "r.json", pre), ("--json", post / SUB / "r.json", post), ("--out", pre, pre),
        ("--out", post / "o", post), ("--out", tmp / "link" / "o", pre),
    ]


def test_outputs_inside_an_input_run_are_refused(dirs, tmp_path, capsys):
    for option, target, run in _inside(dirs, tmp_path):
        before = sorted(p.relative_to(run) for p in run.rglob("*"))
        assert compare(*dirs, option, str(target)) == 2, (option, target)
        assert f"{option} {target}: inside the input run {run.resolve()}" in refusal(capsys)
        assert sorted(p.relative_to(run) for p in run.rglob("*")) == before


def test_the_results_file_given_protects_its_folder(dirs, tmp_path, capsys):
    file = dirs[0] / SUB / RESULTS_NAME
    assert compare(file, dirs[1], "--json", str(file)) == 2
    assert "inside the input run" in refusal(capsys)
    assert compare(file, dirs[1], "--out", str(file.parent / "o")) == 2
    assert f"inside the input run {file.parent.resolve()}" in refusal(capsys)


def test_an_output_folder_holding_the_runs_is_fine(dirs, tmp_path, capsys):
    """A study writes OUT/compare.json beside OUT/eval/pre: a folder that contains the runs is not inside one."""
    assert compare(*dirs, "--out", str(tmp_path), "--json", str(tmp_path / "r.json")) == 0
    assert (tmp_path / "compare.json").is_file()


def test_the_api_write_refuses_too(dirs):
    comparison = compare_runs(dirs[0], [("post", dirs[1])], ["chartqa"], ["pope"], CompareOptions(resamples=0))
    with pytest.raises(CompareError, match="inside the input run"):
        comparison.write(json_path=dirs[1] / "r.json")
    assert not (dirs[1] / "r.json").exists()


# --- (e) files that are not regular files --------------------------------------------------------------------------

def _run_module(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "forgetbench.compare", *argv], cwd=REPO, capture_output=True,
                          text=True, timeout=60)  # a FIFO that blocked the read would time out here


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_named_like_a_results_file_is_refused_without_hanging(dirs, tmp_path):
    fifo_dir = tmp_path / "fifo_run"
    fifo_dir.mkdir()
    os.mkfifo(fifo_dir / RESULTS_NAME)
    for pre in (fifo_dir, fifo_dir / RESULTS_NAME):
        done = _run_module("--pre", str(pre), "--post", str(dirs[1]), "--downstream", DOWN, "--upstream", UP)
        assert done.returncode == 2 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
        assert "is not a regular file" in done.stderr or "not a regular file or folder" in done.stderr, done.stderr


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_sample_log_is_refused_without_hanging(dirs):
    log = samples_file(dirs[1], "pope")
    log.unlink()
    os.mkfifo(log)
    done = _run_module("--pre", str(dirs[0]), "--post", str(dirs[1]), "--downstream", DOWN, "--upstream", UP)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert f"{log} is not a regular file" in done.stderr


# --- (f) stages are what they say ----------------------------------------------------------------------------------

STAGES = {"A": 0.8, "B": 0.7, "C": 0.9}


def checkpoint(tmp: Path, name: str, base: str, dataset: str | None) -> Path:
    folder = tmp / "ckpt" / name
    folder.mkdir(parents=True)
    data = {"dataset": dataset, "split": "train", "rows": 10} if dataset else {}
    (folder / MANIFEST_NAME).write_text(json.dumps({"base_model": base, "base_model_path": base, "method": "lora",
                                                    "trainable_parameters": 5, "data": data}))
    return folder


def stage_run(tmp: Path, name: str, model: Path | str) -> Path:
    return write_output(tmp / name, lmms_results(STAGES, pretrained=str(model)))


def test_a_stage_labelled_other_than_its_training_data_is_refused(tmp_path, capsys):
    first = checkpoint(tmp_path, "a", "org/base", "A")
    second = checkpoint(tmp_path, "b", str(first), "C")  # tuned on C, but said to be stage B
    runs = [f"A={stage_run(tmp_path, 's1', first)}", f"B={stage_run(tmp_path, 's2', second)}"]
    argv = [a for r in runs for a in ("--stage", r)]
    assert stages_main(argv) == 2
    assert refusal(capsys) == (f"forgetbench stages: error: --stage {runs[1]}: stage 2 is labelled 'B', but its "
                               "checkpoint was tuned on 'C' (manifest data.dataset) (--allow-lineage-mismatch "
                               "accepts it)")
    assert stages_main([*argv, "--allow-lineage-mismatch", "--json", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["lineage_mismatches"][0].endswith("(manifest data.dataset)")


def test_stage_labels_that_match_their_data_pass(tmp_path, capsys):
    """A variant of the trained-on task (its closed-set form) and data that is no task name (a folder, a hub
    dataset) cannot contradict a label."""
    first = checkpoint(tmp_path, "a", "org/base", "A")
    second = checkpoint(tmp_path, "b", str(first), "org/some-dataset")
    third = checkpoint(tmp_path, "c", str(second), "C")
    results = {t: lmms_results({"A": 0.8, "B": 0.7, "C_closed": 0.9}, pretrained=str(m))
               for t, m in (("A", first), ("B", second), ("C_closed", third))}
    argv = [a for t, r in results.items() for a in ("--stage", f"{t}={write_output(tmp_path / t, r)}")]
    assert stages_main(argv) == 0


def test_one_run_or_one_model_for_two_stages_is_refused(tmp_path, capsys):
    first = checkpoint(tmp_path, "a", "org/base", "A")
    run = stage_run(tmp_path, "s1", first)
    assert stages_main(["--stage", f"A={run}", "--stage", f"B={run}"]) == 2
    assert f"--stage B={run}: stage 2 (B) reads the same run as stage 1 (A)" in refusal(capsys)
    again = stage_run(tmp_path, "s2", first)  # another evaluation of the very same checkpoint
    assert stages_main(["--stage", f"A={run}", "--stage", f"B={again}"]) == 2
    assert f"stage 2 (B) evaluated the same model as stage 1 (A): '{first}'" in refusal(capsys)


def test_stage_outputs_inside_a_stage_run_are_refused(tmp_path, capsys):
    first = checkpoint(tmp_path, "a", "org/base", "A")
    second = checkpoint(tmp_path, "b", str(first), "B")
    runs = [stage_run(tmp_path, "s1", first), stage_run(tmp_path, "s2", second)]
    assert stages_main(["--stage", f"A={runs[0]}", "--stage", f"B={runs[1]}", "--out", str(runs[1] / "o")]) == 2
    assert "--out" in refusal(capsys) and not (runs[1] / "o").exists()


# --- (g) CSV cells no spreadsheet runs -----------------------------------------------------------------------------

def test_csv_text_cells_that_look_like_formulas_are_quoted(dirs, tmp_path, capsys):
    formula = '=HYPERLINK("http://example.invalid","x")'
    for run in dirs:  # mmbench doc 16 is forgotten: same question in both runs, post answers "-1"
        edit_log(run, "mmbench", lambda n, line: {**line, "input": formula} if n == 16 else line)
    edit_log(dirs[1], "mmbench", lambda n, line: {**line, "filtered_resps": "-1"} if n == 16 else line)
    out = tmp_path / "o"
    assert main(["--pre", str(dirs[0]), "--post", f"@m={dirs[1]}", "--post", f"b={dirs[1]}", "--downstream", DOWN,
                 "--upstream", UP, "--resamples", "0", "--out", str(out)]) == 0
    with open(out / "forgotten.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows[0] == {"method": "'@m", "task": "mmbench", "doc_id": "16", "input": "'" + formula, "target": "t16",
                       "pre_answer": "t16", "post_answer": "'-1"}
    with open(out / "compare.csv", newline="") as fh:
        records = list(csv.DictReader(fh))
    mmbench = next(r for r in records if r["task"] == "mmbench")
    assert mmbench["method"] == "'@m" and mmbench["delta"] == "-10.0"  # numbers are never quoted
    assert next(r for r in records if r["task"] == "F")["delta"] == "-5.0"
    # compare.json keeps the real values: only the spreadsheet files are guarded
    assert "@m" in json.loads((out / "compare.json").read_text())["methods"]
