"""The paper's upstream group out of the box (each task's documented primary metric), and intervals for
corpus-level metrics: CIDEr per image and MME per image pair, checked against hand computations. The results.json
and sample logs follow lmms-eval 0.7.3's real key layout (metric order, per-sample dicts)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from forgetbench import suite
from forgetbench.compare import corpus, main, scores, stats

NAME = "20260102_030405_results.json"
COCO_METRICS = ["Bleu_4", "Bleu_3", "Bleu_2", "Bleu_1", "METEOR", "ROUGE_L", "CIDEr"]  # lmms-eval's YAML order
CAPTION = "Provide a one-sentence caption for the provided image."
REFS = [["a red car"], ["a blue bus"]]


def results(tasks: dict[str, dict[str, object]], hib: dict[str, list[str]], n: dict[str, int],
            metric_lists: dict[str, list[dict]] | None = None) -> dict:
    """A results.json of lmms-eval 0.7.3: ``tasks[task]`` maps metric names to values (stderr keys added)."""
    out = {"results": {}, "configs": {}, "versions": {}, "n-shot": {}, "higher_is_better": {}, "n-samples": {},
           "group_subtasks": {t: [] for t in tasks}, "lmms_eval_version": "main@0123abcd",
           "config": {"model": "llava_hf", "model_args": "pretrained=llava-hf/llava-1.5-7b-hf", "limit": None,
                      "offset": 0, "gen_kwargs": None}}
    for task, values in tasks.items():
        out["results"][task] = {"alias": task}
        for metric, value in values.items():
            out["results"][task][f"{metric},none"] = value
            out["results"][task][f"{metric}_stderr,none"] = "N/A"
        out["higher_is_better"][task] = {m: True for m in hib[task]}
        out["n-samples"][task] = {"original": n[task], "effective": n[task]}
        out["versions"][task] = 0.0
        out["n-shot"][task] = 0
        out["configs"][task] = {"task": task, "output_type": "generate_until", "num_fewshot": 0,
                                "metric_list": (metric_lists or {}).get(task, [{"metric": m} for m in hib[task]]),
                                "generation_kwargs": {"max_new_tokens": 64, "temperature": 0, "do_sample": False}}
    return out


def write(root: Path, data: dict, samples: dict[str, list[dict]]) -> Path:
    folder = root / "llava-hf__llava-1.5-7b-hf"
    folder.mkdir(parents=True)
    (folder / NAME).write_text(json.dumps(data))
    for task, lines in samples.items():
        (folder / NAME.replace("results.json", f"samples_{task}.jsonl")).write_text(
            "".join(json.dumps(line) + "\n" for line in lines))
    return root


def coco_lines(preds: list[str]) -> list[dict]:
    """coco2017_cap_val's sample lines: every coco_* metric logs the same {answer, pred, image_id, id} dict."""
    lines = []
    for i, (pred, refs) in enumerate(zip(preds, REFS, strict=True)):
        record = {"answer": refs, "pred": pred, "image_id": 100 + i, "id": i}
        lines.append({"doc_id": i, "target": refs, "resps": [[pred]], "filtered_resps": [pred], "input": CAPTION,
                      **{f"coco_{m}": record for m in COCO_METRICS}})
    return lines


# MME: (image, category, [score of its two questions]) per image; "code_reasoning" is a cognition category.
MME_PRE = [("ocr/a.jpg", "OCR", [1, 1]), ("ocr/b.jpg", "OCR", [1, 0]), ("color/c.jpg", "color", [0, 0]),
           ("code/d.png", "code_reasoning", [1, 1])]
MME_POST = [("ocr/a.jpg", "OCR", [1, 0]), ("ocr/b.jpg", "OCR", [1, 1]), ("color/c.jpg", "color", [1, 1]),
            ("code/d.png", "code_reasoning", [0, 0])]


