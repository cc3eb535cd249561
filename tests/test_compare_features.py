"""forgetbench compare from the sample logs: flips, pairing, --allow-mismatch, scales, clusters, many methods,
outputs. Builds on the fake-but-faithful lmms-eval folders of test_compare.py."""

from __future__ import annotations

import copy
import csv
import json
import os
from pathlib import Path

import pytest
from test_compare import DOWN, POST, PRE, RESULTS_NAME, UP, lmms_results, sample_lines, write_output, write_samples

from forgetbench import outputs
from forgetbench.checkpoint import MANIFEST_NAME
from forgetbench.checkpoint import lab_base_model_path as base_model_path
from forgetbench.compare import main
from forgetbench.compare.render import format_table

SUB = "Qwen__Qwen2-VL-2B-Instruct"


def samples_file(root: Path, task: str) -> Path:
    return root / SUB / f"{RESULTS_NAME[:-len('results.json')]}samples_{task}.jsonl"


def checkpoint(tmp: Path, name: str, base_model: str, params: int = 1234) -> str:
    """A fine-tuned checkpoint folder holding a forgetbench manifest."""
    folder = tmp / "ckpt" / name
    folder.mkdir(parents=True)
    (folder / MANIFEST_NAME).write_text(json.dumps({
        "base_model": base_model, "base_model_path": base_model, "method": name, "trainable_parameters": params,
        "trainable_parameters_by_part": {"llm": params}, "data": {}, "seed": 0, "steps": 10, "versions": {}}))
    return str(folder)


def run_cli(tmp, pre_dir, posts, *extra, out=None):
    argv = ["--pre", str(pre_dir), "--downstream", DOWN, "--upstream", UP, "--resamples", "2000", *extra]
    for post in posts:
        argv += ["--post", str(post)]
    if out is not None:
        argv += ["--out", str(out)]
    return main(argv)


@pytest.fixture
def dirs(tmp_path):
    return write_output(tmp_path / "pre", lmms_results(PRE)), write_output(tmp_path / "post", lmms_results(POST))


