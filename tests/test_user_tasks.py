"""Your own data as a task (forgetbench.suite.user_tasks): each input format becomes an lmms-eval task folder that
lmms-eval runs through --include_path on the lab model, training reads the evaluation prompt, and every kind of bad
input is refused in one line naming the rows, writing nothing."""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import lmms_eval_bin, run_command

from forgetbench.lab.data import RGB, draw_shape
from forgetbench.suite import user_tasks
from forgetbench.suite.common import SHORT_ANSWER
from forgetbench.suite.user_tasks import UserTaskError, add_task

COLOURS = list(RGB)
QUESTION = "What colour is the shape?"
LAB_QUESTION = f"{QUESTION} Answer with one word."  # the lab model's own question: it answers colours right
ROWS = 60


def colour_rows(folder: Path, start: int, n: int) -> list[dict]:
    """``n`` coloured squares on their own random background (no two images alike), saved as PNG under
    ``folder/img``: ``{id, path, colour}``."""
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(start, start + n):
        colour = COLOURS[i % len(COLOURS)]
        draw_shape("square", colour, np.random.default_rng(i)).save(folder / "img" / f"c{i}.png")
        rows.append({"id": f"c{i}", "path": f"img/c{i}.png", "colour": colour})
    return rows


def llava(rows: list[dict], question: str = LAB_QUESTION) -> list[dict]:
    return [{"id": r["id"], "image": r["path"], "conversations": [
        {"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": r["colour"]}]} for r in rows]


def trl(folder: Path, rows: list[dict]):
    import datasets
    from PIL import Image

    return datasets.Dataset.from_dict({
        "images": [[Image.open(folder / r["path"])] for r in rows],
        "messages": [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]},
                      {"role": "assistant", "content": [{"type": "text", "text": r["colour"]}]}] for r in rows]})


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def write_csv(path: Path, rows: list[dict], choices: bool = True) -> Path:
    import csv

    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "image", "question", "answer", "choices"])
        for r in rows:
            writer.writerow([r["id"], r["path"], QUESTION, r["colour"], "|".join(COLOURS) if choices else ""])
    return path


@pytest.fixture(scope="session")
def user_data(tmp_path_factory) -> dict:
    """Four tasks from 60 train and 60 test rows each: LLaVA JSON/JSONL (exact match), TRL parquet and
    save_to_disk (ANLS), a CSV table with choices (likelihood), a JSONL table of captions (CIDEr). The source
    images are moved away afterwards: the task folders must not need them."""
    src = tmp_path_factory.mktemp("user_data")
    train, test = colour_rows(src, 0, ROWS), colour_rows(src, ROWS, ROWS)
    (src / "llava_train.json").write_text(json.dumps(llava(train)))
    write_jsonl(src / "llava_test.jsonl", llava(test))
    trl(src, train).to_parquet(str(src / "trl_train.parquet"))
    trl(src, test).save_to_disk(str(src / "trl_test"))
    captions = [{"image": r["path"], "question": "Describe the image.", "answer": [f"a {r['colour']} square",
                 f"{r['colour']} square"]} for r in test]
    tasks_dir = src / "tasks"
    added = {
        "llava": add_task("my_llava", src / "llava_train.json", src / "llava_test.jsonl", tasks_dir, instruction=""),
        "trl": add_task("my_trl", src / "trl_train.parquet", src / "trl_test", tasks_dir, metric="anls"),
        "table": add_task("my_table", write_csv(src / "table_train.csv", train),
                          write_csv(src / "table_test.csv", test), tasks_dir),
        "captions": add_task("my_captions", write_jsonl(src / "cap_train.jsonl", captions[:30]),
                             write_jsonl(src / "cap_test.jsonl", captions[30:]), tasks_dir, metric="cider",
                             allow_overlap=False),
    }
    (src / "img").rename(src / "img_moved")
    return {"src": src, "dir": tasks_dir, "added": added, "test": test}


@pytest.fixture(scope="session")
def user_run(user_data, lab_model) -> dict:
    """One in-process lmms-eval run of the four tasks, found through the include path alone."""
    from lmms_eval import evaluator
    from lmms_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(user_data["dir"]), include_defaults=False)
    names = [added.name for added in user_data["added"].values()]
    return evaluator.simple_evaluate(model="forgetbench", model_args=f"pretrained={lab_model}", tasks=names,
                                     limit=8, batch_size=8, task_manager=manager, device="cpu", log_samples=True)