def mme_lines(images) -> list[dict]:
    lines = []
    for image, category, answers in images:
        key = "mme_cognition_score" if category == "code_reasoning" else "mme_perception_score"
        for score in answers:
            lines.append({"doc_id": len(lines), "target": "Yes", "input": f"Is it {image} {len(lines)}?",
                          "filtered_resps": ["Yes" if score else "No"],
                          key: {"question_id": image, "category": category, "score": float(score)}})
    return lines


OKVQA = {"pre": [1.0, 0.6, 0.3, 0.0, 1.0], "post": [0.6, 0.6, 0.0, 0.0, 1.0]}  # VQA accuracy per question


def upstream_runs(tmp_path: Path, with_samples: bool = True) -> tuple[Path, Path]:
    """ok_vqa_val2014 (downstream here), coco2017_cap_val and mme (upstream), as lmms-eval writes them."""
    dirs = []
    for side, preds, mme, perception, cognition in (
            ("pre", ["a red car", "a green tree"], MME_PRE, 125.0, 200.0),
            ("post", ["a red car", "a blue bus"], MME_POST, 325.0, 0.0)):
        cider = {"pre": 3.75, "post": 7.5}[side]
        data = results(
            {"ok_vqa_val2014": {"exact_match": float(np.mean(OKVQA[side])), "submission": None},
             "coco2017_cap_val": {**{f"coco_{m}": 0.2 for m in COCO_METRICS[:-1]}, "coco_CIDEr": cider},
             "mme": {"mme_perception_score": perception, "mme_cognition_score": cognition}},
            {"ok_vqa_val2014": ["exact_match", "submission"], "coco2017_cap_val": [f"coco_{m}" for m in COCO_METRICS],
             "mme": ["mme_perception_score", "mme_cognition_score"]},
            {"ok_vqa_val2014": 5, "coco2017_cap_val": 2, "mme": 8},
            {"ok_vqa_val2014": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True},
                                {"metric": "submission", "aggregation": "<function ok_vqa_aggregate_submissions>",
                                 "higher_is_better": True}]})
        samples = {"ok_vqa_val2014": [{"doc_id": i, "target": "answer", "input": f"Q{i}?", "filtered_resps": ["a"],
                                       "exact_match": v, "submission": {"question_id": i, "answer": "a"}}
                                      for i, v in enumerate(OKVQA[side])],
                   "coco2017_cap_val": coco_lines(preds), "mme": mme_lines(mme)} if with_samples else {}
        dirs.append(write(tmp_path / side, data, samples))
    return dirs[0], dirs[1]


def compare(pre: Path, post: Path, out: Path, *extra: str) -> dict:
    assert main(["--pre", str(pre), "--post", str(post), "--downstream", "ok_vqa_val2014",
                 "--upstream", "coco2017_cap_val,mme", "--json", str(out), "--resamples", "4000", *extra]) == 0
    return json.loads(out.read_text())


def test_upstream_group_needs_no_flag(tmp_path, capsys):
    report = compare(*upstream_runs(tmp_path, with_samples=False), tmp_path / "r.json")
    rows = report["tasks"]
    assert {t: (r["metric"], r["scale"]) for t, r in rows.items()} == {
        "ok_vqa_val2014": ("exact_match", "fraction"), "coco2017_cap_val": ("coco_CIDEr", "cider"),
        "mme": ("mme_perception_score", "max:2000")}
    assert rows["coco2017_cap_val"]["delta"] == pytest.approx(375.0)  # CIDEr 3.75 -> 7.5, x100
    assert rows["mme"]["delta"] == pytest.approx(10.0)  # 125 -> 325 out of 2000
    assert rows["ok_vqa_val2014"]["delta"] == pytest.approx(100 * (np.mean(OKVQA["post"]) - np.mean(OKVQA["pre"])))
    assert report["F"] == pytest.approx((375.0 + 10.0) / 2) and report["F_ci"] is None  # no sample logs


