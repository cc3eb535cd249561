"""The recipes: every config parses and names a recipe, every method has a thin recipe, and what a run writes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from conftest import REPO

# The tiny families (tiny_family: a fixture, one folder per family per session) and what a CPU run of a real-model
# config overrides, shared with tests/test_families.py.
from test_families import CPU, DATA, FAMILIES, FAMILY_NAMES, tiny_family  # noqa: F401

from forgetbench.train.architectures import LLAVA

CONFIGS = sorted((REPO / "recipes" / "configs").rglob("*.yaml"))


def parse_recipe_args(config: Path, *overrides: str):
    from trl import ModelConfig, ScriptArguments, SFTConfig, TrlParser

    from forgetbench.train.recipe import ForgetbenchArguments

    parser = TrlParser((ScriptArguments, SFTConfig, ModelConfig, ForgetbenchArguments))
    return parser.parse_args_and_config(args=["--config", str(config), *overrides])


@pytest.mark.parametrize("config", CONFIGS, ids=[str(c.relative_to(REPO)) for c in CONFIGS])
def test_every_config_parses_and_is_headed_by_its_launch_command(config):
    gpu = "lab" not in config.parts
    # A GPU config (bf16) only parses on a machine with one; its shape is what is checked here.
    script_args, training_args, model_args, _ = parse_recipe_args(
        config, "--output_dir", "unused", *(["--bf16", "false"] if gpu else [])
    )
    recipe = config.stem
    assert config.read_text().splitlines()[0] == (
        f"# accelerate launch recipes/{recipe}.py --config {config.relative_to(REPO)}"
    )
    assert (REPO / "recipes" / f"{recipe}.py").is_file()
    assert script_args.dataset_name and model_args.model_name_or_path
    assert gpu or not training_args.gradient_checkpointing  # TRL's default is on; useless on a CPU


def test_every_method_has_a_thin_recipe_and_a_lab_config():
    from forgetbench.train.methods import METHODS

    for method in METHODS:
        recipe = REPO / "recipes" / f"{method}.py"
        code = [line for line in recipe.read_text().split('"""')[2].splitlines() if line.strip()]
        assert code == ["from forgetbench.train import recipe_main", 'if __name__ == "__main__":',
                        f'    recipe_main("{method}")'], recipe
        assert (REPO / "recipes" / "configs" / "lab" / f"{method}.yaml").is_file()
    assert {p.stem for p in (REPO / "recipes").glob("*.py")} - {"__init__"} == set(METHODS)


def test_recipe_writes_a_merged_checkpoint_and_manifest(lab_model, tmp_path):
    from transformers import AutoModelForImageTextToText

    from forgetbench.train.recipe import ForgetbenchArguments, run_recipe

    script_args, training_args, model_args, fb_args = parse_recipe_args(
        REPO / "recipes" / "configs" / "lab" / "lora.yaml",
        "--output_dir", str(tmp_path / "ckpt"), "--max_steps", "3", "--lora_r", "4", "--logging_steps", "1",
    )
    assert isinstance(fb_args, ForgetbenchArguments) and fb_args.method is None  # the recipe sets it
    fb_args.method = "lora"
    out = run_recipe(script_args, training_args, model_args, fb_args)

    manifest = json.loads((out / "forgetbench_manifest.json").read_text())
    # r * (in + out) per adapted linear: attention 4 x (128+128), MLP 2 x (128+256) + (256+128), 4 layers.
    assert manifest["trainable_parameters"] == 4 * 4 * (4 * 256 + 3 * 384) == 34816
    assert manifest["trainable_parameters_by_part"] == {"decoder_layers": 34816}
    assert manifest["method"] == "lora" and manifest["seed"] == 0 and manifest["steps"] == 3
    assert manifest["data"] == {"dataset": "forgetbench_lab_digits", "split": "train", "rows": 1497}
    assert manifest["base_model"] == "forgetbench-lab"

    # Loaded through transformers: on disk, v5 writes LLaVA's legacy key names.
    base = AutoModelForImageTextToText.from_pretrained(lab_model).state_dict()
    merged = AutoModelForImageTextToText.from_pretrained(out).state_dict()
    assert base.keys() == merged.keys()
    differs = {name for name in base if not torch.equal(base[name], merged[name])}
    assert differs and all(re.match(LLAVA.llm_linear, name) for name in differs)
    assert len(manifest["trainable_parameter_names"]) == 4 * 7 * 2 and manifest["merged"] is True
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert not list(tmp_path.glob(".*saving"))


