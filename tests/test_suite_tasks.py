"""The task suite through the real lmms-eval: every YAML loads, every task runs on its generated fixture with the lab
model and writes results, the groups resolve against lmms-eval's own tasks, training asks the evaluation prompt."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import lmms_eval_runs

import forgetbench
from forgetbench import suite
from forgetbench.suite import fixtures, rsvqa

# The benchmark suite's own tasks, each with fixture data (the lab's tasks ship their data: tests/test_lab.py).
OWN_TASKS = [name for name, task in suite.TASKS.items() if task.module not in ("reused", "lab")]
# Likelihood over the label set costs one forward pass per label and document: the closed sets run on 1 document.
CLOSED = [task for task in OWN_TASKS if task.endswith("_closed")]
GROUPS = {"forgetbench_downstream": suite.DOWNSTREAM, "forgetbench_upstream": suite.UPSTREAM,
          "forgetbench_emt": suite.EMT}


@pytest.fixture(scope="session")
def suite_fixtures(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("suite_fixtures")
    return root, fixtures.write_all(root)


def lmms_eval_args(lab_model: Path, root: Path, out: Path, tasks: list[str], limit: int) -> list[str]:
    return ["--model", "forgetbench", "--model_args", f"pretrained={lab_model}", "--include_path", str(root),
            "--tasks", ",".join(f"{t}{fixtures.LOCAL_SUFFIX}" for t in tasks), "--batch_size", "8",
            "--limit", str(limit), "--output_path", str(out), "--log_samples"]


@pytest.fixture(scope="module")
def suite_run(lab_model, suite_fixtures, tmp_path_factory) -> dict[str, tuple[dict, Path]]:
    """Two lmms-eval runs (one process): the generation tasks on up to 8 fixture documents, the closed sets on 1."""
    root, _ = suite_fixtures
    out = tmp_path_factory.mktemp("suite_run")
    plan = (("generation", [t for t in OWN_TASKS if t not in CLOSED], 8), ("closed", CLOSED, 1))
    lmms_eval_runs([lmms_eval_args(lab_model, root, out / name, tasks, limit) for name, tasks, limit in plan], out)
    runs = {}
    for name, tasks, _ in plan:
        (results_file,) = (out / name).glob("*/*_results.json")  # lmms-eval exits 0 even on failure: the proof
        runs |= {task: (json.loads(results_file.read_text()), results_file.parent) for task in tasks}
    return runs


def read_samples(folder: Path, task: str) -> list[dict]:
    (path,) = folder.glob(f"*_samples_{task}{fixtures.LOCAL_SUFFIX}.jsonl")
    return sorted((json.loads(line) for line in path.read_text().splitlines()), key=lambda s: s["doc_id"])


def test_every_yaml_loads_through_the_task_manager(suite_fixtures):
    from lmms_eval.tasks import TaskManager

    root, written = suite_fixtures
    manager = TaskManager(include_path=[str(forgetbench.tasks_path()), str(root)], include_defaults=False)
    for task in OWN_TASKS:
        assert task in manager.all_subtasks, task
        assert f"{task}{fixtures.LOCAL_SUFFIX}" in manager.all_subtasks, task
        config = suite.task_config(task)
        assert config["task"] == task
        assert config["metadata"]["forgetbench"]["primary_metric"] in {m["metric"] for m in config["metric_list"]}
    for group in [*GROUPS, "forgetbench_emt_closed"]:
        assert group in manager.all_groups, group
    assert set(written) == set(OWN_TASKS)


@pytest.mark.parametrize("task", OWN_TASKS)
def test_every_task_runs_through_lmms_eval_and_writes_results(suite_run, task):
    results, folder = suite_run[task]
    local = f"{task}{fixtures.LOCAL_SUFFIX}"
    config = results["configs"][local]
    declared = config["metadata"]["forgetbench"]
    assert declared["scale"] == "fraction"
    value = results["results"][local][f"{declared['primary_metric']},none"]
    assert 0.0 <= value <= 1.0
    samples = read_samples(folder, task)
    assert len(samples) == results["n-samples"][local]["effective"] > 0
    for metric in config["metric_list"]:
        assert f"{metric['metric']},none" in results["results"][local], metric
    # Every task with several questions per image declares, at the top level where lmms-eval reads it, the
    # per-sample field its questions cluster by (RSVQA and OCR-VQA: an image id; PathVQA: a content hash).
    clustered = {"forgetbench_rsvqa_lr", "forgetbench_rsvqa_hr", "forgetbench_ocrvqa", "forgetbench_pathvqa"}
    if task in clustered:
        assert config.get("cluster_key"), task
    if config.get("cluster_key"):
        assert all(config["cluster_key"] in sample for sample in samples)


def test_per_type_metrics_match_the_sample_logs(suite_run):
    """RSVQA's AA and per-type accuracies, PathVQA's yes/no vs open split, IconQA's sub-tasks and the EMT failure
    rates, recomputed by hand from the per-sample records lmms-eval logged."""
    for task, kinds in (("forgetbench_rsvqa_lr", rsvqa.QUESTION_TYPES["lr"]),
                        ("forgetbench_rsvqa_hr", rsvqa.QUESTION_TYPES["hr"]),
                        ("forgetbench_iconqa", ("choose_txt", "choose_img", "fill_in_blank"))):
        results, folder = suite_run[task]
        scores = results["results"][f"{task}{fixtures.LOCAL_SUFFIX}"]
        samples = read_samples(folder, task)
        per_type = {}
        for kind in kinds:
            values = [s["accuracy"] for s in samples if s[f"accuracy_{kind}"]["type"] == kind]
            assert values, (task, kind)  # every fixture holds every type
            per_type[kind] = sum(values) / len(values)
            assert scores[f"accuracy_{kind},none"] == pytest.approx(per_type[kind])
        assert scores["accuracy,none"] == pytest.approx(sum(s["accuracy"] for s in samples) / len(samples))
        if task.startswith("forgetbench_rsvqa"):
            assert scores["average_accuracy,none"] == pytest.approx(sum(per_type.values()) / len(per_type))
    results, folder = suite_run["forgetbench_emt_mnist"]
    samples = read_samples(folder, "forgetbench_emt_mnist")
    scores = results["results"]["forgetbench_emt_mnist_local"]
    kinds = ("accuracy", "wrong_label_rate", "multiple_labels_rate", "hallucination_rate")
    rates = [scores[f"{kind},none"] for kind in kinds]
    assert sum(rates) == pytest.approx(1.0)  # every answer falls in exactly one kind
    assert {s["judgement"]["kind"] for s in samples} <= set(suite.scoring.JUDGEMENTS)


def test_choose_img_shows_every_option_image(suite_run, suite_fixtures):
    _, written = suite_fixtures
    docs = suite.load_split("forgetbench_iconqa", "test", written["forgetbench_iconqa"]["test"])
    results, folder = suite_run["forgetbench_iconqa"]
    for sample in read_samples(folder, "forgetbench_iconqa"):
        doc = docs[sample["doc_id"]]
        if doc["ques_type"] == "choose_img":
            n_options = sum(doc[f"choice_image_{i}"] is not None for i in range(5))
            assert len(suite.iconqa.doc_to_visual(doc)) == 1 + n_options
            assert f"the {suite.iconqa.ORDINALS[n_options]} image" in sample["input"]


@pytest.mark.parametrize("task", OWN_TASKS)
def test_training_asks_the_evaluation_prompt(suite_run, suite_fixtures, task):
    _, written = suite_fixtures
    rows = suite.train_conversations(task, "test", data_files={"test": str(written[task]["test"])})
    _, folder = suite_run[task]
    for sample in read_samples(folder, task):
        row = rows[sample["doc_id"]]
        user, assistant = row["messages"]
        assert user["content"][-1]["text"] == sample["input"]
        assert sum(part["type"] == "image" for part in user["content"]) == len(row["images"]) >= 1
        assert assistant["content"][0]["text"]


def test_compare_reads_the_declared_metric_and_scale(suite_run):
    """What `forgetbench compare` takes from each task's metadata.forgetbench."""
    from forgetbench.compare.scores import score

    for task in OWN_TASKS:
        results, _ = suite_run[task]
        metric, scale, value = score(results, f"{task}{fixtures.LOCAL_SUFFIX}", "--pre X", None, None)
        assert (metric, scale) == (suite.task_config(task)["metadata"]["forgetbench"]["primary_metric"], "fraction")
        assert 0.0 <= value <= 1.0


