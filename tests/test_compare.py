"""Tests for ``forgetbench compare`` on fake-but-faithful lmms-eval output folders."""

from __future__ import annotations

import copy
import doctest
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from forgetbench import outputs
from forgetbench.compare import columns, main, pairing, plots, render, report, scores, stages, stats
from forgetbench.compare import runs as run_files

REPO = Path(__file__).resolve().parents[1]
RESULTS_NAME = "2026-01-02T03-04-05.123456_results.json"

# Worked example of docs/metrics.md: E = 40, F = -5, O = 35 (points).
PRE = {"chartqa": 0.10, "docvqa": 0.20, "mmbench": 0.90, "pope": 0.50}
POST = {"chartqa": 0.70, "docvqa": 0.40, "mmbench": 0.80, "pope": 0.50}
DOWN, UP = "chartqa,docvqa", "mmbench,pope"


def lmms_results(scores: dict, *, limit=None, n=20, model="qwen2_vl", pretrained="Qwen/Qwen2-VL-2B-Instruct") -> dict:
    """A results.json dict shaped like lmms-eval 0.7.3's (exact_match per task)."""
    return {
        "results": {
            t: {"alias": t, "exact_match,none": v, "exact_match_stderr,none": 0.01}
            for t, v in scores.items()
        },
        "group_subtasks": {t: [] for t in scores},
        "configs": {
            t: {
                "task": t,
                "dataset_path": f"lmms-lab/{t}",
                "output_type": "generate_until",
                "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
                "metadata": {"version": 0.0},
            }
            for t in scores
        },
        "versions": {t: 0.0 for t in scores},
        "n-shot": {t: 0 for t in scores},
        "higher_is_better": {t: {"exact_match": True} for t in scores},
        "n-samples": {t: {"original": n, "effective": n if limit is None else min(n, limit)} for t in scores},
        "config": {
            "model": model,
            "model_args": f"pretrained={pretrained}",
            "batch_size": "1",
            "limit": limit,
            "offset": 0,
            "bootstrap_iters": 100000,
        },
        "git_hash": "abc1234",
        "date": "20260102_030405",
    }


def sample_lines(results: dict, task: str, order=None) -> list[dict]:
    """Sample-log lines whose exact_match averages to the task's score: the first round(score * n) docs are
    right (or the docs listed first in ``order``)."""
    n = results["n-samples"][task]["effective"]
    right = round(results["results"][task]["exact_match,none"] * n)
    order = list(range(n)) if order is None else order
    return [{"doc_id": d, "target": f"t{d}", "filtered_resps": f"t{d}" if d in order[:right] else "x",
             "token_counts": [{"output_tokens": 1}], "doc_hash": "74234e", "exact_match": float(d in order[:right]),
             "input": f"Question {d} of {task}?"} for d in range(n)]


def write_samples(folder: Path, task: str, lines: list[dict]) -> None:
    text = "".join(json.dumps(line) + "\n" for line in lines)
    (folder / f"{RESULTS_NAME[:-len('results.json')]}samples_{task}.jsonl").write_text(text, encoding="utf-8")


def write_output(root: Path, results: dict, sub: str = "Qwen__Qwen2-VL-2B-Instruct", samples: bool = True) -> Path:
    """Write ``root/<sub>/<date>_results.json`` and faithful sample logs, like ``--output_path root --log_samples``.

    Sample logs are written only for tasks whose score is a 0-1 number (a spoiled score gets none).
    """
    folder = root / sub if sub else root
    folder.mkdir(parents=True, exist_ok=True)
    (folder / RESULTS_NAME).write_text(json.dumps(results), encoding="utf-8")
    for task, res in results.get("results", {}).items() if samples else ():
        value, counts = res.get("exact_match,none") if isinstance(res, dict) else None, results["n-samples"].get(task)
        if isinstance(value, float) and 0 <= value <= 1 and isinstance(counts, dict):
            write_samples(folder, task, sample_lines(results, task))
    return root


@pytest.fixture
def runs(tmp_path):
    return lmms_results(PRE), lmms_results(POST)


def invoke(tmp_path, pre: dict, post: dict, *extra: str, down=DOWN, up=UP):
    pre_dir = write_output(tmp_path / "pre", pre)
    post_dir = write_output(tmp_path / "post", post)
    out = tmp_path / "report.json"
    argv = ["--pre", str(pre_dir), "--post", str(post_dir), "--downstream", down, "--upstream", up,
            "--json", str(out), *extra]
    return main(argv), out


@pytest.mark.parametrize("module", [scores, run_files, pairing, stats, columns, render, report, outputs, stages, plots])
def test_doctests(module):
    result = doctest.testmod(module)
    assert result.failed == 0 and result.attempted > 0