def test_suite_task_trains_from_a_local_copy_with_its_evaluation_prompt(tmp_path):
    """A suite task name plus --data_files: the rows TRL trains on carry the very question lmms-eval asks."""
    from forgetbench import suite
    from forgetbench.suite import fixtures
    from forgetbench.train.recipe import load_sft_dataset

    files = fixtures.pathvqa(tmp_path, "train")
    rows = load_sft_dataset("forgetbench_pathvqa", "train", data_files=str(files))
    docs = suite.load_split("forgetbench_pathvqa", "train", data_files=str(files))
    assert len(rows) == len(docs) == 8
    user, assistant = rows[0]["messages"]
    assert [part["type"] for part in user["content"]] == ["image", "text"]
    asked_in_evaluation = suite.task_config("forgetbench_pathvqa")["doc_to_text"](docs[0])
    assert user["content"][1]["text"] == asked_in_evaluation
    assert assistant["content"][0]["text"] == docs[0]["answer"]
    with pytest.raises(ValueError, match="is not one"):
        load_sft_dataset("forgetbench_lab_digits", data_files=str(files))


def test_qlora_trains_the_lab_and_merges_into_the_full_precision_base(lab_model, tmp_path):
    """The lab's every LLM linear is a whole number of bitsandbytes blocks wide, so QLoRA trains it on any CPU."""
    from forgetbench.train.recipe import run_recipe

    args = parse_recipe_args(REPO / "recipes" / "configs" / "lab" / "qlora.yaml", "--output_dir", str(tmp_path / "q"),
                             "--max_steps", "2", "--lora_r", "2", "--per_device_train_batch_size", "4")
    args[3].method = "qlora"
    out = run_recipe(*args)
    manifest = json.loads((out / "forgetbench_manifest.json").read_text())
    assert manifest["steps"] == 2 and manifest["quantization"].startswith("bitsandbytes 4-bit")
    assert manifest["merge"] == "adapter merged into a full-precision reload of the base"


def test_qlora_refuses_a_layer_narrower_than_the_quantization_block_before_training(tmp_path, capsys):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    from forgetbench.train import recipe_main

    narrow = tmp_path / "narrow"
    text = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    LlavaConfig(vision_config=CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_attention_heads=2),
                text_config=text,
                architectures=["LlavaForConditionalGeneration"]).save_pretrained(narrow)
    with pytest.raises(SystemExit) as exit_info:
        recipe_main("qlora", ["--config", str(REPO / "recipes" / "configs" / "lab" / "qlora.yaml"),
                              "--model_name_or_path", str(narrow), "--output_dir", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1] == (
        f"recipes/qlora.py: error: --model_name_or_path {narrow}: model.language_model.layers.0.self_attn.q_proj has "
        "32 input features, not a multiple of bitsandbytes' 64-value 4-bit block, so its CPU kernels cannot run it; "
        "fix: use recipes/lora.py (LoRA without quantization) or a GPU")
    assert not (tmp_path / "out").exists()


def test_the_check_step_needs_no_model_and_yields_the_rows_the_run_trains_on(monkeypatch):
    from forgetbench.checkpoint import lab_base_model_path
    from forgetbench.train import recipe

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(recipe, "load_model", no_model)
    args = parse_recipe_args(REPO / "recipes" / "configs" / "lab" / "lora.yaml", "--output_dir", "unused",
                             "--replay_tasks", "forgetbench_lab_color", "--replay_ratio", "0.25")
    args[3].method = "lora"
    checked = recipe.check(recipe.Args(*args))
    assert checked.method.name == "lora" and checked.model_path == str(lab_base_model_path().resolve())
    assert (checked.resume, checked.probe, checked.skipped, checked.remote_code) == (None, None, [], False)
    # replay's share of one pass over the 1,497 target rows: ceil(1497 * 0.25 / 0.75) = 499
    assert checked.mitigations.records == {"replay": {"rows": {"target": 1497, "forgetbench_lab_color": 499},
                                                      "data_rows": None}}
    assert len(checked.rows) >= 1497 + 499


def test_ctrl_c_ends_a_recipe_with_one_line_and_status_130(tmp_path, capsys):
    from transformers import TrainerCallback

    from forgetbench.train import recipe_main

    class Interrupt(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            raise KeyboardInterrupt

    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        recipe_main("lora", ["--config", str(REPO / "recipes" / "configs" / "lab" / "lora.yaml"), "--output_dir",
                             str(out), "--max_steps", "2", "--lora_r", "2", "--disable_tqdm", "true"],
                   callbacks=[Interrupt()])
    assert exit_info.value.code == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == "recipes/lora.py: interrupted; rerun to continue"
    assert not (out / "forgetbench_manifest.json").exists()


# -- a user's own data (forgetbench task add) through the recipe ------------------------------------------------------

def colour_task(folder: Path, name: str = "my_colours", train: int = 20, test: int = 8) -> Path:
    """A user task written by ``forgetbench task add`` from a JSONL table of drawn coloured shapes: the lab model's
    own colour question, ``train`` + ``test`` rows. Returns the tasks folder."""
    import numpy as np

    from forgetbench.lab.data import RGB, SHAPES, draw_shape
    from forgetbench.suite.user_tasks import add_task

    (folder / "img").mkdir(parents=True)
    rows = []
    for i in range(train + test):
        colour = list(RGB)[i % len(RGB)]
        draw_shape(SHAPES[i % len(SHAPES)], colour, np.random.default_rng(100 + i)).save(folder / "img" / f"{i}.png")
        rows.append({"id": f"c{i}", "image": f"img/{i}.png", "answer": colour,
                     "question": "What colour is the shape? Answer with one word."})
    for split, part in (("train", rows[:train]), ("test", rows[train:])):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in part))
    add_task(name, folder / "train.jsonl", folder / "test.jsonl", folder / "tasks", instruction="")
    return folder / "tasks"


