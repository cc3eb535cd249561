"""Every supported family end to end on a CPU: a tiny random-init model saved with its family's real processor
classes (forgetbench/lab/families.py), trained on the answer only, by the recipes, and evaluated by lmms-eval's own
wrapper for the family and by ``--model forgetbench`` (docs/methods.md, "Every family end to end")."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from conftest import REPO

import forgetbench
from forgetbench.lab import data
from forgetbench.lab.families import FAMILIES, build_tiny_family
from forgetbench.suite.lab import LAB_TASKS, doc_to_text

FAMILY_NAMES = list(FAMILIES)


@pytest.fixture(scope="session")
def tiny_family(tmp_path_factory):
    """One folder per family, built once per session: ``tiny_family(name) -> Path``."""
    root = tmp_path_factory.mktemp("families")
    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            built[name] = build_tiny_family(name, root / name)
        return built[name]

    return get


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads, and several of them on two shared cores lose a lot."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# What a CPU run of a real-model config overrides: the model, the steps, the folder, CPU settings, and the data (the
# configs name an example hub data set; the lab's digits task has local data).
# float32: a CPU run's weights (the configs load bfloat16 for GPUs, where 3 LoRA steps would round away in a merge).
CPU = ["--use_cpu", "true", "--bf16", "false", "--gradient_checkpointing", "false", "--dtype", "float32"]
DATA = ["--dataset_name", "forgetbench_lab_digits"]
RECIPES = sorted(p.stem for p in (REPO / "recipes").glob("*.py") if p.stem != "__init__")
# The default suite trains lora, full_st and qlora on every family (about a second each); `-m slow` the other
# eight recipes. Each family's evaluation reads one of these checkpoints.
DEFAULT_METHODS = ("lora", "full_st", "qlora")
EVALUATED = {"llava-1.5": "qlora", "llava-onevision": "full_st", "qwen2-vl": "lora", "qwen2.5-vl": "full_st"}


def run_family_recipe(method: str, family: str, model: Path, out: Path, *extra: str) -> Path:
    """recipes/<method>.py's run (forgetbench.train.run_recipe) on the family's real-model config, cut to 3 steps
    on a CPU."""
    from trl import ModelConfig, ScriptArguments, SFTConfig, TrlParser

    from forgetbench.train import ForgetbenchArguments, run_recipe

    config = REPO / "recipes" / "configs" / FAMILIES[family].config_folder / f"{method}.yaml"
    parser = TrlParser((ScriptArguments, SFTConfig, ModelConfig, ForgetbenchArguments))
    args = parser.parse_args_and_config(args=["--config", str(config), "--model_name_or_path", str(model),
                                              "--max_steps", "3", "--output_dir", str(out), *CPU, *DATA, *extra])
    args[3].method = method  # as recipes/<method>.py sets it
    return run_recipe(*args)


@pytest.fixture(scope="session")
def trained(tiny_family, tmp_path_factory):
    """``trained(family, method) -> Path``: the recipe's merged checkpoint, trained once per session."""
    root = tmp_path_factory.mktemp("trained")
    done: dict[tuple, Path] = {}

    def get(family: str, method: str) -> Path:
        if (family, method) not in done:
            done[family, method] = run_family_recipe(method, family, tiny_family(family), root / f"{family}-{method}")
        return done[family, method]

    return get


def color_docs(n: int = 2):
    return data.load("color", "test").select(range(n))


def conversation(doc, answer: str | None = None) -> list[dict]:
    """One row in TRL's vision format: the image and question as parts, the answer as the assistant's turn."""
    user = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": doc_to_text(doc)}]}
    answer = doc["answer"] if answer is None else answer
    return [user, {"role": "assistant", "content": [{"type": "text", "text": answer}]}]


