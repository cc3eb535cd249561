"""The embedded lab: data, tokenizer, model and the single prompt definition."""

from __future__ import annotations

import pytest

from forgetbench.lab import data
from forgetbench.suite.lab import LAB_TASKS, doc_to_text, to_sft_example


@pytest.mark.parametrize("task", list(LAB_TASKS))
def test_shipped_test_split_is_what_the_generator_makes(task):
    shipped = data.load(task, "test")
    generated = data.generate(task)["test"]
    assert len(shipped) == len(generated)
    assert shipped["id"] == [row["id"] for row in generated]
    assert shipped["answer"] == [row["answer"] for row in generated]
    assert [data._png(row["image"]) for row in shipped.select(range(5))] == [
        data._png(row["image"]) for row in generated[:5]
    ]


@pytest.mark.parametrize("task", list(LAB_TASKS))
def test_splits_are_disjoint_and_answers_are_labels(task):
    train, test = data.load(task, "train"), data.load(task, "test")
    assert not set(train["id"]) & set(test["id"])
    assert set(test["answer"]) == set(LAB_TASKS[task].labels)


def test_digits_are_sklearn_load_digits():
    from sklearn.datasets import load_digits

    digits = load_digits()
    test = data.load("digits", "test")
    assert len(test) + len(data.load("digits", "train")) == len(digits.target) == 1797
    index = int(test[0]["id"].split("-")[1])
    assert test[0]["answer"] == str(digits.target[index])


def test_every_answer_is_one_token(lab_model):
    from transformers import AutoProcessor

    tokenizer = AutoProcessor.from_pretrained(lab_model).tokenizer
    for task in LAB_TASKS.values():
        for label in task.labels:
            assert len(tokenizer.tokenize(" " + label)) == 1, label


def test_training_prompt_is_the_evaluation_prompt(lab_model):
    """TRL renders image+text parts; lmms-eval's llava_hf renders "<image>\\n" + doc_to_text: same text."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(lab_model)
    doc = data.load("digits", "test")[0]
    example = to_sft_example(doc)
    trained = processor.apply_chat_template(example["messages"], tokenize=False)
    evaluated = processor.tokenizer.apply_chat_template(
        [{"role": "user", "content": "<image>\n" + doc_to_text(doc)}], tokenize=False, add_generation_prompt=True
    )
    assert trained == evaluated + " " + doc["answer"] + "</s>\n"
    assert "single digit in 0, 1, 2, 3, 4, 5, 6, 7, 8, 9" in evaluated


def test_lab_model_is_a_stock_llava_under_10_mb(lab_model):
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(lab_model)
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert (lab_model / "model.safetensors").stat().st_size < 10 * 2**20
    assert 0.5e6 < sum(p.numel() for p in model.parameters()) < 2e6


# -- the general replay set (--replay_data) ---------------------------------------------------------------------------

def _pixels(image) -> bytes:
    return image.convert("RGB").tobytes()


def test_the_general_replay_set_is_what_the_generator_makes_in_trl_format():
    import datasets

    from forgetbench.lab import general_replay_path

    path = general_replay_path()
    assert path == data.data_dir() / "general_replay.parquet" and path.is_file()
    shipped = datasets.load_dataset("parquet", data_files=str(path), split="train")
    generated = data.general_replay_rows()
    assert len(shipped) == len(generated) == sum(data.GENERAL_SIZES.values()) == 400
    assert shipped["id"] == [row["id"] for row in generated]
    assert shipped["messages"] == [row["messages"] for row in generated]
    assert [_pixels(row["images"][0]) for row in shipped.select(range(5))] == \
        [_pixels(row["images"][0]) for row in generated[:5]]
    assert {kind: shipped["kind"].count(kind) for kind in data.GENERAL_SIZES} == data.GENERAL_SIZES
    for row in generated:  # TRL's vision format: one image, its part, a user question and an assistant answer
        user, assistant = row["messages"]
        assert len(row["images"]) == 1 and [p["type"] for p in user["content"]] == ["image", "text"]
        assert user["role"] == "user" and assistant["role"] == "assistant" and assistant["content"][0]["text"]


def test_the_general_replay_set_asks_no_evaluated_question_and_shows_no_evaluated_image():
    """Apart from the evaluated tasks: none of its questions is a lab task's prompt, and none of its images is
    pixel for pixel an image of any lab split (train or test)."""
    from forgetbench.suite.lab import prompt

    rows = data.general_replay_rows()
    asked = {row["messages"][0]["content"][1]["text"] for row in rows}
    assert not asked & {prompt({"task": task}) for task in LAB_TASKS}
    assert asked >= {data.DESCRIBE, data.POSITION, "Say red.", "Say 7.", "Say four."}
    general = {_pixels(row["images"][0]) for row in rows if row["kind"] != "say"}  # say: a blank canvas
    assert len(general) == sum(n for kind, n in data.GENERAL_SIZES.items() if kind != "say")
    for task in LAB_TASKS:
        for split in ("train", "test"):
            assert not general & {_pixels(image) for image in data.load(task, split)["image"]}, (task, split)