def test_each_format_becomes_a_task_folder(user_data):
    added = user_data["added"]
    assert {kind: (a.metric, a.scale, a.closed) for kind, a in added.items()} == {
        "llava": ("exact_match", "fraction", False), "trl": ("anls", "fraction", False),
        "table": ("acc", "fraction", True), "captions": ("caption_CIDEr", "cider", False)}
    assert {kind: {s: (r.rows, r.documents, r.formats) for s, r in a.splits.items()} for kind, a in added.items()} == {
        "llava": {"train": (60, 60, {"llava": 60}), "test": (60, 60, {"llava": 60})},
        "trl": {"train": (60, 60, {"trl": 60}), "test": (60, 60, {"trl": 60})},
        "table": {"train": (60, 60, {"table": 60}), "test": (60, 60, {"table": 60})},
        "captions": {"train": (30, 30, {"table": 30}), "test": (30, 30, {"table": 30})}}
    for a in added.values():
        assert a.include_path == user_data["dir"].resolve()
        assert sorted(p.relative_to(a.folder).as_posix() for p in a.folder.rglob("*") if p.is_file()) == sorted(
            [f"{a.name}.yaml", "data/train.parquet", "data/test.parquet", user_tasks.MARKER])
        marker = json.loads((a.folder / user_tasks.MARKER).read_text())
        assert marker["metric"] == a.metric and marker["image_overlap"] == {"test_rows": 0, "allowed": False}
    assert not [p for p in user_data["dir"].iterdir() if p.name.startswith(".")]  # no scratch folder left
    assert user_tasks.list_tasks(user_data["dir"]) == {a.name: a.yaml for a in added.values()}
    docs = user_tasks.load_split(added["table"].folder, "test")
    assert docs[0]["choices"] == COLOURS and docs[0]["answer"] == "red" and docs[0]["id"] == "c60"
    assert user_tasks.doc_to_text(docs[0]) == f"{QUESTION}\nChoices: {', '.join(COLOURS)}.\n{SHORT_ANSWER}"
    captions = user_tasks.load_split(added["captions"].yaml, "test")
    assert (captions[0]["id"], captions[0]["answers"]) == ("line 1", ["a red square", "red square"])


def test_lmms_eval_runs_every_format_through_the_include_path(user_data, user_run):
    results, configs = user_run["results"], user_run["configs"]
    llava_score = results["my_llava"]["exact_match,none"]
    assert llava_score >= 0.75  # the lab model's own question on its own kind of image, asked via the YAML's hooks
    for name, metric, upper in (("my_llava", "exact_match", 1), ("my_trl", "anls", 1), ("my_table", "acc", 1),
                                ("my_captions", "caption_CIDEr", 10)):
        value = results[name][f"{metric},none"]
        assert isinstance(value, float) and math.isfinite(value) and 0 <= value <= upper, (name, value)
        assert configs[name]["metadata"]["forgetbench"]["primary_metric"] == metric
        assert configs[name]["cluster_key"] == "image_hash"
        assert len(user_run["samples"][name]) == 8
        assert all(len(s["image_hash"]) == 16 for s in user_run["samples"][name])
    assert configs["my_captions"]["metadata"]["forgetbench"]["scale"] == "cider"
    # the closed set scored every colour per document, lowest loss wins
    sample = user_run["samples"]["my_table"][0]
    assert len(sample["filtered_resps"]) == len(COLOURS)
    losses = [nll for nll, _ in sample["filtered_resps"]]
    assert sample["acc"] == float(COLOURS[int(np.argmin(losses))] == sample["doc"]["answer"])
    # the per-caption records are what compare's per-image CIDEr reads
    record = user_run["samples"]["my_captions"][0]["caption_CIDEr"]
    assert set(record) == {"answer", "pred", "image_id"} and len(record["answer"]) == 2


def test_training_asks_the_evaluation_prompt(user_data, user_run):
    for added in user_data["added"].values():
        rows = user_tasks.train_conversations(added.folder, split="test")
        docs = user_tasks.load_split(added.folder, "test")
        for sample in user_run["samples"][added.name]:
            user, assistant = rows[sample["doc_id"]]["messages"]
            asked = sample["arguments"][0]  # the context lmms-eval sent, what a sample log writes as "input"
            assert user["content"][-1]["text"] == asked == user_tasks.doc_to_text(docs[sample["doc_id"]])
            assert assistant["content"][0]["text"] == docs[sample["doc_id"]]["answer"]
        train = user_tasks.train_conversations(added.name, tasks_dir=user_data["dir"])
        assert len(train) == added.splits["train"].documents and train[0]["images"][0].mode == "RGB"
    config = user_tasks.task_config("my_trl", user_data["dir"])
    assert (config["doc_to_text"], config["process_results"]) == (user_tasks.doc_to_text, user_tasks.process_anls)


