"""A recipe's guard rails around what it writes and what it promises (issue 19): an output_dir holding other files,
an output_dir that is a file or the model's own folder, the replay ratio's ceiling, the model path the manifest
stores, and a forgetting budget the probe cannot detect. Every refusal is one line, exit 2, before any model loads,
and writes nothing."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import REPO

from forgetbench.checkpoint import lab_base_model_path

CONFIG = REPO / "recipes" / "configs" / "lab" / "lora.yaml"
QUICK = ["--config", str(CONFIG), "--max_steps", "1", "--lora_r", "2", "--per_device_train_batch_size", "2",
         "--disable_tqdm", "true"]


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.fixture
def no_model_load(monkeypatch):
    from forgetbench.train import recipe

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded for an input that should have been refused")

    monkeypatch.setattr(recipe, "load_model", refuse)


def refused(capsys, argv: list[str], watched: list[Path]) -> str:
    """Run the lora recipe in-process; assert exit 2, one line, nothing new under ``watched``; return the message."""
    from forgetbench.train import recipe_main

    before = {folder: files_under(folder) for folder in watched}
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        recipe_main("lora", argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1, err
    assert {folder: files_under(folder) for folder in watched} == before
    prefix = "recipes/lora.py: error: "
    assert err[0].startswith(prefix), err
    return err[0][len(prefix):]


def config_only_model(folder: Path) -> Path:
    """A LLaVA model folder holding only its config: enough for every check before loading."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    text = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2)
    vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_attention_heads=2)
    LlavaConfig(vision_config=vision, text_config=text,
                architectures=["LlavaForConditionalGeneration"]).save_pretrained(folder)
    return folder


# --- output_dir -----------------------------------------------------------------------------------------------------


def test_an_output_dir_holding_other_files_is_refused(tmp_path, capsys, no_model_load):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "checkpoint-5").mkdir()  # a recipe's own: not named
    message = refused(capsys, [*QUICK, "--output_dir", str(out)], [tmp_path])
    assert message == (f"--output_dir {out}: holds files a recipe did not write (notes.txt); name a new or empty "
                       "folder, or pass --overwrite_output_dir true to write into it anyway")
    for name in "abcd":
        (out / f"{name}.txt").write_text(name)
    message = refused(capsys, [*QUICK, "--output_dir", str(out)], [tmp_path])
    assert "(a.txt, b.txt, c.txt and 2 more)" in message


def test_an_output_dir_that_is_a_file_is_refused(tmp_path, capsys, no_model_load):
    file = tmp_path / "out.txt"
    file.write_text("not a folder")
    message = refused(capsys, [*QUICK, "--output_dir", str(file), "--overwrite_output_dir", "true"], [tmp_path])
    assert message == f"--output_dir {file}: a file, not a folder; name a new or empty folder"


@pytest.mark.parametrize("where", ["equal", "inside", "holding"])
def test_the_model_folder_is_never_an_output_dir(where, tmp_path, capsys, no_model_load):
    model = config_only_model(tmp_path / "model")
    out = {"equal": model, "inside": model / "run", "holding": tmp_path}[where]
    phrase = {"equal": "is the model folder", "inside": "is inside the model folder",
              "holding": "holds the model folder"}[where]
    for extra in ([], ["--overwrite_output_dir", "true"]):  # no switch allows it
        message = refused(capsys, [*QUICK, "--model_name_or_path", str(model), "--output_dir", str(out), *extra],
                          [tmp_path])
        assert message == (f"--output_dir {out}: {phrase} the run loads ({model.resolve()}); the checkpoint would be "
                           "written over the model it is tuned from: name another folder")


def test_the_lab_model_shipped_in_the_package_is_protected_too(capsys, no_model_load):
    lab = lab_base_model_path()
    message = refused(capsys, [*QUICK, "--output_dir", str(lab / "run")], [lab])
    assert message.startswith(f"--output_dir {lab / 'run'}: is inside the model folder the run loads")


def test_what_a_recipe_wrote_itself_is_not_in_the_way(tmp_path):
    """A finished run's folder (its manifest) and an interrupted run's (checkpoints, the probe's log, TensorBoard's
    runs/, TRL's model card) are a recipe's own; the run writes over them without --overwrite_output_dir."""
    from forgetbench.train import RecipeError
    from forgetbench.train.checks import check_output_dir

    model = str(lab_base_model_path())
    interrupted = tmp_path / "interrupted"
    for folder in ("checkpoint-5", "checkpoint-10", "runs"):
        (interrupted / folder).mkdir(parents=True)
    (interrupted / "forgetting_probe.jsonl").write_text("{}\n")
    (interrupted / "README.md").write_text("# Model Card for interrupted\n\nThis model is a fine-tuned version of "
                                           "x.\nIt has been trained using [TRL](https://github.com/huggingface/trl).\n")
    finished = tmp_path / "finished"
    finished.mkdir()
    (finished / "forgetbench_manifest.json").write_text("{}")
    (finished / "model.safetensors").write_bytes(b"weights")
    for out in (interrupted, finished, tmp_path / "new"):
        check_output_dir(str(out), model, overwrite=False)
    (interrupted / "checkpoint-x").mkdir()  # not the Trainer's name
    with pytest.raises(RecipeError, match=r"holds files a recipe did not write \(checkpoint-x\)"):
        check_output_dir(str(interrupted), model, overwrite=False)
    (interrupted / "checkpoint-x").rmdir()
    (interrupted / "README.md").write_text("# my notes\n")  # not TRL's model card
    with pytest.raises(RecipeError, match=r"holds files a recipe did not write \(README.md\)"):
        check_output_dir(str(interrupted), model, overwrite=False)


