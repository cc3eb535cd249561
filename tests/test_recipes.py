"""The LoRA recipe: what it trains, what it writes, and that every config parses."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from conftest import REPO

from forgetbench.architectures import LLAVA

CONFIGS = sorted((REPO / "recipes" / "configs").rglob("*.yaml"))


def parse_recipe_args(config: Path, *overrides: str):
    from trl import ModelConfig, ScriptArguments, SFTConfig, TrlParser

    from forgetbench.training import ForgetbenchArguments

    parser = TrlParser((ScriptArguments, SFTConfig, ModelConfig, ForgetbenchArguments))
    return parser.parse_args_and_config(args=["--config", str(config), *overrides])


@pytest.mark.parametrize("config", CONFIGS, ids=[str(c.relative_to(REPO)) for c in CONFIGS])
def test_every_config_parses_and_is_headed_by_its_launch_command(config):
    script_args, training_args, model_args, _ = parse_recipe_args(config, "--output_dir", "unused")
    recipe = config.stem
    assert config.read_text().splitlines()[0] == (
        f"# accelerate launch recipes/{recipe}.py --config {config.relative_to(REPO)}"
    )
    assert (REPO / "recipes" / f"{recipe}.py").is_file()
    assert script_args.dataset_name and model_args.model_name_or_path


def test_one_lora_step_changes_exactly_the_lora_parameters(lab_model, tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import ModelConfig, SFTConfig, SFTTrainer

    from forgetbench.methods import get_method
    from forgetbench.training import load_sft_dataset

    processor = AutoProcessor.from_pretrained(lab_model)
    model = AutoModelForImageTextToText.from_pretrained(lab_model)
    peft_config = get_method("lora").peft_config(LLAVA, ModelConfig(lora_r=4, lora_alpha=8))
    args = SFTConfig(
        output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, learning_rate=1e-2,
        assistant_only_loss=True, save_strategy="no", report_to="none", bf16=False,
        gradient_checkpointing=False, logging_steps=1,
    )
    data = load_sft_dataset("forgetbench_lab_digits").select(range(8))
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=processor,
                         peft_config=peft_config)
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainable = {name for name, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    changed = {name for name, p in trainer.model.named_parameters() if not torch.equal(p, before[name])}

    linear = r"q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj"
    expected = {
        f"base_model.model.model.language_model.layers.{layer}.{block}.{proj}.lora_{ab}.default.weight"
        for layer in range(4)
        for block, projs in (("self_attn", ("q_proj", "k_proj", "v_proj", "o_proj")),
                             ("mlp", ("gate_proj", "up_proj", "down_proj")))
        for proj in projs
        for ab in ("A", "B")
    }
    assert trainable == expected
    assert changed == expected  # two steps: B moves first, then A (its gradient needs B != 0)
    assert all(re.search(linear, name) for name in changed)


def test_recipe_writes_a_merged_checkpoint_and_manifest(lab_model, tmp_path):
    from transformers import AutoModelForImageTextToText

    from forgetbench.training import ForgetbenchArguments, run_recipe

    script_args, training_args, model_args, fb_args = parse_recipe_args(
        REPO / "recipes" / "configs" / "lab" / "lora.yaml",
        "--output_dir", str(tmp_path / "ckpt"), "--max_steps", "3", "--lora_r", "4", "--logging_steps", "1",
    )
    assert isinstance(fb_args, ForgetbenchArguments)
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
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert not list(tmp_path.glob(".*saving"))
