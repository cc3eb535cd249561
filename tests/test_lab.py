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