def test_train_conversations_of_reused_tasks_use_lmms_eval_prompts(tmp_path):
    import datasets
    from lmms_eval.tasks.flickr30k.utils import flickr_doc_to_text

    science = {"image": [fixtures.image(1), None], "question": ["Which is a mammal?", "No image"],
               "choices": [["cat", "trout"], ["a", "b"]], "answer": [0, 1], "hint": ["", ""]}
    datasets.Dataset.from_dict(science).to_parquet(str(tmp_path / "sqa.parquet"))
    rows = suite.train_conversations("scienceqa_img", data_files=str(tmp_path / "sqa.parquet"))
    assert len(rows) == 1  # the row without an image is not ScienceQA-IMG
    assert rows[0]["messages"][0]["content"][-1]["text"].startswith("Which is a mammal?\nA. cat\nB. trout\n")
    assert rows[0]["messages"][1]["content"][0]["text"] == "A"
    flickr = {"image": [fixtures.image(2), fixtures.image(3)], "caption": [["A dog runs."] * 5, ["x"] * 5],
              "split": ["train", "test"], "img_id": ["1", "2"]}
    datasets.Dataset.from_dict(flickr).to_parquet(str(tmp_path / "flickr.parquet"))
    rows = suite.train_conversations("flickr30k_test", data_files=str(tmp_path / "flickr.parquet"))
    assert len(rows) == 1
    assert rows[0]["messages"][0]["content"][-1]["text"] == flickr_doc_to_text({})