def test_schema_versions_are_the_documented_ones():
    """The one place the schema literals are pinned: a bump changes them here and in docs/compare-schema.md; every
    other test compares a report with the constants."""
    assert (report.SCHEMA, stages.SCHEMA) == ("forgetbench.compare/2", "forgetbench.stages/1")
    doc = (REPO / "docs" / "compare-schema.md").read_text(encoding="utf-8")
    assert f"schema `{report.SCHEMA}`" in doc and f"schema `{stages.SCHEMA}`" in doc


def test_e_f_o_table_and_json(tmp_path, runs, capsys):
    rc, out = invoke(tmp_path, *runs)
    stdout = capsys.readouterr().out
    assert rc == 0
    data = json.loads(out.read_text())
    assert data["E"] == pytest.approx(40.0)
    assert data["F"] == pytest.approx(-5.0)
    assert data["O"] == pytest.approx(35.0)
    assert {"E", "F", "O", "tasks"} <= set(data)  # the walking skeleton's fields, extended
    assert data["schema"] == report.SCHEMA and data["name"] == "post"
    assert data["pairing"] == {"mismatches": [], "dropped": {}}
    for key in ("E", "F", "O"):
        lo, hi = data[f"{key}_ci"]
        assert lo <= data[key] <= hi
    expected = {
        "chartqa": ("downstream", 10.0, 70.0), "docvqa": ("downstream", 20.0, 40.0),
        "mmbench": ("upstream", 90.0, 80.0), "pope": ("upstream", 50.0, 50.0),
    }
    assert list(data["tasks"]) == list(expected)
    for task, (role, pre, post) in expected.items():
        row = data["tasks"][task]
        assert row["role"] == role and row["metric"] == "exact_match"
        assert (row["pre"], row["post"], row["delta"]) == pytest.approx((pre, post, post - pre))
    assert "= +40.00" in stdout and "= -5.00" in stdout and "= +35.00" in stdout
    chartqa_row = next(line for line in stdout.splitlines() if line.startswith("chartqa"))
    assert chartqa_row.split()[:6] == ["chartqa", "downstream", "exact_match", "10.00", "70.00", "+60.00"]
    assert not list(tmp_path.glob(".report.json.*"))  # no temp file left behind


def test_without_json_only_prints(tmp_path, runs, capsys):
    pre_dir, post_dir = write_output(tmp_path / "a", runs[0]), write_output(tmp_path / "b", runs[1])
    assert main(["--pre", str(pre_dir), "--post", str(post_dir), "--downstream", DOWN, "--upstream", UP]) == 0
    assert "O (overall, E + F)" in capsys.readouterr().out


def test_accepts_results_file_and_flat_folder(tmp_path, runs, capsys):
    pre_file = write_output(tmp_path / "pre", runs[0], sub="") / RESULTS_NAME  # file itself
    post_dir = write_output(tmp_path / "post", runs[1], sub="")  # results.json directly in DIR
    out = tmp_path / "r.json"
    rc = main(["--pre", str(pre_file), "--post", str(post_dir), "--downstream", DOWN, "--upstream", UP,
               "--json", str(out)])
    assert rc == 0
    assert json.loads(out.read_text())["O"] == pytest.approx(35.0)


def add_metric(results: dict, task: str, name: str, value, first: bool = False, filt: str = "none") -> None:
    results["results"][task][f"{name},{filt}"] = value
    results["results"][task][f"{name}_stderr,{filt}"] = 0.02
    hib = results["higher_is_better"][task]
    results["higher_is_better"][task] = {name: True, **hib} if first else {**hib, name: True}


def test_metric_override(tmp_path, runs, capsys):
    pre, post = runs
    add_metric(pre, "chartqa", "relaxed_overall", 0.30)
    add_metric(post, "chartqa", "relaxed_overall", 0.50)
    rc, out = invoke(tmp_path, pre, post, "--metric", "chartqa=relaxed_overall")
    assert rc == 0
    data = json.loads(out.read_text())
    assert data["tasks"]["chartqa"]["metric"] == "relaxed_overall"
    assert data["tasks"]["chartqa"]["delta"] == pytest.approx(20.0)
    assert data["E"] == pytest.approx((20.0 + 20.0) / 2)


def test_default_is_first_higher_is_better_metric(tmp_path, runs, capsys):
    pre, post = runs
    add_metric(pre, "docvqa", "anls", 0.60, first=True)
    add_metric(post, "docvqa", "anls", 0.65, first=True)
    rc, out = invoke(tmp_path, pre, post)
    assert rc == 0
    row = json.loads(out.read_text())["tasks"]["docvqa"]
    assert row["metric"] == "anls" and row["delta"] == pytest.approx(5.0)


