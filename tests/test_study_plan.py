"""The study's plan (issue 20): what each arm trains on, the plan before anything is spent (--dry-run), checkpoints
tuned elsewhere and their lineage, one vocabulary (YAML keys, both spellings, groups), the budget, the CPU
overrides of GPU-profile configs and the refusals. Nothing here trains or evaluates: the real studies with a checkpoint
tuned elsewhere are tests/test_study.py's shared one and tests/test_study_byo.py's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_study_safety import _args, _refusal

from forgetbench import study, suite
from forgetbench.study import plan as planning
from forgetbench.study import steps
from forgetbench.study.plan import DEFAULT_UPSTREAM, INSTRUCTBLIP_REFUSAL

LAB_BASE = Path(study.model_location("forgetbench-lab", None))


def _model(folder: Path, model_type: str = "qwen2_vl", **sizes) -> Path:
    """A model folder as far as planning reads it: its config.json."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {"model_type": model_type, "architectures": ["Qwen2VLForConditionalGeneration"],
              "text_config": {"hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 1024, **sizes}}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_every_arm_trains_on_the_downstream_task_with_its_evaluation_prompt(tmp_path):
    plan = study.plan_from_args(_args("--out", str(tmp_path / "o")))
    assert [a.name for a in plan.arms] == ["lora", "full_st", "top_layers", "full_st+replay"]
    for arm in plan.arms:
        assert arm.train_dataset == "forgetbench_lab_digits"
        assert arm.args[:2] == ("--dataset_name", "forgetbench_lab_digits")
        assert arm.train_dataset_note == ("forgetbench_lab_digits: the downstream task's train split, asked with "
                                          "its evaluation prompt")
    replay = plan.arms[3].args
    assert replay[replay.index("--replay_data") + 1].endswith("tasks/lab/data/general_replay.parquet")
    assert replay[replay.index("--replay_ratio") + 1] == "0.2"
    signature = plan.signature()["arms"][0]
    assert signature["train_dataset"] == "forgetbench_lab_digits" and "checkpoint" not in signature


def test_an_arm_that_names_its_own_data_is_said_so(tmp_path):
    config = tmp_path / "study.yaml"
    config.write_text("arms:\n  mine: {recipe: lora, train_dataset: forgetbench_lab_color}\n"
                      "  flag: {recipe: lora, args: '--dataset_name forgetbench_lab_shape'}\n  plain: {recipe: lora}\n")
    arms = {a.name: a for a in study.plan_from_args(_args("--config", str(config), "--out", str(tmp_path / "o"))).arms}
    assert arms["mine"].train_dataset == "forgetbench_lab_color"
    assert arms["mine"].train_dataset_note == ("forgetbench_lab_color: the arm's own train_dataset (study YAML), "
                                               "not the downstream task")
    assert arms["flag"].train_dataset == "forgetbench_lab_shape"
    assert "not the downstream task" in arms["flag"].train_dataset_note
    assert arms["flag"].args.count("--dataset_name") == 1
    assert arms["plain"].train_dataset == "forgetbench_lab_digits"


def test_refusals_of_the_plan(tmp_path, capsys):
    other = str(_model(tmp_path / "qwen"))
    assert _refusal(capsys, "--model", other, "--out", str(tmp_path / "o")) == (
        f"--model {other}: no downstream task: pass --downstream TASK (a forgetbench task, or a user task from "
        "forgetbench task add with --tasks-dir DIR); the lab's tasks are the lab model's only")
    assert _refusal(capsys, "--downstream", "forgetbench_lab_digits,forgetbench_lab_color", "--upstream",
                    "forgetbench_lab_count", "--out", str(tmp_path / "o")).startswith(
        "--downstream forgetbench_lab_digits,forgetbench_lab_color: a recipe trains on one dataset (--dataset_name)")
    assert _refusal(capsys, "--budget", "0", "--out", str(tmp_path / "o")) == \
        "--budget must be a positive number of points, got 0.0"
    blip = str(_model(tmp_path / "blip", "instructblip"))
    assert _refusal(capsys, "--model", blip, "--downstream", "forgetbench_lab_digits",
                    "--out", str(tmp_path / "o")) == INSTRUCTBLIP_REFUSAL
    assert _refusal(capsys, "--downstream", "ok_vqa_val2014", "--upstream", "forgetbench_lab_color",
                    "--out", str(tmp_path / "o")).startswith(
        "--downstream ok_vqa_val2014: not a forgetbench task nor a user task under --tasks-dir")
    assert not (tmp_path / "o").exists()


def test_another_model_gets_the_papers_upstream_group_and_cpu_overrides(tmp_path, monkeypatch):
    other = _model(tmp_path / "qwen")
    plan = study.plan_from_args(_args("--model", str(other), "--downstream", "forgetbench_lab_digits",
                                      "--out", str(tmp_path / "o")))
    assert plan.upstream == suite.GROUPS[DEFAULT_UPSTREAM] and len(plan.upstream) > 1
    assert [a.name for a in plan.arms] == ["lora", "full_st", "top_layers"]  # the lab's replay is the lab's
    assert plan.device == "cpu"
    lora = plan.arms[0]
    assert lora.config.endswith("recipes/configs/qwen2-vl-2b/lora.yaml")
    assert lora.args == ("--dataset_name", "forgetbench_lab_digits", "--use_cpu", "true", "--bf16", "false",
                         "--fp16", "false", "--gradient_checkpointing", "false", "--dtype", "float32")
    monkeypatch.setattr(planning, "default_device", lambda: "cuda")
    plan = study.plan_from_args(_args("--model", str(other), "--downstream", "forgetbench_lab_digits",
                                      "--out", str(tmp_path / "o")))
    assert plan.device == "cuda" and plan.arms[0].args == ("--dataset_name", "forgetbench_lab_digits")


def test_one_vocabulary_both_spellings_yaml_keys_and_groups(tmp_path):
    a = study.plan_from_args(_args("--batch_size", "3", "--num-processes", "1", "--recipe_args", "--max_steps 2",
                                   "--upstream", "forgetbench_lab_upstream", "--out", str(tmp_path / "o")))
    assert a.batch_size == 3 and a.upstream == tuple(suite.tasks_in_role("upstream", "forgetbench_lab_"))
    assert a.arms[0].args[-2:] == ("--max_steps", "2")
    config = tmp_path / "study.yaml"
    config.write_text("batch_size: 4\nbudget: 3.5\ndevice: cpu\nlimit: 5\nrecipe_args: --max_steps 1\n"
                      f"cache_dir: {tmp_path / 'c'}\nmethods: lora\nupstream: forgetbench_lab_color\n")
    args = _args("--config", str(config), "--out", str(tmp_path / "o"))
    plan = study.plan_from_args(args)
    assert (plan.batch_size, plan.budget, plan.limit, plan.upstream) == (4, 3.5, 5, ("forgetbench_lab_color",))
    assert [a.name for a in plan.arms] == ["lora"] and plan.arms[0].args[-2:] == ("--max_steps", "1")
    assert args.cache_dir == tmp_path / "c"
    assert plan.signature()["budget"] == 3.5
    # the command line wins over the YAML
    assert study.plan_from_args(_args("--config", str(config), "--batch-size", "2", "--out", "o")).batch_size == 2


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, capsys):
    out, cache = tmp_path / "o", tmp_path / "cache"
    assert study.run(_args("--dry-run", "--json", "--limit", "4", "--out", str(out), "--cache-dir", str(cache))) == 0
    described = json.loads(capsys.readouterr().out)
    assert not out.exists() and not cache.exists()
    assert described["model"] == "forgetbench-lab"
    assert described["downstream"] == ["forgetbench_lab_digits"]
    assert described["upstream"] == suite.tasks_in_role("upstream", "forgetbench_lab_")
    assert [a["name"] for a in described["arms"]] == ["lora", "full_st", "top_layers", "full_st+replay"]
    assert described["arms"][0]["train_dataset"] == "forgetbench_lab_digits"
    assert described["arms"][0]["recipe"] == "lora" and described["arms"][0]["config"].endswith("lab/lora.yaml")
    assert described["arms"][3]["replay"]["replay_ratio"] == "0.2"
    assert described["arms"][1]["points"] == ["full_st", "full_st@wise-0.25", "full_st@wise-0.5",
                                              "full_st@wise-0.75"]
    assert described["evaluations"] == 1 + 1 + 4 + 1 + 1
    assert described["baseline"] == "to run"
    assert described["documents_per_evaluation"] == {t: 4 for t in described["downstream"] + described["upstream"]}
    assert study.run(_args("--dry-run", "--out", str(out), "--cache-dir", str(cache))) == 0
    text = capsys.readouterr().out
    assert "forgetbench_lab_digits (300 docs)" in text and "baseline    to run" in text
    assert not out.exists() and not cache.exists()