def test_cider_and_mme_intervals_by_hand(tmp_path, capsys):
    """CIDEr-D per image, by hand: a caption equal to its single reference scores (1 + 1 + 1 + 0) / 4 x 10 = 7.5
    (1- to 3-grams match with idf log 2, "a" is in both references so its idf is 0, no 4-gram); one sharing only
    "a" scores 0. Pre 7.5 and 0, post 7.5 and 7.5: per-image deltas 0 and 7.5 (x100 points). A resample of two
    images holds (0, 0), (0, 7.5) or (7.5, 7.5): the 95 % interval is [0, 750] points.
    MME perception: per image acc + acc+; OCR images pre 200, 50 and post 50, 200 (deltas -150, +150), colour
    pre 0, post 200; stratified by category the total delta 200 / 2000 = 10 points varies by (+-150 / 2) / 20 =
    +-7.5 points in OCR only: [2.5, 17.5]."""
    report = compare(*upstream_runs(tmp_path), tmp_path / "r.json")
    coco, mme, okvqa = (report["tasks"][t] for t in ("coco2017_cap_val", "mme", "ok_vqa_val2014"))
    assert (coco["unit"], coco["clusters"], coco["n"]) == ("image", 2, 2)
    assert coco["delta_ci"] == pytest.approx([0.0, 750.0])
    assert (mme["unit"], mme["clusters"], mme["n"]) == ("image pair", 3, 8)
    assert mme["delta_ci"] == pytest.approx([2.5, 17.5])
    assert okvqa["unit"] == "document" and okvqa["delta_ci"] is not None
    assert report["F_ci"] is not None and report["F_ci"][0] <= report["F"] <= report["F_ci"][1]


def test_mme_cognition_by_hand(tmp_path, capsys):
    """One cognition image, right twice before (200) and wrong twice after (0): -200 / 800 = -25 points, and with a
    single image nothing varies."""
    report = compare(*upstream_runs(tmp_path), tmp_path / "r.json", "--metric", "mme=mme_cognition_score")
    row = report["tasks"]["mme"]
    assert (row["scale"], row["delta"], row["delta_ci"], row["clusters"]) == ("max:800", -25.0, [-25.0, -25.0], 1)


def test_corpus_logs_that_do_not_reproduce_the_results_give_no_interval(tmp_path, capsys):
    pre, post = upstream_runs(tmp_path)
    file = post / "llava-hf__llava-1.5-7b-hf" / NAME
    data = json.loads(file.read_text())
    data["results"]["coco2017_cap_val"]["coco_CIDEr,none"] = 7.0  # not what the logged captions give
    file.write_text(json.dumps(data))
    report = compare(pre, post, tmp_path / "r.json")
    assert report["tasks"]["coco2017_cap_val"]["delta_ci"] is None and report["F_ci"] is None


def test_per_image_cider_is_pycocoevalcaps_corpus_cider():
    """The mean of the per-image scores is what lmms-eval's aggregation (pycocoevalcap's Cider) reports."""
    from pycocoevalcap.cider.cider import Cider

    refs = [["a man rides a horse", "a person on a horse"], ["two dogs play in the snow", "dogs in snow"],
            ["a plate of food on a table", "food on a plate"]]
    preds = ["a man on a horse", "a dog in the snow", "a table"]
    records = [{"answer": r, "pred": p, "image_id": i} for i, (r, p) in enumerate(zip(refs, preds, strict=True))]
    units = corpus.cider_units(records, records)
    tokens = corpus.tokenize({i: r for i, r in enumerate(refs)}), corpus.tokenize({i: [p] for i, p in enumerate(preds)})
    score, per_image = Cider().compute_score(*tokens)
    assert units.pre_value == pytest.approx(score) and units.pre == pytest.approx(per_image)


def test_simple_tokenizer_matches_java_ptb_on_ordinary_captions():
    captions = {0: ["A man's dog, running!", "Two people don't walk -- they run...", "A  RED car."]}
    if corpus._ptb_jar() is None:
        pytest.skip("no java")
    java = corpus.tokenize(captions)
    assert java[0] == [corpus.simple_tokenize(c) for c in captions[0]]