def test_flips_mcnemar_and_forgotten_file(tmp_path, dirs, capsys):
    out = tmp_path / "report"
    assert run_cli(tmp_path, dirs[0], [dirs[1]], out=out) == 0
    data = json.loads((out / "compare.json").read_text())
    # Docs 0..k-1 are right: chartqa 2 -> 14 right (12 learned), mmbench 18 -> 16 (docs 16, 17 forgotten).
    assert data["tasks"]["chartqa"]["flips"] == {"forgotten": 0, "learned": 12, "both_right": 2, "both_wrong": 6}
    assert data["tasks"]["mmbench"]["flips"] == {"forgotten": 2, "learned": 0, "both_right": 16, "both_wrong": 2}
    assert data["tasks"]["mmbench"]["mcnemar"] == {"statistic": 0.0, "pvalue": 0.5, "exact": True}
    assert data["tasks"]["chartqa"]["n"] == 20
    with open(out / "forgotten.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["task"], r["doc_id"]) for r in rows] == [("mmbench", "16"), ("mmbench", "17")]
    assert rows[0] == {"method": "post", "task": "mmbench", "doc_id": "16", "input": "Question 16 of mmbench?",
                       "target": "t16", "pre_answer": "t16", "post_answer": "x"}
    assert sorted(p.name for p in out.iterdir()) == ["compare.csv", "compare.json", "compare.md", "ef.png",
                                                      "ef.svg", "forgotten.csv", "learned.csv"]
    with open(out / "learned.csv", newline="") as fh:  # wrong -> right: chartqa docs 2..13, docvqa 4..7
        learned = list(csv.DictReader(fh))
    assert [(r["task"], int(r["doc_id"])) for r in learned] == [("chartqa", d) for d in range(2, 14)] + [
        ("docvqa", d) for d in range(4, 8)]
    assert learned[0] == {"method": "post", "task": "chartqa", "doc_id": "2", "input": "Question 2 of chartqa?",
                          "target": "t2", "pre_answer": "x", "post_answer": "t2"}
    assert (out / "ef.png").read_bytes()[:4] == b"\x89PNG" and b"<svg" in (out / "ef.svg").read_bytes()
    md = (out / "compare.md").read_text()
    assert "| chartqa | downstream | exact_match | 10.00 | 70.00 | +60.00 |" in md
    with open(out / "compare.csv", newline="") as fh:
        records = {(r["method"], r["task"]): r for r in csv.DictReader(fh)}
    assert float(records[("post", "E")]["delta"]) == pytest.approx(40.0)
    assert float(records[("post", "mmbench")]["forgotten"]) == 2
    stdout = capsys.readouterr().out
    assert "95% CI [" in stdout


def _spoil_samples(task, change):
    def spoil(tmp, pre_dir, post_dir):
        path = samples_file(post_dir, task)
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        path.write_text("".join(json.dumps(line) + "\n" for line in change(lines)))
    return spoil


def _edit(i, **fields):
    return lambda lines: [{**line, **fields} if n == i else line for n, line in enumerate(lines)]


def _spoil_results(change):
    def spoil(tmp, pre_dir, post_dir):
        path = post_dir / SUB / RESULTS_NAME
        results = json.loads(path.read_text())
        change(results, tmp)
        path.write_text(json.dumps(results))
    return spoil


def _model_args(value):
    def change(results, tmp):
        results["config"]["model_args"] = f"pretrained={value(tmp)},device=cpu"
    return change


PAIRING = [
    ("doc-ids-differ", _spoil_samples("pope", _edit(19, doc_id=25)), "doc ids of task 'pope' differ"),
    ("input-differs", _spoil_samples("pope", _edit(3, input="Another question?")), "doc 3: input differs"),
    ("target-differs", _spoil_samples("pope", _edit(4, target="t5")), "doc 4: target differs"),
    ("version-differs", _spoil_results(lambda r, t: r["versions"].update(pope=1.0)), "version of task 'pope'"),
    ("sample-log-only-in-pre", lambda t, a, b: samples_file(b, "pope").unlink(), "only in pre"),
    ("manifest-base-differs", _spoil_results(_model_args(lambda t: checkpoint(t, "lora", "org/other"))),
     "tuned from 'org/other'"),
]


@pytest.mark.parametrize("spoil, fragment", [p[1:] for p in PAIRING], ids=[p[0] for p in PAIRING])
def test_pairing_mismatches(tmp_path, dirs, capsys, spoil, fragment):
    spoil(tmp_path, *dirs)
    rc = run_cli(tmp_path, *dirs[:1], [dirs[1]], out=tmp_path / "o")
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and fragment in err and "--allow-mismatch" in err
    assert not (tmp_path / "o").exists()
    # The same inputs pass with --allow-mismatch, which lists what it tolerated.
    assert run_cli(tmp_path, *dirs[:1], [dirs[1]], "--allow-mismatch", "--json", str(tmp_path / "r.json")) == 0
    assert any(fragment in m for m in json.loads((tmp_path / "r.json").read_text())["pairing"]["mismatches"])


BROKEN = [
    ("duplicate-doc-id", _spoil_samples("pope", _edit(5, doc_id=4)), "duplicate doc_id 4"),
    ("sample-count", _spoil_samples("pope", lambda lines: lines[:-1]), "19 samples but n-samples says 20"),
    ("samples-disagree", _spoil_samples("pope", _edit(0, exact_match=1 - sample_lines(
        lmms_results(POST), "pope")[0]["exact_match"])), "averages to"),
    ("sample-nan", _spoil_samples("pope", _edit(2, exact_match=float("nan"))), "not a finite number"),
    ("sample-not-object", _spoil_samples("pope", lambda lines: [*lines[:-1], "{"]), "not a JSON object"),
    ("doc-id-string", _spoil_samples("pope", _edit(1, doc_id="1")), "not an integer"),
    ("manifest-unreadable", _spoil_results(_model_args(
        lambda t: (t / "bad").mkdir() or (t / "bad" / MANIFEST_NAME).write_text("{") and t / "bad")), "manifest"),
]


@pytest.mark.parametrize("spoil, fragment", [p[1:] for p in BROKEN], ids=[p[0] for p in BROKEN])
def test_broken_sample_logs_refused_even_with_allow_mismatch(tmp_path, dirs, capsys, spoil, fragment):
    spoil(tmp_path, *dirs)
    rc = run_cli(tmp_path, *dirs[:1], [dirs[1]], "--allow-mismatch", out=tmp_path / "o")
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and fragment in err, err
    assert not (tmp_path / "o").exists()


def test_manifest_of_the_lab_model_matches_its_path(tmp_path, capsys):
    pre = lmms_results(PRE, pretrained=str(base_model_path()))
    post = lmms_results(POST, pretrained=checkpoint(tmp_path, "lora", "forgetbench-lab", params=4321))
    pre_dir, post_dir = write_output(tmp_path / "pre", pre), write_output(tmp_path / "post", post)
    assert run_cli(tmp_path, pre_dir, [post_dir], "--json", str(tmp_path / "r.json")) == 0
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["trainable_parameters"] == 4321 and data["manifest"]["method"] == "lora"


def test_allow_mismatch_keeps_the_common_samples(tmp_path, capsys):
    pre, post = lmms_results(PRE), lmms_results(POST)
    post["config"]["offset"] = 5  # post skipped docs 0-4 of every task
    for t in post["n-samples"]:
        post["n-samples"][t]["effective"] = 15
    full = lmms_results(POST)
    kept = {t: sample_lines(full, t)[5:] for t in POST}
    for t, lines in kept.items():  # as lmms-eval reports it: the mean over the documents it scored
        post["results"][t]["exact_match,none"] = sum(line["exact_match"] for line in lines) / len(lines)
    post_dir = write_output(tmp_path / "post", post, samples=False)
    for t, lines in kept.items():
        write_samples(post_dir / SUB, t, lines)
    pre_dir = write_output(tmp_path / "pre", pre)
    assert run_cli(tmp_path, pre_dir, [post_dir]) == 2
    assert "offset differs" in capsys.readouterr().err
    assert run_cli(tmp_path, pre_dir, [post_dir], "--allow-mismatch", "--json", str(tmp_path / "r.json")) == 0
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["pairing"]["dropped"]["chartqa"] == {"pre": 5, "post": 0}
    # chartqa on docs 5..19: pre 0/15 right, post 9/15 (docs 5..13) right.
    row = data["tasks"]["chartqa"]
    assert (row["pre"], row["post"], row["n"], row["dropped"]) == pytest.approx((0.0, 60.0, 15, 5))


def test_scales_mme_and_cider(tmp_path, capsys):
    pre, post = lmms_results(PRE), lmms_results(POST)
    for run, perception, cider in ((pre, 1000.0, 0.9), (post, 1500.0, 1.2)):
        for task, metric, value in (("mme", "mme_perception_score", perception), ("coco", "coco_CIDEr", cider)):
            run["results"][task] = {"alias": task, f"{metric},none": value}
            run["higher_is_better"][task] = {metric: True}
    pre_dir, post_dir = write_output(tmp_path / "pre", pre), write_output(tmp_path / "post", post)
    for root in (pre_dir, post_dir):  # MME logs a dict per sample: no per-sample statistics
        write_samples(root / SUB, "mme", [{"doc_id": 0, "target": "Yes", "input": "q", "filtered_resps": "Yes",
                                           "mme_perception_score": {"category": "OCR", "score": 1}}])
    argv = ["--pre", str(pre_dir), "--post", str(post_dir), "--downstream", "chartqa,mme,coco",
            "--upstream", UP, "--json", str(tmp_path / "r.json"), "--relative", "--allow-mismatch"]
    assert main(argv) == 0
    data = json.loads((tmp_path / "r.json").read_text())
    mme, coco = data["tasks"]["mme"], data["tasks"]["coco"]
    assert (mme["pre"], mme["post"], mme["scale"]) == pytest.approx((50.0, 75.0, "max:2000"))
    assert (coco["pre"], coco["post"]) == pytest.approx((90.0, 120.0)) and coco["relative"] == pytest.approx(100 / 3)
    assert mme["delta_ci"] is None and data["E_ci"] is None and data["F_ci"] is not None
    assert "rel %" in capsys.readouterr().out


def test_clustered_bootstrap_from_sample_field(tmp_path, capsys):
    def run(cluster: bool, spoil=False):
        pre, post = lmms_results(PRE), lmms_results(POST)
        roots = []
        for name, results in (("pre", pre), ("post", post)):
            if cluster:
                results["configs"]["chartqa"]["metadata"]["forgetbench"] = {"cluster_key": "image_id"}
            root = write_output(tmp_path / f"{name}{cluster}{spoil}", results)
            lines = [{**line, "image_id": f"img{line['doc_id'] // 5}"} for line in sample_lines(results, "chartqa")]
            if spoil:
                del lines[3]["image_id"]
            write_samples(root / SUB, "chartqa", lines)
            roots.append(root)
        out = tmp_path / f"r{cluster}{spoil}.json"
        rc = main(["--pre", str(roots[0]), "--post", str(roots[1]), "--downstream", DOWN, "--upstream", UP,
                   "--json", str(out), "--resamples", "3000"])
        return rc, json.loads(out.read_text()) if rc == 0 else None

    (rc1, plain), (rc2, clustered) = run(False), run(True)
    assert rc1 == rc2 == 0 and clustered["tasks"]["chartqa"]["cluster_key"] == "image_id"
    width = {k: r["tasks"]["chartqa"]["delta_ci"][1] - r["tasks"]["chartqa"]["delta_ci"][0]
             for k, r in (("plain", plain), ("clustered", clustered))}
    assert width["clustered"] > 1.3 * width["plain"]  # docs 0-4, 5-9, ... flip together
    capsys.readouterr()
    assert run(True, spoil=True)[0] == 2
    assert "cluster key 'image_id' is missing" in capsys.readouterr().err


def test_many_methods_table_pareto_and_plot(tmp_path, capsys):
    pre_dir = write_output(tmp_path / "pre", lmms_results(PRE))
    methods = {"lora": (POST, 1000), "full": ({**POST, "chartqa": 0.9, "mmbench": 0.5}, 9000),
               "ia3": ({**POST, "chartqa": 0.2, "mmbench": 0.7}, 10)}
    posts = []
    for name, (scores, params) in methods.items():
        results = lmms_results(scores, pretrained=checkpoint(tmp_path, name, "Qwen/Qwen2-VL-2B-Instruct", params))
        posts.append(f"{name}={write_output(tmp_path / name, results)}")
    out = tmp_path / "o"
    assert run_cli(tmp_path, pre_dir, posts, out=out) == 0
    data = json.loads((out / "compare.json").read_text())
    assert list(data["methods"]) == ["lora", "full", "ia3"]
    # E/F: lora 40/-5, full 50/-20, ia3 15/-10 (beaten by lora on both).
    assert [v for m in data["methods"].values() for v in (m["E"], m["F"])] == pytest.approx(
        [40.0, -5.0, 50.0, -20.0, 15.0, -10.0])
    assert data["pareto"] == ["full", "lora"]
    assert data["methods"]["full"]["trainable_parameters"] == 9000
    table = capsys.readouterr().out
    summary = [line.split() for line in table.splitlines() if line.startswith(("lora ", "full ", "ia3 "))]
    assert ["full", "9,000", "+50.00"] == summary[-2][:3] and "*" in summary[-2]
    assert (out / "ef.svg").read_bytes().count(b"<svg") == 1
    assert format_table(data) == table.rstrip("\n")


def test_post_names_must_differ(tmp_path, dirs, capsys):
    assert run_cli(tmp_path, dirs[0], [f"a={dirs[1]}", f"a={dirs[1]}"]) == 2
    assert "name used twice: a" in capsys.readouterr().err


def test_failed_rename_leaves_no_file(tmp_path, dirs, capsys, monkeypatch):
    real, calls = os.replace, []

    def flaky(src, dst):
        calls.append(dst)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        real(src, dst)

    monkeypatch.setattr(outputs.os, "replace", flaky)
    out = tmp_path / "o"
    assert run_cli(tmp_path, dirs[0], [dirs[1]], "--json", str(tmp_path / "r.json"), out=out) == 2
    assert "No space left" in capsys.readouterr().err
    assert list(out.iterdir()) == [] and not (tmp_path / "r.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_self_comparison_cli_is_zero(tmp_path, dirs, capsys):
    pre = copy.deepcopy(dirs[0])
    assert run_cli(tmp_path, dirs[0], [pre], "--json", str(tmp_path / "r.json")) == 0
    data = json.loads((tmp_path / "r.json").read_text())
    assert all(data[k] == 0 and data[f"{k}_ci"] == [0, 0] for k in "EFO")