# -- 1. the folder ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_folder_loads_as_the_family_with_token_ids_from_its_tokenizer(family, tiny_family):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    spec = FAMILIES[family]
    path = tiny_family(family)
    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path)
    tokenizer = processor.tokenizer
    assert type(model).__name__ == spec.model_class
    assert type(processor).__name__ == spec.processor_class
    assert type(processor.image_processor).__name__ == spec.image_processor_class
    config = model.config
    image_id = getattr(config, "image_token_id", None)
    assert image_id == tokenizer.convert_tokens_to_ids(spec.image_token) == processor.image_token_id
    assert tokenizer.convert_ids_to_tokens(image_id) == spec.image_token
    if spec.video_token:
        assert config.video_token_id == tokenizer.convert_tokens_to_ids(spec.video_token) == processor.video_token_id
    if family.startswith("qwen"):
        assert tokenizer.convert_ids_to_tokens(config.vision_start_token_id) == "<|vision_start|>"
        assert tokenizer.convert_ids_to_tokens(config.vision_end_token_id) == "<|vision_end|>"
    text = config.get_text_config()
    assert tokenizer.convert_ids_to_tokens(text.eos_token_id) == tokenizer.eos_token == spec.eos_token
    assert tokenizer.convert_ids_to_tokens(text.pad_token_id) == tokenizer.pad_token == spec.pad_token
    assert text.bos_token_id == tokenizer.bos_token_id  # None for the Qwen tokenizers, as theirs
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    assert text.vocab_size >= len(tokenizer) and text.vocab_size % 64 == 0
    # Every LLM linear is a whole number of bitsandbytes' 64-value blocks wide (QLoRA on any CPU).
    linears = [m for name, m in model.named_modules() if ".language_model.layers." in name
               and isinstance(m, torch.nn.Linear)]
    assert linears and all(m.in_features % 64 == 0 and m.out_features % 64 == 0 for m in linears)
    assert sum(p.numel() for p in model.parameters()) < 300_000
    assert re.search(r"\{%-?\s*generation\s*-?%\}", processor.chat_template)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_training_text_starts_with_the_evaluation_prompt(family, tiny_family):
    """What TRL trains on (image and question as parts, then the answer) begins with the prompt ``--model
    forgetbench`` generates from; for the LLaVA families also with what lmms-eval's ``llava_hf`` renders (the
    question as a plain string after "<image>\\n")."""
    from transformers import AutoProcessor

    from forgetbench.evaluate.model import ImageTextModel

    processor = AutoProcessor.from_pretrained(tiny_family(family))
    doc = color_docs(1)[0]
    trained = processor.apply_chat_template(conversation(doc), tokenize=False)
    wrapper = ImageTextModel.__new__(ImageTextModel)  # only its prompt(): no model needed
    wrapper.processor = processor
    prompt = wrapper.prompt(doc_to_text(doc), 1)
    end_of_turn = FAMILIES[family].end_of_turn
    assert trained.startswith(prompt)
    assert trained[len(prompt):].strip() == doc["answer"] + end_of_turn
    if FAMILIES[family].lmms_eval_model == "llava_hf":
        plain = processor.tokenizer.apply_chat_template(
            [{"role": "user", "content": "<image>\n" + doc_to_text(doc)}], add_generation_prompt=True, tokenize=False)
        assert plain == prompt
    expected = {
        "llava-1.5": f"USER: <image>\n{doc_to_text(doc)} ASSISTANT:",
        "llava-onevision": f"<|im_start|>user <image>\n{doc_to_text(doc)}<|im_end|><|im_start|>assistant\n",
        "qwen2-vl": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                    f"<|vision_start|><|image_pad|><|vision_end|>{doc_to_text(doc)}<|im_end|>\n<|im_start|>assistant\n",
    }
    assert prompt == expected.get(family, expected["qwen2-vl"])


def test_lab_tiny_command_builds_a_folder(tmp_path, capsys):
    import argparse

    from forgetbench.lab.families import FamilyError, configure_tiny, run_tiny

    parser = argparse.ArgumentParser(prog="forgetbench lab tiny")
    configure_tiny(parser)
    args = parser.parse_args(["--family", "qwen2.5-vl", "--out", str(tmp_path / "q")])
    assert run_tiny(args) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "q")
    config = json.loads((tmp_path / "q" / "config.json").read_text())
    assert config["architectures"] == ["Qwen2_5_VLForConditionalGeneration"]
    assert not list(tmp_path.glob(".*saving"))  # written all or nothing
    with pytest.raises(SystemExit):
        parser.parse_args(["--family", "idefics9", "--out", str(tmp_path)])
    with pytest.raises(FamilyError, match="--family idefics9: unknown; known: llava-1.5, llava-onevision"):
        build_tiny_family("idefics9", tmp_path / "x")


