"""forgetbench's lmms-eval model on the lab model: batching, likelihoods, adapters."""

from __future__ import annotations

import pytest
import torch

import forgetbench

LAB_GENERATION_TASKS = ["forgetbench_lab_color", "forgetbench_lab_shape", "forgetbench_lab_count",
                        "forgetbench_lab_digits"]


def evaluate(model: str, model_args: str, tasks: list[str], batch_size: int, limit: int) -> dict:
    """lmms-eval's own evaluator, in-process; the model is looked up by name through its registry."""
    from lmms_eval import evaluator
    from lmms_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(forgetbench.tasks_path()), include_defaults=False)
    return evaluator.simple_evaluate(model=model, model_args=model_args, tasks=tasks, batch_size=batch_size,
                                     limit=limit, task_manager=manager, device="cpu", log_samples=True)


def answers(result: dict, task: str) -> list:
    return [sample["filtered_resps"] for sample in sorted(result["samples"][task], key=lambda s: s["doc_id"])]


@pytest.fixture(scope="module")
def batch1(lab_model):
    return evaluate("forgetbench", f"pretrained={lab_model}", LAB_GENERATION_TASKS, 1, 24)


def test_batch_8_answers_equal_batch_1(lab_model, batch1):
    batch8 = evaluate("forgetbench", f"pretrained={lab_model}", LAB_GENERATION_TASKS, 8, 24)
    for task in LAB_GENERATION_TASKS:
        assert answers(batch8, task) == answers(batch1, task), task
    assert batch1["results"]["forgetbench_lab_color"]["exact_match,none"] >= 0.9


def test_answers_equal_lmms_eval_llava_hf(lab_model, batch1):
    """Same prompt, same greedy decoding: the built-in wrapper and ours agree answer for answer."""
    reference = evaluate("llava_hf", f"pretrained={lab_model},device_map=cpu",
                         ["forgetbench_lab_color", "forgetbench_lab_digits"], 1, 24)
    for task in ["forgetbench_lab_color", "forgetbench_lab_digits"]:
        assert answers(batch1, task) == answers(reference, task)


def test_loglikelihood_ranks_agree_with_a_direct_forward_pass(lab_model):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from forgetbench.lab import data
    from forgetbench.suite.lab import LAB_TASKS, doc_to_text

    result = evaluate("forgetbench", f"pretrained={lab_model}",
                      ["forgetbench_lab_color_closed", "forgetbench_lab_digits_closed"], 4, 6)
    processor = AutoProcessor.from_pretrained(lab_model)
    model = AutoModelForImageTextToText.from_pretrained(lab_model).eval()
    for task in ["color", "digits"]:
        docs = data.load(task, "test")
        for sample in result["samples"][f"forgetbench_lab_{task}_closed"]:
            doc = docs[sample["doc_id"]]
            prompt = processor.apply_chat_template(
                [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": doc_to_text(doc)}]}],
                add_generation_prompt=True, tokenize=False,
            )
            direct = []
            for label in LAB_TASKS[task].labels:  # every label is one token: score the last position
                inputs = processor(text=prompt + " " + label, images=[doc["image"].convert("RGB")],
                                   return_tensors="pt")
                with torch.no_grad():
                    log_probs = torch.log_softmax(model(**inputs).logits[0, -2], dim=-1)
                direct.append(-log_probs[inputs["input_ids"][0, -1]].item())
            wrapped = [nll for nll, _greedy in sample["filtered_resps"]]
            assert wrapped == pytest.approx(direct, abs=1e-4)
            assert sorted(range(len(direct)), key=direct.__getitem__) == sorted(
                range(len(wrapped)), key=wrapped.__getitem__)
    assert result["results"]["forgetbench_lab_color_closed"]["acc,none"] == 1.0


def test_adapter_folder_answers_equal_the_merged_checkpoint(lab_model, small_study):
    tasks = ["forgetbench_lab_digits", "forgetbench_lab_color"]
    merged = evaluate("forgetbench", f"pretrained={small_study / 'arms' / 'lora'}", tasks, 8, 24)
    adapter = evaluate("forgetbench", f"pretrained={lab_model},adapter={small_study / 'arms' / 'lora' / 'adapter'}",
                       tasks, 8, 24)
    for task in tasks:
        assert answers(adapter, task) == answers(merged, task)


def test_unknown_model_args_are_refused(lab_model):
    from forgetbench.evaluate.model import ImageTextModel

    with pytest.raises(ValueError, match="unknown model_args: colour"):
        ImageTextModel(pretrained=str(lab_model), colour="red")
