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


def test_adapter_folder_answers_equal_the_merged_checkpoint(lab_model, lab_study):
    study = lab_study.out
    tasks = ["forgetbench_lab_digits", "forgetbench_lab_color"]
    merged = evaluate("forgetbench", f"pretrained={study / 'arms' / 'lora'}", tasks, 8, 24)
    adapter = evaluate("forgetbench", f"pretrained={lab_model},adapter={study / 'arms' / 'lora' / 'adapter'}",
                       tasks, 8, 24)
    for task in tasks:
        assert answers(adapter, task) == answers(merged, task)


def test_unknown_model_args_are_refused(lab_model):
    from forgetbench.evaluate.model import ImageTextModel

    with pytest.raises(ValueError, match="unknown model_args: colour"):
        ImageTextModel(pretrained=str(lab_model), colour="red")


def test_the_prefix_cache_gives_the_same_likelihoods_and_ranks_as_full_sequences(lab_model):
    """Closed-set scoring from a cached image + question prefix equals scoring every choice in full."""
    tasks = ["forgetbench_lab_shape_closed", "forgetbench_lab_digits_closed"]
    cached = evaluate("forgetbench", f"pretrained={lab_model}", tasks, 4, 8)
    full = evaluate("forgetbench", f"pretrained={lab_model},prefix_cache=False", tasks, 4, 8)
    for task in tasks:
        for a, b in zip(answers(cached, task), answers(full, task), strict=True):
            nll_a, nll_b = [nll for nll, _ in a], [nll for nll, _ in b]
            # Same maths, other kernels (a cached prefix): float32 rounding of sums over ~20-token rows.
            assert nll_a == pytest.approx(nll_b, abs=1e-4)
            assert sorted(range(len(nll_a)), key=nll_a.__getitem__) == sorted(range(len(nll_b)), key=nll_b.__getitem__)
            assert [g for _, g in a] == [g for _, g in b]
        assert cached["results"][task]["acc,none"] == full["results"][task]["acc,none"]


def test_multi_token_choices_score_the_same_with_and_without_the_prefix_cache(lab_model, monkeypatch):
    """Continuations of several tokens (and one whose first token merges with the prompt, scored in full), over
    several passes of choices."""
    from lmms_eval.api.instance import Instance

    from forgetbench.evaluate.model import ImageTextModel

    monkeypatch.setattr(ImageTextModel, "CHOICES_PER_PASS", 2)
    cached = ImageTextModel(pretrained=str(lab_model), batch_size=4)
    full = ImageTextModel(pretrained=str(lab_model), batch_size=4, prefix_cache="False")
    from forgetbench.lab import data

    doc = data.load("shape", "test")[0]
    full.task_dict = cached.task_dict = {"t": {"test": [doc]}}

    def visual(d):
        return [d["image"].convert("RGB")]

    choices = [" circle", " a red square", " triangle triangle", "cross", " 7 dots"]
    requests = [Instance("loglikelihood", ("What shape is in the image?", c, visual, 0, "t", "test"), i,
                         {"task": "t", "doc_id": 0, "repeats": 1}) for i, c in enumerate(choices)]
    a = [r.text for r in cached.loglikelihood(requests)]
    b = [r.text for r in full.loglikelihood(requests)]
    assert [nll for nll, _ in a] == pytest.approx([nll for nll, _ in b], abs=1e-4)
    assert [g for _, g in a] == [g for _, g in b]


def test_an_out_of_memory_batch_is_split_and_later_batches_start_at_the_size_that_fit(lab_model, batch1,
                                                                                       monkeypatch):
    """``batch_size=auto`` starts at max_batch_size and halves on an out-of-memory error; answers do not change."""
    from forgetbench.evaluate import model as wrapper

    sizes = []
    original = wrapper.ImageTextModel._generate_batch

    def tight_memory(self, batch):
        sizes.append(len(batch))
        if len(batch) > 3:  # a GPU that fits 3 rows
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return original(self, batch)

    monkeypatch.setattr(wrapper.ImageTextModel, "_generate_batch", tight_memory)
    result = evaluate("forgetbench", f"pretrained={lab_model},max_batch_size=16", ["forgetbench_lab_color"], "auto",
                      24)
    assert answers(result, "forgetbench_lab_color") == answers(batch1, "forgetbench_lab_color")
    fitted = [size for size in sizes if size <= 3]
    assert sizes[0] == 16 and sum(fitted) == 24  # every document answered once, in batches that fit
    assert sizes[-1] <= 2  # later batches start at the size that fit (16 -> 8 -> 4 -> 2)