def declare(results: dict, task: str, metric: str, scale: str) -> None:
    results["configs"][task]["metadata"]["forgetbench"] = {"primary_metric": metric, "scale": scale}


def test_declared_primary_metric_and_scale(tmp_path, runs, capsys):
    pre, post = runs
    for results, value in ((pre, 41.5), (post, 52.0)):  # a 0-100 score not in METRIC_SCALES
        add_metric(results, "chartqa", "fb_score", value)
        declare(results, "chartqa", "fb_score", "points")
    rc, out = invoke(tmp_path, pre, post)
    assert rc == 0
    data = json.loads(out.read_text())
    row = data["tasks"]["chartqa"]
    assert (row["metric"], row["pre"], row["post"]) == ("fb_score", 41.5, 52.0)
    assert data["E"] == pytest.approx((10.5 + 20.0) / 2)


def test_declared_in_metadata_list(tmp_path, runs, capsys):
    pre, post = runs
    for results, value in ((pre, 41.5), (post, 52.0)):
        add_metric(results, "chartqa", "fb_score", value)
        results["configs"]["chartqa"]["metadata"] = [
            {"version": 0.0}, {"forgetbench": {"primary_metric": "fb_score", "scale": "points"}}]
    rc, out = invoke(tmp_path, pre, post)
    assert rc == 0
    assert json.loads(out.read_text())["tasks"]["chartqa"]["delta"] == pytest.approx(10.5)


def test_points_metric_via_scale_option(tmp_path, runs, capsys):
    pre, post = runs
    for run, value in ((pre, 45.3), (post, 47.0)):
        add_metric(run, "pope", "accuracy", value, first=True)
    rc, out = invoke(tmp_path, pre, post, "--metric-scale", "pope=points")
    assert rc == 0
    assert json.loads(out.read_text())["tasks"]["pope"]["delta"] == pytest.approx(1.7)


def test_metric_scale_option_and_filtered_key(tmp_path, runs, capsys):
    pre, post = runs
    add_metric(pre, "pope", "pope_f1", 0.8, filt="custom")  # only a non-"none" filter
    add_metric(post, "pope", "pope_f1", 0.6, filt="custom")
    rc, out = invoke(tmp_path, pre, post, "--metric", "pope=pope_f1", "--metric-scale", "pope=fraction")
    assert rc == 0
    row = json.loads(out.read_text())["tasks"]["pope"]
    assert row["delta"] == pytest.approx(-20.0)


def test_both_role_lists_required(tmp_path, runs, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--pre", "a", "--post", "b", "--downstream", DOWN])
    assert exc.value.code == 2


# Each refusal: (id, how to spoil the inputs, fragment expected in the message).
# A spoiler gets (pre, post, tmp_path) and returns extra argv (and may set "down"/"up").
def _set(path, value):
    def spoil(pre, post, tmp):
        target = {"pre": pre, "post": post}[path[0]]
        for key in path[1:-1]:
            target = target[key]
        target[path[-1]] = value
        return {}
    return spoil


def _del(side, *path):
    def spoil(pre, post, tmp):
        target = {"pre": pre, "post": post}[side]
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]
        return {}
    return spoil


def _args(*argv, **roles):
    return lambda pre, post, tmp: {"argv": list(argv), **roles}


def _second_results_file(pre, post, tmp):
    write_output(tmp / "post", post, sub="other_model")
    return {}


def _garbage_pre(pre, post, tmp):
    return {"pre_path": _write(tmp / "junk" / "x_results.json", "{not json")}


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path.parent


def _extra_task(side):
    def spoil(pre, post, tmp):
        run = {"pre": pre, "post": post}[side]
        run["results"]["gqa"] = {"alias": "gqa", "exact_match,none": 0.5}
        return {}
    return spoil


def _declared_post_only(pre, post, tmp):
    add_metric(pre, "chartqa", "fb_score", 40.0)
    add_metric(post, "chartqa", "fb_score", 50.0)
    declare(post, "chartqa", "fb_score", "points")
    return {}


def _lower_is_better(pre, post, tmp):
    for run in (pre, post):
        run["higher_is_better"]["pope"] = {"exact_match": False}
    return {}


def _unknown_scale(pre, post, tmp):
    for run in (pre, post):
        add_metric(run, "pope", "mystery", 3.0)
    return {"argv": ["--metric", "pope=mystery"]}


def _accuracy_in_points(pre, post, tmp):
    # Some lmms-eval tasks (e.g. mmvu, mmau) report "accuracy" already x100.
    for run, value in ((pre, 45.3), (post, 47.0)):
        add_metric(run, "pope", "accuracy", value, first=True)
    return {}