def test_overwrite_output_dir_writes_beside_other_files_and_the_manifest_stores_absolute_model_paths(
        tmp_path, monkeypatch):
    """--overwrite_output_dir true: the run goes ahead and leaves the other files alone. A relative
    --model_name_or_path folder is stored absolute, so the manifest names the model from any working folder."""
    from forgetbench.train import recipe_main

    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    lab = lab_base_model_path()
    monkeypatch.chdir(lab.parent)
    recipe_main("lora", [*QUICK, "--model_name_or_path", lab.name, "--output_dir", str(out),
                         "--overwrite_output_dir", "true"])
    manifest = json.loads((out / "forgetbench_manifest.json").read_text())
    assert manifest["base_model"] == manifest["base_model_path"] == str(lab.resolve())
    assert (out / "notes.txt").read_text() == "mine" and manifest["steps"] == 1


# --- the config file ------------------------------------------------------------------------------------------------


def test_null_in_a_config_is_a_value_where_the_option_admits_none_and_refused_where_it_needs_one(tmp_path):
    """`max_length: null` (never truncate) is what every generated real-model config says: check_config_file lets
    null through for options whose dataclass field admits None, and refuses it, in one line, where it does not."""
    from trl import ModelConfig, ScriptArguments, SFTConfig, TrlParser

    from forgetbench.train import ForgetbenchArguments, RecipeError
    from forgetbench.train.checks import check_config_file

    parser = TrlParser((ScriptArguments, SFTConfig, ModelConfig, ForgetbenchArguments))
    for config in sorted((REPO / "recipes" / "configs").rglob("*.yaml")):  # all 55 shipped configs
        check_config_file(parser, ["--config", str(config)])
    config = tmp_path / "c.yaml"
    config.write_text("max_length: null\ndataset_config: null\nreplay_data: null\nbf16: null\n")
    check_config_file(parser, ["--config", str(config)])
    for key in ("learning_rate", "per_device_train_batch_size", "top_k"):
        config.write_text(f"max_length: null\n{key}: null\n")
        with pytest.raises(RecipeError, match=rf"^--config {config}: {key}: null \(it needs a value\)$"):
            check_config_file(parser, ["--config", str(config)])


# --- the probe's power against the budget --------------------------------------------------------------------------


def test_the_minimum_detectable_effect_is_the_one_sided_normal_formula():
    from scipy.stats import norm

    from forgetbench.train.probe import limit_needed, minimum_detectable_effect

    z = norm.ppf(0.95) + norm.ppf(0.8)
    # 4 tasks of 32 documents, 10 % flipping by 100 points: sd of F = 100 * sqrt(0.1 / 32 / 4) / 2
    assert minimum_detectable_effect([32] * 4) == pytest.approx(z * 100 * math.sqrt(0.1 * 4 / 32) / 4, rel=1e-9)
    assert minimum_detectable_effect([32, 8]) == pytest.approx(z * 100 * math.sqrt(0.1 * (1 / 32 + 1 / 8)) / 2)
    needed = limit_needed(5.0, [200] * 4)
    assert minimum_detectable_effect([needed] * 4) <= 5.0 < minimum_detectable_effect([needed - 1] * 4)
    assert needed == 62
    # capped by a task's split: 40 documents there, the others make up for it
    capped = limit_needed(5.0, [40, 1000, 1000, 1000])
    assert minimum_detectable_effect([40, capped, capped, capped]) <= 5.0
    assert minimum_detectable_effect([40, capped - 1, capped - 1, capped - 1]) > 5.0


def probe_args(**given):
    return SimpleNamespace(**{"probe_every": 5, "probe_limit": 32, "probe_tasks": None, "forgetting_budget": None,
                              "allow_underpowered_budget": False, **given})


def test_a_budget_the_probe_can_detect_runs_and_an_allowed_one_is_recorded():
    from forgetbench.train.probe import forgetting_probe

    upstream = ["forgetbench_lab_color", "forgetbench_lab_shape", "forgetbench_lab_count", "forgetbench_lab_printed"]
    enough = forgetting_probe(probe_args(forgetting_budget=5.0, probe_limit=62), "forgetbench_lab_digits")
    assert enough.power["underpowered"] is False and enough.power["documents"] == dict.fromkeys(upstream, 62)
    assert enough.power["minimum_detectable_effect"] == pytest.approx(4.994, abs=1e-3)
    allowed = forgetting_probe(probe_args(forgetting_budget=2.0, allow_underpowered_budget=True),
                               "forgetbench_lab_digits")
    assert allowed.manifest_entry()["power"] == {
        "minimum_detectable_effect": 6.95, "documents": dict.fromkeys(upstream, 32), "flip_rate": 0.1, "alpha": 0.05,
        "power": 0.8, "sided": 1, "underpowered": True, "allow_underpowered_budget": True}
    assert forgetting_probe(probe_args(), "forgetbench_lab_digits").manifest_entry()["power"] is None  # no budget