# -- 2. loss on the answer only ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_sft_labels_cover_the_answer_and_end_of_turn_only(family, tiny_family, tmp_path):
    """A batch from TRL's own SFTTrainer data collator (assistant_only_loss=True, TRL's vision format): the labels
    that are not -100 are exactly the answer's tokens and the end-of-turn token; no system, user or image token."""
    from datasets import Dataset
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import SFTConfig, SFTTrainer

    path = tiny_family(family)
    processor = AutoProcessor.from_pretrained(path)
    docs = color_docs(2)
    answers = ["red", "a green square"]  # one word, and several
    train = Dataset.from_dict({"images": [[doc["image"].convert("RGB")] for doc in docs],
                               "messages": [conversation(doc, a) for doc, a in zip(docs, answers, strict=True)]})
    args = SFTConfig(output_dir=str(tmp_path), assistant_only_loss=True, use_cpu=True, bf16=False,
                     gradient_checkpointing=False, report_to="none", max_length=None)
    trainer = SFTTrainer(model=AutoModelForImageTextToText.from_pretrained(path), args=args, train_dataset=train,
                         processing_class=processor)
    batch = trainer.data_collator([train[0], train[1]])
    tokenizer = processor.tokenizer
    spec = FAMILIES[family]
    space = " " if family == "llava-1.5" else ""  # "ASSISTANT: answer</s>": the space is the answer's first byte
    image_id = processor.image_token_id
    for row, answer in enumerate(answers):
        ids, labels = batch["input_ids"][row], batch["labels"][row]
        trained = (labels != -100).nonzero().flatten().tolist()
        assert trained == list(range(trained[0], trained[-1] + 1))  # one span
        expected = tokenizer(space + answer + spec.end_of_turn, add_special_tokens=False)["input_ids"]
        assert labels[trained].tolist() == ids[trained].tolist() == expected
        assert ids[trained[-1]] == tokenizer.eos_token_id
        assert (ids == image_id).sum() > 0 and (labels[ids == image_id] == -100).all()
        before = tokenizer.decode(ids[: trained[0]])
        assert doc_to_text(docs[row]) in before and "user" in before.lower()
    # The padded row's padding is not trained either; the loss is finite.
    assert torch.isfinite(trainer.model(**batch).loss)


# -- 5. --model forgetbench on each family --------------------------------------------------------------------------

def _requests(kind: str, docs_by_task: dict, choices: dict | None = None):
    """lmms-eval Instances over ``docs_by_task`` ({task: [doc, ...]}): one generation per document, or one
    likelihood per (document, choice)."""
    from lmms_eval.api.instance import Instance

    def visual(doc):
        return [doc["image"].convert("RGB")]

    requests = []
    for task, docs in docs_by_task.items():
        for doc_id, doc in enumerate(docs):
            context = doc_to_text(doc)
            if kind == "generate_until":
                arguments = [(context, {"max_new_tokens": 4, "until": ["\n\n"]}, visual, doc_id, task, "test")]
            else:
                arguments = [(context, choice, visual, doc_id, task, "test") for choice in choices[task]]
            for args in arguments:
                requests.append(Instance(kind, args, len(requests), {"task": task, "doc_id": doc_id, "repeats": 1}))
    return requests


@pytest.fixture(scope="module")
def mixed_docs():
    """Two tasks whose questions differ in length, so a batch of prompts is padded."""
    return {"color": list(color_docs(2)), "count": list(data.load("count", "test").select(range(2)))}