def test_a_multi_turn_row_gives_one_document_per_pair(tmp_path):
    rows = colour_rows(tmp_path, 0, 3)
    conversations = llava(rows)
    conversations[0]["conversations"] += [{"from": "human", "value": "Is it a square?"},
                                          {"from": "gpt", "value": "yes"}]
    (tmp_path / "train.json").write_text(json.dumps(conversations))
    write_jsonl(tmp_path / "test.jsonl", llava(colour_rows(tmp_path, 3, 2)))
    added = add_task("turns", tmp_path / "train.json", tmp_path / "test.jsonl", tmp_path / "tasks")
    assert (added.splits["train"].rows, added.splits["train"].documents) == (3, 4)
    docs = user_tasks.load_split(added.folder, "train")
    assert [(d["id"], d["source_id"], d["turn"], d["question"], d["answer"]) for d in docs] == [
        ("c0#1", "c0", 1, LAB_QUESTION, "red"), ("c0#2", "c0", 2, "Is it a square?", "yes"),
        ("c1", "c1", 1, LAB_QUESTION, "green"), ("c2", "c2", 1, LAB_QUESTION, "blue")]
    assert docs[0]["image_hash"] == docs[1]["image_hash"] != docs[2]["image_hash"]
    rows = user_tasks.train_conversations(added.folder)
    assert rows[1]["messages"][0]["content"][-1]["text"] == f"Is it a square?\n{SHORT_ANSWER}"


def test_relative_images_resolve_against_image_root(tmp_path):
    colour_rows(tmp_path / "pictures", 0, 4)
    data = tmp_path / "data"
    data.mkdir()
    rows = [{"image": f"c{i}.png", "question": QUESTION, "answer": COLOURS[i]} for i in range(4)]
    write_jsonl(data / "train.jsonl", rows[:2])
    write_jsonl(data / "test.jsonl", rows[2:])
    with pytest.raises(UserTaskError, match=r"2 of 2 rows: image file not found \(line 1, line 2\)"):
        add_task("rooted", data / "train.jsonl", data / "test.jsonl", tmp_path / "tasks")
    added = add_task("rooted", data / "train.jsonl", data / "test.jsonl", tmp_path / "tasks",
                     image_root=tmp_path / "pictures" / "img")
    assert [d["id"] for d in user_tasks.load_split(added.folder, "test")] == ["line 1", "line 2"]


# -- refusals ---------------------------------------------------------------------------------------------------------


def tree(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) if folder.exists() else []


@pytest.fixture
def small(tmp_path) -> dict:
    """Six train and four test rows of each format's raw material, in ``tmp_path``."""
    return {"dir": tmp_path, "train": colour_rows(tmp_path, 0, 6), "test": colour_rows(tmp_path, 6, 4)}


def refuse(small: dict, train: list[dict], test: list[dict], **kwargs) -> str:
    """Add a task from JSONL records; it must be refused and leave the tasks folder as it was."""
    folder = small["dir"]
    tasks_dir = kwargs.pop("tasks_dir", folder / "tasks")
    before = tree(tasks_dir)
    with pytest.raises(UserTaskError) as refused:
        add_task(kwargs.pop("name", "mine"), write_jsonl(folder / "train.jsonl", train),
                 write_jsonl(folder / "test.jsonl", test), tasks_dir, **kwargs)
    assert tree(tasks_dir) == before
    message = str(refused.value)
    assert "\n" not in message
    return message


def test_missing_and_unreadable_images_are_refused(small):
    train = llava(small["train"])
    train[1]["image"] = "img/nowhere.png"
    train[4]["image"] = "img/broken.png"
    (small["dir"] / "img" / "broken.png").write_bytes(b"not a png")
    del train[5]["image"]
    message = refuse(small, train, llava(small["test"]))
    assert message.startswith("nothing written; ")
    assert "train.jsonl, 1 of 6 rows: image file not found (c1)" in message
    assert "1 of 6 rows: cannot identify image file (c4)" in message
    assert "1 of 6 rows: no image (c5)" in message