def test_stratified_bootstrap_by_hand():
    # Strata a (deltas 100, 0) and b (50, 50): the sum of stratum means varies only through a: -50, 0, +50.
    dev = stats.stratified_deviations([100.0, 0.0, 50.0, 50.0], ["a", "a", "b", "b"], 40000, np.random.default_rng(1))
    values, counts = np.unique(dev, return_counts=True)
    assert values.tolist() == [-50.0, 0.0, 50.0] and counts / counts.sum() == pytest.approx([0.25, 0.5, 0.25],
                                                                                            abs=0.01)


def _lmms_eval_yaml(relative: str) -> dict:
    import lmms_eval

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))
    folder = Path(lmms_eval.__file__).parent / "tasks"
    data = yaml.load((folder / relative).read_text(), Loader=Loader)
    if "include" in data:
        data = {**_lmms_eval_yaml(str(Path(relative).parent / data["include"])), **data}
    return data


@pytest.mark.parametrize("task, yaml_file", [
    ("ok_vqa_val2014", "ok_vqa/ok_vqa_val2014.yaml"), ("gqa", "gqa/gqa.yaml"),
    ("textvqa_val", "textvqa/textvqa_val.yaml"),
    ("coco2017_cap_val", "coco_cap/coco2017_cap_val.yaml"), ("mme", "mme/mme.yaml"),
    ("scienceqa_img", "scienceqa/scienceqa_img.yaml"), ("flickr30k_test", "flickr30k/flickr30k_test.yaml"),
    ("nocaps_val", "nocaps/nocaps_val.yaml"), ("textcaps_val", "textcaps/textcaps_val.yaml"),
])
def test_table_names_metrics_lmms_eval_defines(task, yaml_file):
    metrics = [m["metric"] for m in _lmms_eval_yaml(yaml_file)["metric_list"]]
    assert scores.TASK_METRICS[task] in metrics and scores.TASK_METRICS[task] in scores.METRIC_SCALES


def test_table_holds_lmms_eval_tasks_only_and_forgetbench_tasks_declare_theirs():
    """One declaration per fact: TASK_METRICS covers lmms-eval's own tasks of both groups; a forgetbench task's
    metric and scale are declared once, in its YAML (metadata.forgetbench), never in the table; score_key (what
    lmms-eval's --baseline reads) names the same metric."""
    own = [task for task, entry in suite.TASKS.items() if entry.module != "reused"]
    for task in (*suite.UPSTREAM, *suite.DOWNSTREAM):
        assert (task in scores.TASK_METRICS) == (task not in own), task
    assert not [task for task in scores.TASK_METRICS if task.startswith("forgetbench_")]
    for task in own:
        config = suite.task_config(task)
        declared = config["metadata"]["forgetbench"]
        assert declared["scale"] in scores.METRIC_SCALES.values() or declared["scale"] == "points", task
        assert config["score_key"] == declared["primary_metric"], task
        assert declared["primary_metric"] in [m["metric"] for m in config["metric_list"]], task


def test_forgetbench_task_is_scored_from_its_recorded_config(tmp_path):
    """compare reads a forgetbench task's metric and scale from the run (configs[task], as lmms-eval records the
    YAML), not from a table: RSVQA lists average_accuracy and others beside its primary accuracy."""
    task = "forgetbench_rsvqa_lr"
    config = suite.task_config(task)
    metrics = [m["metric"] for m in config["metric_list"]]
    data = results({task: {m: 0.5 for m in reversed(metrics)}}, {task: list(reversed(metrics))}, {task: 4})
    data["configs"][task]["metadata"] = {"version": 1.0, "forgetbench": dict(config["metadata"]["forgetbench"])}
    assert scores.score(data, task, "--pre X", None, None) == ("accuracy", "fraction", 0.5)
    del data["configs"][task]["metadata"]["forgetbench"]  # without it: the first listed metric, not a table entry
    assert scores.primary_metric(data, task, "--pre X") == metrics[-1] != "accuracy"