def _wrapper(path, **kwargs):
    from forgetbench.evaluate.model import ImageTextModel

    model = ImageTextModel(pretrained=str(path), device="cpu", **kwargs)
    return model


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_forgetbench_model_batched_equals_unbatched_and_cached_equals_uncached(family, tiny_family, mixed_docs):
    """Generation in batches of 4 (left padding) gives the answers of batch 1; closed-set likelihoods from a cached
    prefix (batches of documents, left padded) equal full sequences scored one at a time within 1e-4, on
    multi-token choices too; and the reference itself is a plain forward pass of the model."""
    path = tiny_family(family)
    labels = {"color": [" " + label for label in LAB_TASKS["color"].labels[:2]] + [" dark red square"],
              "count": [" " + label for label in LAB_TASKS["count"].labels[:2]]}
    one = _wrapper(path, batch_size=1, prefix_cache="False")
    four = _wrapper(path, batch_size=4)
    for wrapper in (one, four):
        wrapper.task_dict = {task: {"test": docs} for task, docs in mixed_docs.items()}
    generations = [one.generate_until(_requests("generate_until", mixed_docs)),
                   four.generate_until(_requests("generate_until", mixed_docs))]
    assert generations[0] == generations[1]
    assert len(generations[0]) == 4 and all(isinstance(answer, str) for answer in generations[0])

    reference = [r.text for r in one.loglikelihood(_requests("loglikelihood", mixed_docs, labels))]
    cached = [r.text for r in four.loglikelihood(_requests("loglikelihood", mixed_docs, labels))]
    four.prefix_cache = False
    uncached_batched = [r.text for r in four.loglikelihood(_requests("loglikelihood", mixed_docs, labels))]
    nll = [[value for value, _greedy in results] for results in (reference, cached, uncached_batched)]
    assert len(nll[0]) == 2 * len(labels["color"]) + 2 * len(labels["count"])
    assert nll[1] == pytest.approx(nll[0], abs=1e-4)
    assert nll[2] == pytest.approx(nll[0], abs=1e-4)
    assert [g for _, g in cached] == [g for _, g in reference]
    assert all(0 < value < 100 for value in nll[0])

    # The reference is the model's own forward pass over prompt + continuation (one document, one choice).
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    doc = mixed_docs["color"][1]
    prompt = one.prompt(doc_to_text(doc), 1)
    choice = labels["color"][-1]
    n = len(processor.tokenizer(prompt + choice, add_special_tokens=False)["input_ids"]) - len(
        processor.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    inputs = processor(text=[prompt + choice], images=[doc["image"].convert("RGB")], return_tensors="pt")
    with torch.no_grad():
        log_probs = torch.log_softmax(model(**inputs).logits[0].float(), dim=-1)
    targets = inputs["input_ids"][0, -n:]
    direct = -log_probs[-n - 1 : -1].gather(-1, targets[:, None]).sum().item()
    assert nll[0][len(labels["color"]) + len(labels["color"]) - 1] == pytest.approx(direct, abs=1e-4)


@pytest.mark.parametrize("family", ["qwen2-vl", "qwen2.5-vl"])
def test_qwen_prefix_positions_are_mrope(family, tiny_family):
    """The cached path places Qwen's tokens with M-RoPE: the image's tokens on their 2x2 grid (height and width
    positions differ), the text after it from the grid's side, not its token count; and with plain 1-D positions
    the cached likelihoods would not equal the full-sequence ones (the test above has teeth)."""
    wrapper = _wrapper(tiny_family(family), batch_size=2)
    doc = color_docs(1)[0]
    inputs = wrapper._encode([wrapper.prompt(doc_to_text(doc), 1)], [doc["image"].convert("RGB")], "left")
    positions = wrapper._prefix_positions(inputs)
    image = (inputs["input_ids"][0] == wrapper.processor.image_token_id).nonzero().flatten()
    assert positions.shape == (3, 1, inputs["input_ids"].shape[1])
    assert len(image) == 4  # a 56x56 image: 4x4 patches of 14, merged 2x2
    grid = positions[:, 0, image]
    assert grid[0].tolist() == [grid[0, 0].item()] * 4  # one time step
    assert grid[1].tolist() != grid[2].tolist()  # rows and columns
    length = inputs["input_ids"].shape[1]
    assert positions[0, 0, -1].item() == length - 1 - 4 + 2  # 4 image tokens take 2 positions (the grid's side)

    from lmms_eval.api.instance import Instance

    wrapper.task_dict = {"color": {"test": [doc]}}
    labels = [" " + label for label in LAB_TASKS["color"].labels]
    requests = _requests("loglikelihood", {"color": [doc]}, {"color": labels})
    assert all(isinstance(r, Instance) for r in requests)
    cached = [r.text[0] for r in wrapper.loglikelihood(requests)]

    flat = wrapper._prefix_positions
    wrapper._prefix_positions = lambda inputs: (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    try:
        naive = [r.text[0] for r in wrapper.loglikelihood(requests)]
    finally:
        wrapper._prefix_positions = flat
    assert max(abs(a - b) for a, b in zip(cached, naive, strict=True)) > 0.1  # 1.7 and 2.1 here


# -- 4. lmms-eval's own wrappers and --model forgetbench, through lmms-eval ------------------------------------------

def evaluate(model: str, model_args: str, tasks: list[str], limit: int = 4) -> dict:
    from lmms_eval import evaluator
    from lmms_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(forgetbench.tasks_path()), include_defaults=False)
    return evaluator.simple_evaluate(model=model, model_args=model_args, tasks=tasks, batch_size=1, limit=limit,
                                     task_manager=manager, device="cpu", log_samples=True)


def answers(result: dict, task: str) -> list:
    return [sample["filtered_resps"] for sample in sorted(result["samples"][task], key=lambda s: s["doc_id"])]


def lmms_eval_wrapper_runs(family: str, path: Path) -> dict:
    """lmms-eval's own wrapper for the family evaluates ``path`` on four lab documents."""
    wrapper = FAMILIES[family].lmms_eval_model
    result = evaluate(wrapper, f"pretrained={path},device_map=cpu", ["forgetbench_lab_color"])
    assert result["n-samples"]["forgetbench_lab_color"]["effective"] == 4
    assert len(answers(result, "forgetbench_lab_color")) == 4
    assert result["results"]["forgetbench_lab_color"]["exact_match,none"] is not None
    return result


@pytest.mark.parametrize("family", [
    "qwen2-vl",
    pytest.param("llava-1.5", marks=pytest.mark.slow),
    pytest.param("llava-onevision", marks=pytest.mark.slow),
    pytest.param("qwen2.5-vl", marks=pytest.mark.slow),
])
def test_recipe_output_evaluates_in_lmms_eval_own_wrapper_and_in_forgetbench_model(family, trained):
    """The merged checkpoint a recipe wrote loads in lmms-eval's wrapper for the family (llava_hf, qwen2_vl,
    qwen2_5_vl) and in --model forgetbench, which also scores the closed-set task by likelihood."""
    path = trained(family, EVALUATED[family])
    theirs = lmms_eval_wrapper_runs(family, path)
    ours = evaluate("forgetbench", f"pretrained={path}", ["forgetbench_lab_color", "forgetbench_lab_color_closed"])
    assert ours["n-samples"]["forgetbench_lab_color_closed"]["effective"] == 4
    assert all(len(choices) == len(LAB_TASKS["color"].labels) and all(math.isfinite(nll) for nll, _ in choices)
               for choices in answers(ours, "forgetbench_lab_color_closed"))
    if FAMILIES[family].lmms_eval_model == "llava_hf":  # same prompt, same greedy decoding: the same answers
        assert answers(ours, "forgetbench_lab_color") == answers(theirs, "forgetbench_lab_color")


# -- 3. every recipe trains every family from its real-model config ---------------------------------------------------

RECIPE_CASES = [pytest.param(family, method, marks=() if method in DEFAULT_METHODS else pytest.mark.slow,
                             id=f"{family}-{method}") for family in FAMILY_NAMES for method in RECIPES]


@pytest.mark.parametrize(("family", "method"), RECIPE_CASES)
def test_recipe_trains_the_family_from_its_real_model_config(family, method, trained, tiny_family):
    """recipes/<method>.py with recipes/configs/<the family's real model>/<method>.yaml, overriding only the model,
    3 steps, the output folder, CPU settings and the data: it trains, and the checkpoint loads as the family with
    its processor; the weights that moved belong to the parts the method trains."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from forgetbench.train.architectures import architecture_of

    out = trained(family, method)
    manifest = json.loads((out / "forgetbench_manifest.json").read_text())
    assert manifest["method"] == method and manifest["steps"] == 3
    assert manifest["data"] == {"dataset": "forgetbench_lab_digits", "split": "train", "rows": 1497}
    assert math.isfinite(manifest["final_train_loss"])
    parts = manifest["trainable_parameters_by_part"]
    assert manifest["trainable_parameters"] == sum(parts.values()) > 0
    model = AutoModelForImageTextToText.from_pretrained(out)
    assert type(model).__name__ == FAMILIES[family].model_class
    base_processor = AutoProcessor.from_pretrained(tiny_family(family))
    assert AutoProcessor.from_pretrained(out).chat_template == base_processor.chat_template
    base = AutoModelForImageTextToText.from_pretrained(tiny_family(family)).state_dict()
    tuned = model.state_dict()
    assert base.keys() == tuned.keys()
    moved = {name for name in base if not torch.equal(base[name], tuned[name])}
    if manifest["merged"]:
        arch = architecture_of(model)
        assert moved and {arch.part_of(name) for name in moved} <= set(parts), (method, sorted(moved)[:5])
    else:  # prompt tuning: the top level is the base, the soft prompt is in adapter/
        assert not moved and (out / "adapter" / "adapter_model.safetensors").is_file()


def test_recipe_main_runs_a_real_model_config(tiny_family, tmp_path, capsys):
    """What a user types (accelerate launch recipes/lora.py --config recipes/configs/qwen2-vl-2b/lora.yaml ...)."""
    from forgetbench.train import recipe_main

    config = REPO / "recipes" / "configs" / "qwen2-vl-2b" / "lora.yaml"
    try:
        recipe_main("lora", ["--config", str(config), "--model_name_or_path", str(tiny_family("qwen2-vl")),
                             "--max_steps", "1", "--output_dir", str(tmp_path / "out"), *CPU, *DATA])
    except SystemExit as exc:
        pytest.fail(f"recipe_main exited {exc.code}: {capsys.readouterr().err.strip()}")
    assert (tmp_path / "out" / "forgetbench_manifest.json").is_file()


# -- 3. real models' templates: what trains on the answer only ------------------------------------------------------

def _sft_labels(processor, path: Path, tmp_path: Path, answer: str = "a green square") -> tuple[list[int], list[int]]:
    """(the trained token ids, every token id) of one row collated by TRL's SFTTrainer (assistant_only_loss)."""
    from datasets import Dataset
    from transformers import AutoModelForImageTextToText
    from trl import SFTConfig, SFTTrainer

    doc = color_docs(1)[0]
    train = Dataset.from_dict({"images": [[doc["image"].convert("RGB")]], "messages": [conversation(doc, answer)]})
    args = SFTConfig(output_dir=str(tmp_path), assistant_only_loss=True, use_cpu=True, bf16=False,
                     gradient_checkpointing=False, report_to="none", max_length=None)
    trainer = SFTTrainer(model=AutoModelForImageTextToText.from_pretrained(path), args=args, train_dataset=train,
                         processing_class=processor)
    batch = trainer.data_collator([train[0]])
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    return ids[labels != -100].tolist(), ids.tolist()


@pytest.mark.parametrize("family", ["llava-1.5", "llava-onevision"])
def test_stock_llava_templates_do_not_train_the_stop_token_and_forgetbench_templates_do(family, tiny_family,
                                                                                        tmp_path):
    """llava-hf's stock templates (put on the tiny model's processor) leave the end of turn out of the loss;
    forgetbench/train/templates.py's replacement trains answer + end of turn and renders every prompt as the stock
    template does (what evaluation sends)."""
    from transformers import AutoProcessor

    from forgetbench.train.templates import TRAINING_TEMPLATES, install_training_template, training_chat_template

    stock, training = TRAINING_TEMPLATES[family]
    processor = AutoProcessor.from_pretrained(tiny_family(family))
    processor.chat_template = stock
    tokenizer = processor.tokenizer
    doc = color_docs(1)[0]
    for system in ([], [{"role": "system", "content": [{"type": "text", "text": "Answer briefly."}]}]):
        messages = system + conversation(doc)[:1]
        rendered = [processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False,
                                                  chat_template=template) for template in (stock, training)]
        assert rendered[0] == rendered[1]
    answer = "a green square"
    trained, _ = _sft_labels(processor, tiny_family(family), tmp_path / "stock")
    assert tokenizer.eos_token_id not in trained and tokenizer.decode(trained).strip() == answer
    assert training_chat_template(stock.replace("\n", "\\n")) == (family, training)  # either way of writing it
    assert install_training_template(processor) == family
    assert processor.chat_template == tokenizer.chat_template == training
    trained, every = _sft_labels(processor, tiny_family(family), tmp_path / "forgetbench")
    space = " " if family == "llava-1.5" else ""
    assert trained == tokenizer(space + answer + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    assert install_training_template(processor) is None  # already a training template: left alone
    assert processor.apply_chat_template(conversation(doc, answer), tokenize=False).startswith(
        processor.apply_chat_template(conversation(doc)[:1], add_generation_prompt=True, tokenize=False,
                                      chat_template=stock))


@pytest.mark.parametrize("family", ["qwen2-vl", "qwen2.5-vl"])
def test_trl_patches_the_stock_qwen_template_itself(family, tiny_family, tmp_path):
    """Qwen2-VL's and Qwen2.5-VL's stock template (TRL keeps a byte-identical copy) has no generation block; TRL
    1.16 swaps in its training template, which trains answer + <|im_end|>, so forgetbench leaves it alone."""
    from transformers import AutoProcessor
    from trl.chat_template_utils import qwen2_5_vl_chat_template

    from forgetbench.train.templates import install_training_template

    processor = AutoProcessor.from_pretrained(tiny_family(family))
    processor.chat_template = processor.tokenizer.chat_template = qwen2_5_vl_chat_template
    assert install_training_template(processor) is None
    doc = color_docs(1)[0]
    ours = AutoProcessor.from_pretrained(tiny_family(family))
    assert processor.apply_chat_template(conversation(doc)[:1], add_generation_prompt=True, tokenize=False) == \
        ours.apply_chat_template(conversation(doc)[:1], add_generation_prompt=True, tokenize=False)
    trained, _ = _sft_labels(processor, tiny_family(family), tmp_path)
    tokenizer = processor.tokenizer
    assert trained == tokenizer("a green square<|im_end|>\n", add_special_tokens=False)["input_ids"]


# -- 7. the GPU smoke benchmark and the real-size builds it uses ------------------------------------------------------

def _gpu_smoke():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_smoke", REPO / "benchmarks" / "gpu_smoke.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("family", "parameters", "image_tokens"), [
    ("llava-onevision", 908_857_712, 1485),  # SigLIP so400m at 384 px: 729 base + 729 tile + 27 newlines
    ("qwen2-vl", 2_208_985_600, 256),  # 448x448: 32x32 patches of 14, merged 2x2
])
def test_real_size_builds_have_the_real_models_shapes(family, parameters, image_tokens):
    """The GPU benchmark's models: LLaVA-OneVision-0.5B and Qwen2-VL-2B at their real sizes (built on the meta
    device here: shapes, no memory), their processors at the real image sizes."""
    from forgetbench.lab.families import FamilyError, build_model, build_processor, build_tokenizer

    spec = FAMILIES[family]
    tokenizer = build_tokenizer(spec)
    model = build_model(spec, tokenizer, "real", device="meta")
    assert type(model).__name__ == spec.model_class
    assert sum(p.numel() for p in model.parameters()) == parameters
    assert model.config.get_text_config().vocab_size == 151936
    assert model.config.image_token_id == tokenizer.convert_tokens_to_ids(spec.image_token)
    processor = build_processor(spec, tokenizer, "real")
    doc = color_docs(1)[0]
    prompt = processor.apply_chat_template(conversation(doc)[:1], add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[prompt], images=[doc["image"].convert("RGB")], return_tensors="pt")
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == image_tokens
    with pytest.raises(FamilyError, match="--size real: written here for llava-onevision, qwen2-vl only"):
        build_model(FAMILIES["llava-1.5"], tokenizer, "real", device="meta")