def test_empty_answers_and_questions_are_refused(small):
    train = llava(small["train"])
    for i in (0, 2):
        train[i]["conversations"][1]["value"] = "  "
    train[3]["conversations"][0]["value"] = "<image>\n"
    message = refuse(small, train, llava(small["test"]))
    assert "2 of 6 rows: empty answer (c0, c2)" in message and "1 of 6 rows: empty question (c3)" in message


def test_duplicate_ids_are_refused(small):
    test = llava(small["test"])
    test[2]["id"] = test[3]["id"] = test[1]["id"]
    assert "test.jsonl, 2 of 4 rows: duplicate id (c7, c7)" in refuse(small, llava(small["train"]), test)


def test_rows_in_no_format_are_refused(small):
    train = llava(small["train"])
    train[0] = {"id": "x0", "picture": "img/c0.png", "text": "red"}
    train[1]["conversations"] = train[1]["conversations"][::-1]  # gpt before human
    message = refuse(small, train, llava(small["test"]))
    assert "1 of 6 rows: in none of the formats" in message and "(x0)" in message
    assert "1 of 6 rows: turns do not alternate human/gpt (c1)" in message
    (small["dir"] / "broken.jsonl").write_text('{"id": 1}\nnot json\n')
    with pytest.raises(UserTaskError, match=r"1 of 2 rows: in none of the formats .*\(1\); .*1 of 2 rows: not JSON "
                                             r"\(line 2\)"):
        add_task("mine", small["dir"] / "broken.jsonl", small["dir"] / "broken.jsonl", small["dir"] / "tasks")
    (small["dir"] / "empty.csv").write_text("image,question,answer\n")
    with pytest.raises(UserTaskError, match=r"--test \S+empty.csv: no rows"):
        add_task("mine", small["dir"] / "broken.jsonl", small["dir"] / "empty.csv", small["dir"] / "tasks")
    assert not (small["dir"] / "tasks").exists()


def test_test_images_also_in_train_are_refused_unless_allowed(small):
    train, test = llava(small["train"]), llava(small["test"])
    test[0]["image"], test[2]["image"] = train[3]["image"], train[5]["image"]
    copy = small["dir"] / "img" / "copy.bmp"  # the same pixels in another file format: the same image
    from PIL import Image

    Image.open(small["dir"] / train[0]["image"]).save(copy)
    test[3]["image"] = "img/copy.bmp"
    message = refuse(small, train, test)
    assert "test.jsonl, 3 of 4 rows: image also in train (pass --allow-overlap to keep them) (c6, c8, c9)" in message
    added = add_task("mine", small["dir"] / "train.jsonl", small["dir"] / "test.jsonl", small["dir"] / "tasks",
                     allow_overlap=True)
    assert added.overlap == 3
    assert json.loads((added.folder / user_tasks.MARKER).read_text())["image_overlap"] == {"test_rows": 3,
                                                                                            "allowed": True}


def test_choices_must_hold_the_answer_and_be_on_every_row(small):
    rows = [{"id": r["id"], "image": r["path"], "question": QUESTION, "answer": r["colour"], "choices": COLOURS}
            for r in small["train"]]
    rows[1]["choices"] = ["purple", "orange"]
    rows[2]["choices"] = []
    test = [{**r, "choices": COLOURS} for r in rows[:4]]
    message = refuse(small, rows, [{**r, "id": f"t{i}"} for i, r in enumerate(test)])
    assert "1 of 6 rows: fewer than 2 distinct choices, or the answer is not one of them (c1)" in message
    assert "1 of 6 rows: has no choices, unlike 9 other rows (a task is scored one way) (c2)" in message
    assert "by likelihood" in refuse(small, rows[3:], test[3:], metric="cider")


@pytest.mark.parametrize("name, reason", [
    ("my-task", "use letters, digits and underscores"), ("3tasks", "use letters, digits and underscores"),
    ("forgetbench_lab_color", "the forgetbench_ prefix"), ("mme", "lmms-eval has a built-in task"),
    ("gqa", "lmms-eval has a built-in task"), ("flickr30k_test", "a forgetbench task of that name")])
def test_unsafe_or_taken_names_are_refused(small, name, reason):
    assert reason in refuse(small, llava(small["train"]), llava(small["test"]), name=name)


def test_a_folder_not_written_by_task_add_is_never_touched(small):
    tasks_dir = small["dir"] / "tasks"
    (tasks_dir / "mine").mkdir(parents=True)
    (tasks_dir / "mine" / "notes.txt").write_text("mine")
    assert "not written by forgetbench task add" in refuse(small, llava(small["train"]), llava(small["test"]))
    (tasks_dir / "other.yaml").write_text("task: mine2\ndataset_path: x\n")
    assert "already declares a task of that name" in refuse(small, llava(small["train"]), llava(small["test"]),
                                                            name="mine2")
    assert (tasks_dir / "mine" / "notes.txt").read_text() == "mine"