def _adapter(folder: Path, base: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "base_model_name_or_path": base}))
    (folder / "adapter_model.safetensors").write_bytes(b"")
    return folder


def test_a_checkpoint_tuned_elsewhere_is_evaluated_like_an_arm_after_its_lineage_is_checked(tmp_path, capsys):
    good = _adapter(tmp_path / "good", str(LAB_BASE))
    plan = study.plan_from_args(_args("--checkpoint", f"ext={good}", "--methods", "lora", "--out",
                                      str(tmp_path / "o")))
    ext = plan.arms[1]
    assert (ext.name, ext.recipe, ext.tuned_elsewhere, ext.checkpoint) == ("ext", None, True, str(good))
    assert ext.elsewhere == {"kind": "adapter", "adapter_type": "LORA", "base": str(LAB_BASE),
                             "files": ["adapter_config.json", "adapter_model.safetensors"]}
    assert plan.signature()["arms"][1]["tuned_elsewhere"] is True
    assert steps.points_of(ext, tmp_path / "o") == [("ext", good)]
    command = steps.eval_command(plan, str(LAB_BASE), tmp_path / "e", str(good))
    assert command[command.index("--model_args") + 1] == f"pretrained={LAB_BASE},device=cpu,adapter={good}"
    # only checkpoints: nothing is trained
    only = study.plan_from_args(_args("--checkpoint", f"ext={good}", "--out", str(tmp_path / "o")))
    assert [a.name for a in only.arms] == ["ext"]

    bad = _adapter(tmp_path / "bad", "Qwen/Qwen2-VL-2B-Instruct")
    assert _refusal(capsys, "--checkpoint", f"ext={bad}", "--out", str(tmp_path / "o")) == (
        f"--checkpoint ext={bad}: its adapter_config.json names base_model_name_or_path 'Qwen/Qwen2-VL-2B-Instruct', "
        "the study's base is forgetbench-lab; pass --allow-lineage-mismatch to evaluate it anyway")
    allowed = study.plan_from_args(_args("--checkpoint", f"ext={bad}", "--allow_lineage_mismatch",
                                         "--out", str(tmp_path / "o")))
    assert "lineage_mismatch" in allowed.arms[0].elsewhere

    base = _model(tmp_path / "base")
    merged = _model(tmp_path / "merged", num_hidden_layers=3)
    assert _refusal(capsys, "--model", str(base), "--downstream", "forgetbench_lab_digits", "--checkpoint",
                    f"m={merged}", "--out", str(tmp_path / "o")) == (
        f"--checkpoint m={merged}: its config.json differs from the study's base: num_hidden_layers 3 (base: 2); "
        "pass --allow-lineage-mismatch to evaluate it anyway")
    same = _model(tmp_path / "same")
    plan = study.plan_from_args(_args("--model", str(base), "--downstream", "forgetbench_lab_digits",
                                      "--checkpoint", f"m={same}", "--out", str(tmp_path / "o")))
    assert plan.arms[0].elsewhere["kind"] == "merged" and plan.arms[0].elsewhere["hidden_size"] == 64