def test_a_user_task_trains_through_the_recipe_and_the_probe_scores_it(tmp_path, capsys):
    """--dataset_name NAME --tasks_dir DIR trains on the user task's rows, asked with its evaluation prompt; the probe
    takes it as the downstream task, and a group name (--probe_tasks forgetbench_lab_upstream) as the group's
    tasks; the manifest names the task and its folder."""
    from transformers import TrainerCallback

    from forgetbench import suite
    from forgetbench.suite import user_tasks
    from forgetbench.train import recipe_main

    tasks_dir = colour_task(tmp_path)

    class KeepRows(TrainerCallback):
        def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
            self.messages = train_dataloader.dataset["messages"]

    kept, out = KeepRows(), tmp_path / "out"
    recipe_main("lora", ["--config", str(REPO / "recipes" / "configs" / "lab" / "lora.yaml"), "--output_dir", str(out),
                         "--dataset_name", "my_colours", "--tasks_dir", str(tasks_dir), "--max_steps", "2",
                         "--lora_r", "2", "--per_device_train_batch_size", "4", "--disable_tqdm", "true",
                         "--probe_every", "2", "--probe_limit", "4", "--probe_tasks", "forgetbench_lab_upstream"],
                callbacks=[kept])
    manifest = json.loads((out / "forgetbench_manifest.json").read_text())
    assert manifest["data"] == {"dataset": "my_colours", "split": "train", "rows": 20,
                                "tasks_dir": str(tasks_dir.resolve())}
    assert manifest["steps"] == 2
    docs = user_tasks.load_split("my_colours", "train", tasks_dir)
    asked = [next(p["text"] for p in m[0]["content"] if p["type"] == "text") for m in kept.messages]
    assert asked == [user_tasks.doc_to_text(doc) for doc in docs]  # the evaluation prompt, every row
    assert [m[1]["content"][0]["text"] for m in kept.messages] == docs["answer"]
    probe = manifest["probe"]
    assert probe["tasks"] == {"downstream": ["my_colours"],
                              "upstream": list(suite.GROUPS["forgetbench_lab_upstream"])}
    assert probe["probes"] == 2 and probe["last"]["step"] == 2 and probe["last"]["E"] is not None
    lines = [json.loads(line) for line in (out / "forgetting_probe.jsonl").read_text().splitlines()]
    assert set(lines[0]["scores"]) == {"my_colours", *suite.GROUPS["forgetbench_lab_upstream"]}
    # The lab model answers colour questions: its step-0 score on the user task is real, not 0 by a broken scorer.
    assert lines[0]["scores"]["my_colours"] > 50


@pytest.mark.parametrize(("flags", "message"), [
    (["--dataset_name", "my_colour"], "--dataset_name my_colour: cannot load (split train): "),
    (["--tasks_dir", "{tmp}/nowhere"], "--tasks_dir {tmp}/nowhere: no such folder (the --dir of forgetbench task add)"),
    (["--probe_every", "1", "--probe_tasks", "my_colour"],
     "--probe_tasks my_colour: not a forgetbench suite task, group, or user task under --tasks_dir {tasks}"),
])
def test_user_task_flags_are_refused_in_one_line_before_the_model_loads(flags, message, tmp_path, capsys,
                                                                          monkeypatch):
    from forgetbench.train import recipe, recipe_main

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded for input that should have been refused")

    monkeypatch.setattr(recipe, "load_model", refuse)
    tasks_dir = colour_task(tmp_path, train=3, test=2)
    given = {"tmp": str(tmp_path), "tasks": str(tasks_dir.resolve())}
    with pytest.raises(SystemExit) as exit_info:
        recipe_main("lora", ["--config", str(REPO / "recipes" / "configs" / "lab" / "lora.yaml"),
                             "--output_dir", str(tmp_path / "out"), "--tasks_dir", str(tasks_dir),
                             *[flag.format(**given) for flag in flags]])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("recipes/lora.py: error: " + message.format(**given)), last
    if flags[0] == "--dataset_name":
        assert last.endswith(f"; user tasks under --tasks_dir {tasks_dir}: my_colours")
    assert not (tmp_path / "out").exists()