def test_overwrite_replaces_only_a_task_it_wrote(small):
    tasks_dir = small["dir"] / "tasks"
    first = add_task("mine", write_jsonl(small["dir"] / "a.jsonl", llava(small["train"])),
                     write_jsonl(small["dir"] / "b.jsonl", llava(small["test"])), tasks_dir)
    assert "pass --overwrite" in refuse(small, llava(small["train"]), llava(small["test"]))
    again = add_task("mine", small["dir"] / "a.jsonl", small["dir"] / "b.jsonl", tasks_dir, metric="anls",
                     overwrite=True)
    assert again.folder == first.folder and "process_anls" in again.yaml.read_text()
    assert [p.name for p in tasks_dir.iterdir()] == ["mine"]  # nothing left aside
    (again.folder / "data" / "mine.txt").write_text("a user's file")
    assert "holds files forgetbench did not write (data/mine.txt)" in refuse(
        small, llava(small["train"]), llava(small["test"]), overwrite=True)
    (again.folder / "data" / "mine.txt").unlink()
    inside = again.folder / "data" / "train.parquet"
    with pytest.raises(UserTaskError, match="lies inside"):
        add_task("mine", inside, small["dir"] / "b.jsonl", tasks_dir, overwrite=True)


def test_nothing_is_left_when_the_tasks_folder_was_new(small):
    train = llava(small["train"])
    train[0]["conversations"][1]["value"] = ""
    refuse(small, train, llava(small["test"]), tasks_dir=small["dir"] / "new" / "tasks")
    assert not (small["dir"] / "new").exists()


# -- the command -------------------------------------------------------------------------------------------------------


def test_the_command_prints_the_include_path_and_refuses_in_one_line(small, capsys):
    folder = small["dir"]
    write_jsonl(folder / "train.jsonl", llava(small["train"]))
    write_jsonl(folder / "test.jsonl", llava(small["test"]))
    argv = ["cmd_task", "--train", str(folder / "train.jsonl"), "--test", str(folder / "test.jsonl"),
            "--dir", str(folder / "tasks")]
    assert user_tasks.main(argv) == 0
    out, err = capsys.readouterr()
    assert out == f"{(folder / 'tasks').resolve()}\n"
    assert "lmms-eval --tasks cmd_task --include_path" in err
    assert user_tasks.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("python -m forgetbench.suite.user_tasks: error: ")
    assert "pass --overwrite to replace it" in err


@pytest.mark.slow
def test_the_lmms_eval_command_runs_a_user_task_and_compare_reads_it(user_data, lab_model, tmp_path):
    """The real CLI, as a user types it: ``lmms-eval --tasks NAME --include_path DIR``; then ``forgetbench
    compare`` takes the declared metric, scale and cluster key from the run, unchanged."""
    out = tmp_path / "out"
    run_command([lmms_eval_bin(), "--model", "forgetbench", "--model_args", f"pretrained={lab_model}",
                 "--tasks", "my_llava,my_table,my_captions", "--include_path", str(user_data["dir"]), "--limit", "8",
                 "--batch_size", "8", "--output_path", str(out), "--log_samples"], cwd=tmp_path)
    (results,) = out.glob("*/*_results.json")  # lmms-eval exits 0 even on failure: the file is the proof
    run = json.loads(results.read_text())
    assert run["results"]["my_llava"]["exact_match,none"] >= 0.75
    assert 0 <= run["results"]["my_table"]["acc,none"] <= 1
    report = tmp_path / "report.json"
    run_command([str(Path(sys.executable).parent / "forgetbench"), "compare", "--pre", str(out), "--post", str(out),
                 "--downstream", "my_llava,my_captions", "--upstream", "my_table", "--resamples", "100",
                 "--json", str(report)])
    rows = json.loads(report.read_text())["tasks"]
    assert {task: (r["metric"], r["scale"], r["unit"], r["cluster_key"]) for task, r in rows.items()} == {
        "my_llava": ("exact_match", "fraction", "cluster", "image_hash"),
        "my_captions": ("caption_CIDEr", "cider", "image", "image_hash"),
        "my_table": ("acc", "fraction", "cluster", "image_hash")}
    shutil.rmtree(out)
