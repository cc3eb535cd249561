"""The recipes: every config parses and names a recipe, every method has a thin recipe, and what a run writes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from conftest import REPO

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
    assert checked.mitigations.records == {"replay": {"target": 1497, "forgetbench_lab_color": 499}}
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