@pytest.mark.parametrize("manifest, origin", [
    ({"base_model": None}, "trained from scratch"),  # a copy of a base model's folder, manifest and all
    ({"base_model": "org/other", "base_model_path": "/m/other"}, "tuned from 'org/other'"),
    ({"base_model": "forgetbench-lab"}, None),  # tuned from the study's base: accepted
])
def test_a_checkpoint_whose_own_manifest_names_another_origin_is_refused_before_it_is_evaluated(
        tmp_path, capsys, manifest, origin):
    import shutil

    from forgetbench.checkpoint import MANIFEST_NAME

    merged = Path(shutil.copytree(LAB_BASE, tmp_path / "copy"))
    (merged / MANIFEST_NAME).write_text(json.dumps(manifest))
    argv = ("--checkpoint", f"m={merged}", "--allow-lineage-mismatch", "--out", str(tmp_path / "o"))
    if origin is None:
        assert study.plan_from_args(_args(*argv)).arms[0].checkpoint == str(merged)
    else:  # compare would refuse the pair after the evaluation: no override here
        assert _refusal(capsys, *argv) == (
            f"--checkpoint m={merged}: its {MANIFEST_NAME} says it was {origin}, not tuned from the study's base "
            "forgetbench-lab: compare would refuse to pair it with the baseline")
    # the base's own folder, manifest ("trained from scratch") and all, is the baseline again: accepted
    assert study.plan_from_args(_args("--checkpoint", f"b={LAB_BASE}", "--out", str(tmp_path / "o"))).arms


def test_user_tasks_reach_lmms_eval_and_the_recipe(tmp_path):
    from PIL import Image

    from forgetbench.suite import user_tasks

    rows = []
    for i in range(12):
        Image.new("RGB", (16, 16), (i * 20, 0, 0)).save(tmp_path / f"{i}.png")
        rows.append({"image": f"{i}.png", "question": "Which?", "answer": "red" if i % 2 else "blue"})
    for split, part in (("train", rows[:8]), ("test", rows[8:])):
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    tasks = tmp_path / "tasks"
    user_tasks.add_task("mine", tmp_path / "train.jsonl", tmp_path / "test.jsonl", tasks)
    plan = study.plan_from_args(_args("--tasks_dir", str(tasks), "--downstream", "mine", "--methods", "lora",
                                      "--out", str(tmp_path / "o")))
    assert plan.arms[0].args[:4] == ("--dataset_name", "mine", "--tasks_dir", str(tasks.resolve()))
    command = steps.eval_command(plan, "m", tmp_path / "e")
    assert command[-2:] == ["--include_path", str(tasks.resolve())]
    assert steps._test_rows("mine", plan.tasks_dir) == 4