def test_gpu_smoke_refuses_a_machine_without_cuda_in_one_line(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _gpu_smoke().main([]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_smoke.py: error: no CUDA GPU here")


@pytest.mark.slow
def test_gpu_smoke_runs_its_whole_path_on_the_tiny_families(capsys):
    """`python benchmarks/gpu_smoke.py --tiny`: the benchmark's own code (build, three recipes per family, the
    evaluations) on the tiny families on a CPU; stdout is one JSON object."""
    threads = torch.get_num_threads()
    try:
        assert _gpu_smoke().main(["--tiny", "--eval-docs", "2"]) == 0
    finally:
        torch.set_num_threads(threads)
    report = json.loads(capsys.readouterr().out)
    assert report["size"] == "tiny" and set(report["families"]) == {"llava-onevision", "qwen2-vl"}
    for entry in report["families"].values():
        assert set(entry["train"]) == {"lora", "qlora", "full_st"}
        for result in entry["train"].values():
            assert result["steps"] == 3 and result["seconds_per_step"] > 0
            assert result["samples_per_second"] == pytest.approx(16 / result["seconds_per_step"], rel=0.01)
        for kind in ("forgetbench_generation", "forgetbench_likelihood"):
            assert entry["evaluate"][kind]["documents"] == 2 and entry["evaluate"][kind]["seconds"] > 0


# -- 6. InstructBLIP: not a supported family, for reasons outside forgetbench ----------------------------------------

@pytest.fixture(scope="session")
def tiny_instructblip(tmp_path_factory) -> Path:
    from forgetbench.lab.families import build_tiny_instructblip

    return build_tiny_instructblip(tmp_path_factory.mktemp("instructblip") / "model")


def test_instructblip_is_refused_by_training_and_by_forgetbench_model(tiny_instructblip, tmp_path):
    """No architecture map (so no recipe trains it, in one line before it loads) and no chat template (which
    --model forgetbench renders prompts with, and TRL renders training rows with)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import ModelConfig, ScriptArguments, SFTConfig, TrlParser

    from forgetbench.evaluate.model import ImageTextModel
    from forgetbench.train import ForgetbenchArguments, RecipeError, run_recipe
    from forgetbench.train.architectures import ARCHITECTURES

    assert type(AutoModelForImageTextToText.from_pretrained(tiny_instructblip)).__name__ == \
        "InstructBlipForConditionalGeneration"
    assert AutoProcessor.from_pretrained(tiny_instructblip).chat_template is None
    assert not any("Blip" in name for name in ARCHITECTURES)
    parser = TrlParser((ScriptArguments, SFTConfig, ModelConfig, ForgetbenchArguments))
    args = parser.parse_args_and_config(args=[
        "--config", str(REPO / "recipes" / "configs" / "lab" / "lora.yaml"), "--model_name_or_path",
        str(tiny_instructblip), "--output_dir", str(tmp_path / "out")])
    args[3].method = "lora"
    with pytest.raises(RecipeError, match="architecture InstructBlipForConditionalGeneration has no forgetbench "
                                          "architecture map"):
        run_recipe(*args)
    with pytest.raises(ValueError, match="its processor has no chat template"):
        ImageTextModel(pretrained=str(tiny_instructblip), device="cpu")


def test_lmms_eval_instructblip_wrapper_answers_begin_with_the_question(tiny_instructblip):
    """lmms-eval 0.7.3's `instructblip` wrapper runs, but decodes all of generate()'s output, which transformers
    5 begins with the prompt: every answer starts with the question, so exact-match scores are wrong (and it has
    no loglikelihood: closed-set tasks fail). Why the study cannot evaluate InstructBLIP (docs/methods.md)."""
    from lmms_eval.models.simple.instructblip import InstructBLIP

    result = evaluate("instructblip", f"pretrained={tiny_instructblip}", ["forgetbench_lab_color"], limit=2)
    doc = color_docs(1)[0]
    question = doc_to_text(doc)
    assert all(answer[0].startswith(question.replace("<image>", "").strip())
               for answer in answers(result, "forgetbench_lab_color"))
    with pytest.raises(AssertionError, match="not implemented this function for InstructBLIP"):
        InstructBLIP.loglikelihood(None, [])