def test_rsvqa_converter_reads_the_official_layout(tmp_path):
    release = fixtures.rsvqa_release(tmp_path / "release", "lr")
    files = rsvqa.convert_release(release, "lr", tmp_path / "out")
    assert sorted(p.name for p in files) == ["test.parquet", "train.parquet"]
    rows = suite.load_split("forgetbench_rsvqa_lr", "test", {"test": str(tmp_path / "out" / "test.parquet")})
    assert len(rows) == 8  # the inactive question is left out
    assert {row["type"] for row in rows} == set(rsvqa.QUESTION_TYPES["lr"])
    assert rows[2]["answer"] == "3" and rows[2]["type"] == "count"
    assert Path(rows[0]["image"]).is_file()
    with pytest.raises(FileNotFoundError, match="no image folder"):
        rsvqa.convert_release(tmp_path / "out", "lr", tmp_path / "elsewhere")


def test_emt_refuses_a_copy_with_other_columns(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"img": [fixtures.image(0)], "label": [3]}).to_parquet(str(tmp_path / "x.parquet"))
    with pytest.raises(ValueError, match="EMT cifar10: column 'label' is missing or not a ClassLabel"):
        suite.load_split("forgetbench_emt_cifar10", "test", str(tmp_path / "x.parquet"))


@pytest.fixture(scope="session")
def default_task_manager():
    """lmms-eval's full index, built once (~8 s): its own tasks plus forgetbench's."""
    from lmms_eval.tasks import TaskManager

    return TaskManager(include_path=str(forgetbench.tasks_path()))


@pytest.mark.parametrize("group", GROUPS)
def test_groups_resolve_against_lmms_eval_tasks(default_task_manager, group):
    """Index only: loading lmms-eval's own tasks would need the hub."""
    from lmms_eval.utils import load_yaml_config

    config = load_yaml_config(str(forgetbench.tasks_path() / "groups" / f"{group}.yaml"), mode="simple")
    assert tuple(config["task"]) == GROUPS[group]
    assert group in default_task_manager.all_groups
    for task in config["task"]:
        assert task in default_task_manager.all_subtasks, task
        assert default_task_manager.task_index[task]["type"] == "task"
    assert "forgetbench_rsvqa_hr" not in config["task"]


def test_nan_marks_a_question_type_that_was_not_evaluated():
    assert math.isnan(rsvqa.accuracy_area([suite.scoring.typed("count", 1.0)]))


def test_iconqa_converter_reads_the_official_layout(tmp_path):
    from forgetbench.suite import iconqa

    release = tmp_path / "iconqa_data"
    problems = {"11": {"question": "Which is round?", "choices": ["square", "circle"], "answer": 1},
                "12": {"question": "Which has 2 dots?", "choices": ["choice_0.png", "choice_1.png", "choice_2.png"],
                       "answer": 2},
                "13": {"question": "How many stars?", "answer": "5"}}
    for pid, kind, n_choices in (("11", "choose_txt", 0), ("12", "choose_img", 3), ("13", "fill_in_blank", 0)):
        folder = release / "iconqa" / "train" / kind / pid
        folder.mkdir(parents=True)
        fixtures.image(int(pid)).save(folder / "image.png")
        for i in range(n_choices):
            fixtures.image(100 + i).save(folder / f"choice_{i}.png")
    (release / "problems.json").write_text(json.dumps(problems))
    (release / "pid_splits.json").write_text(json.dumps(
        {"choose_txt_train": ["11"], "choose_img_train": ["12"], "fill_in_blank_train": ["13"]}))
    out = iconqa.convert_release(release, "train", tmp_path / "train.parquet")
    rows = suite.train_conversations("forgetbench_iconqa", data_files=str(out))
    targets = [row["messages"][1]["content"][0]["text"] for row in rows]
    assert targets == ["B", "C", "5"]
    assert [len(row["images"]) for row in rows] == [1, 4, 1]
    assert "C. the 4th image" in rows[1]["messages"][0]["content"][-1]["text"]
    with pytest.raises(ValueError, match="lists no test problem"):
        iconqa.convert_release(release, "test", tmp_path / "test.parquet")