def _bad_declared_scale(pre, post, tmp):
    for run in (pre, post):
        add_metric(run, "chartqa", "fb_score", 40.0)
        declare(run, "chartqa", "fb_score", "percent")
    return {}


REFUSALS = [
    ("pre-not-lmms-output", lambda pre, post, tmp: {"pre_path": _write(tmp / "empty" / "readme.txt", "hi")},
     "not an lmms-eval output"),
    ("pre-missing-path", lambda pre, post, tmp: {"pre_path": tmp / "nowhere"}, "no such file or folder"),
    ("pre-unreadable-json", _garbage_pre, "not an lmms-eval output"),
    ("pre-lacks-results", _del("pre", "results"), "has no 'results'"),
    ("results-entry-not-object", _set(("pre", "results", "pope"), 0.5), "not an object"),
    ("two-results-files", _second_results_file, "several results files"),
    ("task-missing-in-pre", _del("pre", "results", "docvqa"), "not found: docvqa"),
    ("task-missing-in-both", _args(down="chartqa,gqa"), "not found: gqa"),
    ("task-sets-differ", _extra_task("post"), "only in pre: -; only in post: gqa"),
    ("limit-differs", _set(("post", "config", "limit"), 100), "limit differs"),
    ("offset-differs", _set(("pre", "config", "offset"), 5), "offset differs"),
    ("n-original-differs", _set(("post", "n-samples", "pope", "original"), 499), "sample counts of 'pope'"),
    ("n-effective-differs", _set(("pre", "n-samples", "chartqa", "effective"), 10), "sample counts of 'chartqa'"),
    ("metric-missing", _args("--metric", "chartqa=nope"), "no metric 'nope'"),
    ("value-nan", _set(("post", "results", "docvqa", "exact_match,none"), math.nan), "not a finite number"),
    ("value-inf", _set(("pre", "results", "mmbench", "exact_match,none"), math.inf), "not a finite number"),
    ("value-string", _set(("pre", "results", "mmbench", "exact_match,none"), "N/A"), "not a finite number"),
    ("task-in-both-roles", _args(up="mmbench,chartqa"), "both downstream and upstream: chartqa"),
    ("task-twice", _args(down="chartqa,chartqa"), "listed twice"),
    ("empty-task-name", _args(down="chartqa,"), "empty task name"),
    ("metric-malformed", _args("--metric", "chartqa"), "expected TASK=VALUE"),
    ("metric-unknown-task", _args("--metric", "gqa=acc"), "not among"),
    ("scale-invalid", _args("--metric-scale", "pope=percent"), "must be fraction|points|cider|max:N"),
    ("unknown-scale", _unknown_scale, "--metric-scale pope=fraction|points"),
    ("fraction-out-of-range", _accuracy_in_points, "--metric-scale pope=points"),
    ("declared-scale-invalid", _bad_declared_scale, "unknown scale 'percent'"),
    ("unknown-scale-says-how", _unknown_scale, "metadata.forgetbench.scale"),
    ("metric-differs-pre-post", _declared_post_only, "differs from --pre"),
    ("lower-is-better", _lower_is_better, "lower-is-better"),
    ("json-dir-missing", lambda pre, post, tmp: {"json": tmp / "no" / "such" / "r.json"}, "cannot write"),
    ("json-is-a-folder", lambda pre, post, tmp: {"json": (tmp / "afolder")}, "cannot write"),
]


@pytest.mark.parametrize("spoil, fragment", [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
def test_refusals(tmp_path, capsys, spoil, fragment):
    pre, post = copy.deepcopy(lmms_results(PRE)), copy.deepcopy(lmms_results(POST))
    opts = spoil(pre, post, tmp_path)
    pre_dir = opts.get("pre_path") or write_output(tmp_path / "pre", pre)
    post_dir = write_output(tmp_path / "post", post)
    out = opts.get("json", tmp_path / "report.json")
    if out.name == "afolder":
        out.mkdir()
    argv = ["--pre", str(pre_dir), "--post", str(post_dir),
            "--downstream", opts.get("down", DOWN), "--upstream", opts.get("up", UP),
            "--json", str(out), *opts.get("argv", [])]
    rc = main(argv)
    captured = capsys.readouterr()
    assert rc == 2
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("forgetbench compare: error: ")
    assert fragment in lines[0]
    assert "Traceback" not in captured.err
    assert captured.out == ""
    assert not out.is_file()
    assert not out.parent.exists() or not list(out.parent.glob(f".{out.name}.*"))  # no temp file left


def test_module_entry_point_refuses_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "forgetbench.compare", "--pre", str(tmp_path / "x"), "--post", str(tmp_path),
         "--downstream", "a", "--upstream", "b"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