# -- the loss on the answer only, on the real models' stock templates -------------------------------------------------

# What each family's trained tokens end with under assistant_only_loss: forgetbench's training template for the
# llava-hf stock templates (forgetbench/train/templates.py), TRL's own for Qwen's.
END_OF_TURN = {"llava-1.5": "</s>", "llava-onevision": "<|im_end|>", "qwen2-vl": "<|im_end|>\n",
               "qwen2.5-vl": "<|im_end|>\n"}


def with_stock_template(family: str, tiny: Path, folder: Path) -> Path:
    """A copy of the tiny family's folder whose processor carries the real model's stock chat template."""
    import shutil

    from transformers import AutoProcessor
    from trl.chat_template_utils import qwen2_5_vl_chat_template

    from forgetbench.train.templates import TRAINING_TEMPLATES

    stock = TRAINING_TEMPLATES[family][0] if family in TRAINING_TEMPLATES else qwen2_5_vl_chat_template
    shutil.copytree(tiny, folder)
    processor = AutoProcessor.from_pretrained(tiny)
    processor.chat_template = processor.tokenizer.chat_template = stock
    processor.save_pretrained(folder)
    assert AutoProcessor.from_pretrained(folder).chat_template == stock
    return folder


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_the_real_model_config_trains_the_answer_and_end_of_turn_from_the_stock_template(family, request, tmp_path):
    """recipes/lora.py with the family's real-model config (assistant_only_loss: true), on a tiny model carrying the
    real model's stock template, 1 step: the collated labels are the answer and its end of turn, nothing else; for
    llava-hf's templates the recipe installed forgetbench's training template (the manifest says which), which the
    checkpoint keeps and which renders the evaluation prompt as the stock one does."""
    from transformers import AutoProcessor, TrainerCallback
    from trl import ModelConfig, ScriptArguments, SFTConfig, TrlParser

    from forgetbench.train import ForgetbenchArguments, run_recipe
    from forgetbench.train.templates import TRAINING_TEMPLATES

    model = with_stock_template(family, request.getfixturevalue("tiny_family")(family), tmp_path / "model")

    class KeepBatch(TrainerCallback):
        def on_train_begin(self, args, state, control, train_dataloader=None, processing_class=None, **kwargs):
            self.batch = train_dataloader.collate_fn([train_dataloader.dataset[i] for i in range(2)])
            self.answers = [row["messages"][1]["content"][0]["text"] for row in
                            (train_dataloader.dataset[i] for i in range(2))]

    kept = KeepBatch()
    config = REPO / "recipes" / "configs" / FAMILIES[family].config_folder / "lora.yaml"
    parser = TrlParser((ScriptArguments, SFTConfig, ModelConfig, ForgetbenchArguments))
    args = parser.parse_args_and_config(args=["--config", str(config), "--model_name_or_path", str(model),
                                              "--max_steps", "1", "--output_dir", str(tmp_path / "out"), *CPU, *DATA])
    assert args[1].assistant_only_loss is True  # the generated config's value
    args[3].method = "lora"
    out = run_recipe(*args, callbacks=[kept])
    manifest = json.loads((out / "forgetbench_manifest.json").read_text())
    assert manifest["assistant_only_loss"] is True and manifest["steps"] == 1
    assert manifest["training_template"] == (family if family in TRAINING_TEMPLATES else None)
    tokenizer = AutoProcessor.from_pretrained(model).tokenizer
    space = " " if family == "llava-1.5" else ""
    for row, answer in enumerate(kept.answers):
        ids, labels = kept.batch["input_ids"][row], kept.batch["labels"][row]
        assert ids[labels != -100].tolist() == tokenizer(space + answer + END_OF_TURN[family],
                                                         add_special_tokens=False)["input_ids"]
    if family in TRAINING_TEMPLATES:
        stock, training = TRAINING_TEMPLATES[family]
        saved = AutoProcessor.from_pretrained(out)
        assert saved.chat_template == training
        user = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q?"}]}]
        assert saved.apply_chat_template(user, add_generation_prompt=True, tokenize=False) == \
            saved.apply_chat_template(user, add_generation_prompt=True, tokenize=False, chat_template=stock)
