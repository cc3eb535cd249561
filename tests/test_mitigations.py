"""Mitigations of forgetting (forgetbench/train/mitigations/, docs/mitigations.md): the registry, replay, the KL /
L2-SP anchor to the base, WiSE-FT and PEFT adapter merging, on the lab through the recipe and, where a recipe cannot
run (no processor), on a random-init tiny model of every supported family through the functions themselves."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import types

import pytest
import torch
from conftest import REPO
from test_methods import one_thread  # noqa: F401  (the autouse fixture: one torch thread for tiny tensors)
from transformers import AutoModelForImageTextToText, TrainerCallback

from forgetbench.checkpoint import lab_base_model_path
from forgetbench.lab import tiny
from forgetbench.suite import lab
from forgetbench.train.architectures import LLAVA
from forgetbench.train.mitigations import Anchor, MitigationError, main, merge_adapters, wise_ft

ENV_OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}

FAMILIES = ["lab", "llava-1.5", "llava-onevision", "qwen2-vl", "qwen2.5-vl"]
# Short lab runs: no warm-up (the configs' first step has learning rate 0), a log every step.
SHORT = ["--max_steps", "3", "--per_device_train_batch_size", "2", "--logging_steps", "1", "--warmup_steps", "0",
         "--disable_tqdm", "true"]
LLM_LINEAR_WEIGHT = re.compile(LLAVA.llm_linear + r"\.weight")


def lab_run(tmp_path, method: str, *flags: str, name: str = "run", callbacks=()):
    from test_recipes import parse_recipe_args

    from forgetbench.train.recipe import run_recipe

    args = parse_recipe_args(REPO / "recipes" / "configs" / "lab" / f"{method}.yaml",
                             "--output_dir", str(tmp_path / name), *SHORT, *flags)
    args[3].method = method
    out = run_recipe(*args, callbacks=callbacks)
    return out, json.loads((out / "forgetbench_manifest.json").read_text())


def weights(folder) -> dict[str, torch.Tensor]:
    """Loaded through transformers: on disk, v5 writes LLaVA's legacy key names."""
    return AutoModelForImageTextToText.from_pretrained(folder).state_dict()


# --- bad values -----------------------------------------------------------------------------------------------------

REFUSED = [
    ("lora", ["--replay_ratio", "0.2"],
     "--replay_ratio: needs --replay_tasks TASK[,TASK...] or --replay_data PATH (what to replay)"),
    ("lora", ["--replay_tasks", "forgetbench_lab_color"],
     "--replay_tasks: needs --replay_ratio R (the share of replay rows, between 0 and 1)"),
    ("lora", ["--replay_tasks", "forgetbench_lab_colour", "--replay_ratio", "0.2"],
     "--replay_tasks forgetbench_lab_colour: not a forgetbench suite task or group (known: "),
    ("lora", ["--replay_tasks", "forgetbench_lab_digits", "--replay_ratio", "0.2"],
     "--replay_tasks forgetbench_lab_digits: the training task itself (--dataset_name)"),
    ("lora", ["--replay_tasks", "forgetbench_lab_color,forgetbench_lab_color", "--replay_ratio", "0.2"],
     "--replay_tasks forgetbench_lab_color: given twice"),
    ("lora", ["--replay_tasks", "forgetbench_lab_upstream,forgetbench_lab_color", "--replay_ratio", "0.2"],
     "--replay_tasks forgetbench_lab_color: given twice"),
    ("lora", ["--replay_tasks", "forgetbench_lab_downstream", "--replay_ratio", "0.2"],
     "--replay_tasks forgetbench_lab_downstream: its task forgetbench_lab_digits: the training task itself "
     "(--dataset_name)"),
    ("lora", ["--replay_data", "/nonexistent/general.parquet", "--replay_ratio", "0.2"],
     "--replay_data /nonexistent/general.parquet: no such file or folder"),
    ("lora", ["--replay_data", "./general", "--replay_ratio", "0.2"],
     "--replay_data ./general: no such file or folder"),
    ("lora", ["--replay_data", "org/general"], "--replay_data: needs --replay_ratio R (the share of replay rows"),
    ("lora", ["--replay_tasks", "forgetbench_lab_color", "--replay_ratio", "1"],
     "--replay_ratio 1.0: must be between 0 and 1, exclusive (the share of replay rows in the training stream)"),
    ("lora", ["--replay_tasks", "forgetbench_lab_color", "--replay_ratio", "0.95"],
     "--replay_ratio 0.95: at most 0.9 (the stream is about 1/(1-R) times the target data, 20 times at 0.95, against "
     "10 at 0.9)"),
    ("full", ["--kl_weight", "-1"],
     "--kl_weight -1.0: must be a finite number >= 0 (0: log the term, do not train on it)"),
    ("lora", ["--l2sp_weight", "nan"], "--l2sp_weight nan: must be a finite number >= 0"),
    ("lora", ["--wise_alphas", "0.5,1.5"], "--wise_alphas 0.5,1.5: 1.5 is outside [0, 1] (0: the base model, 1: the "
                                           "tuned one)"),
    ("lora", ["--wise_alphas", "0.5,half"], "--wise_alphas 0.5,half: 'half' is not a number"),
    ("lora", ["--wise_alphas", "0.5,0.5"], "--wise_alphas 0.5,0.5: 0.5 is given twice"),
    ("prompt_tuning", ["--wise_alphas", "0.5"], "--wise_alphas: prompt_tuning's soft prompt is not folded into the "
                                                "weights, so there are no tuned weights to interpolate with the base"),
]


@pytest.mark.parametrize(("method", "flags", "message"), REFUSED, ids=[" ".join(f) for _, f, _ in REFUSED])
def test_bad_values_are_refused_in_one_line_before_any_model_is_loaded(method, flags, message, tmp_path, capsys):
    from forgetbench.train import recipe_main

    missing = tmp_path / "no-model"  # loading it would fail: the refusal comes first
    with pytest.raises(SystemExit) as exit_info:
        recipe_main(method, ["--config", str(REPO / "recipes" / "configs" / "lab" / f"{method}.yaml"),
                             "--model_name_or_path", str(missing), "--output_dir", str(tmp_path / "out"), *flags])
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"recipes/{method}.py: error: {message}")
    assert not (tmp_path / "out").exists()


# --- the registry ---------------------------------------------------------------------------------------------------


def test_the_registry_holds_each_mitigation_once_with_the_flags_it_reads():
    import dataclasses

    from forgetbench.train.mitigations import entries
    from forgetbench.train.recipe import ForgetbenchArguments

    found = {entry.name: [option.name for option in entry.options] for entry in entries()}
    assert found == {"replay": ["replay_tasks", "replay_ratio", "replay_data"], "anchor": ["kl_weight", "l2sp_weight"],
                     "wise": ["wise_alphas"]}
    fields = {f.name: f for f in dataclasses.fields(ForgetbenchArguments)}
    for entry in entries():
        for option in entry.options:  # every flag a recipe flag, off by default, with the entry's help
            assert fields[option.name].default is None and fields[option.name].metadata["help"] == option.help
    labels = {entry.name: entry.label for entry in entries()}
    assert labels == {"replay": "", "anchor": "", "wise": "WiSE-FT"}


def test_a_plan_asks_each_entry_and_names_none_in_the_recipe():
    """The recipe's only contact with the mitigations is a Plan: off, it changes nothing; on, the anchor substitutes
    the trainer class and each entry writes its manifest keys."""
    from trl import SFTTrainer

    from forgetbench.train.methods import get_method
    from forgetbench.train.mitigations import anchored_class, plan_mitigations

    def args(**given):
        return types.SimpleNamespace(**{**dict.fromkeys(("replay_tasks", "replay_ratio", "replay_data", "kl_weight",
                                                          "l2sp_weight", "wise_alphas")), **given})

    off = plan_mitigations(args(), get_method("lora"), "forgetbench_lab_digits")
    assert off.active() == [] and off.trainer_class(SFTTrainer) == (SFTTrainer, {})
    assert off.manifest_entry() == {"replay": None, "kl": None, "l2sp": None, "wise": None}
    on = plan_mitigations(args(kl_weight=0.5, wise_alphas="0.25,1", replay_tasks="forgetbench_lab_color",
                               replay_ratio=0.2), get_method("full_st"), "forgetbench_lab_digits")
    assert [entry.name for entry, _ in on.active()] == ["replay", "anchor", "wise"]
    assert on.trainer_class(SFTTrainer) == (anchored_class(SFTTrainer), {"kl_weight": 0.5, "l2sp_weight": None})
    assert issubclass(anchored_class(SFTTrainer), SFTTrainer)
    assert on.manifest_entry() == {
        "replay": {"tasks": ["forgetbench_lab_color"], "ratio": 0.2, "stopping_strategy": "all_exhausted",
                   "rows": None, "data": None, "evaluated_tasks_replayed": ["forgetbench_lab_color"]},
        "kl": {"weight": 0.5, "base": None, "logged": []}, "l2sp": None,
        "wise": {"alphas": [0.25, 1.0], "folders": ["wise-0.25", "wise-1"]}}


def test_extra_points_come_from_the_manifest_through_the_registry(tmp_path):
    from forgetbench.train import extra_points

    run = tmp_path / "run"
    run.mkdir()
    assert extra_points(run) == []  # no manifest: nothing finished here
    wise = {"alphas": [0.25, 0.5], "folders": ["wise-0.25", "wise-0.5"]}
    manifest = {"method": "lora", "mitigations": {"replay": None, "kl": None, "l2sp": None, "wise": wise}}
    (run / "forgetbench_manifest.json").write_text(json.dumps(manifest))
    assert extra_points(run) == [("wise-0.25", run / "wise-0.25"), ("wise-0.5", run / "wise-0.5")]
    (run / "forgetbench_manifest.json").write_text(json.dumps({"method": "lora"}))  # an older manifest
    assert extra_points(run) == []
    manifest["mitigations"]["wise"]["folders"] = ["../elsewhere"]
    (run / "forgetbench_manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(MitigationError, match=r"names '\.\./elsewhere' as a WiSE-FT checkpoint, not a folder inside"):
        extra_points(run)
    (run / "forgetbench_manifest.json").write_text("{not json")
    with pytest.raises(MitigationError, match="cannot read its manifest"):
        extra_points(run)


# A mitigation the package does not ship, as a new one would be written: one module, nothing else edited. The
# subprocess adds its folder to the package's search path (as if the file were in forgetbench/train/mitigations/)
# and rebuilds the recipe's arguments, which a fresh process does at import.
DEMO_MODULE = '''
from forgetbench.train.mitigations.entry import Entry, MitigationError, Option


def check(args, context):
    if args.demo_note == "bad":
        raise MitigationError("--demo_note bad: refused")
    return args.demo_note


def mix_data(note, rows, seed):
    return rows.select(range(8)), {"kept": 8}


def trainer(note, base):
    class DemoTrainer(base):
        def __init__(self, *args, demo_note=None, **kwargs):
            super().__init__(*args, **kwargs)
            self.demo_note = demo_note

    return DemoTrainer, {"demo_note": note}


def manifest(note, record, trainer):
    return {"demo": None if note is None else {"note": note, "record": record, "trainer": type(trainer).__name__,
                                               "trainer_note": trainer.demo_note}}


def after_save(note, out_dir, base_path):
    if note is None:
        return []
    (out_dir / "demo-1").mkdir()
    return [out_dir / "demo-1"]


MITIGATION = Entry(name="demo", order=40, options=(Option("demo_note", str | None, "demo: a note"),), check=check,
                   mix_data=mix_data, trainer=trainer, manifest=manifest, after_save=after_save,
                   points=lambda mitigations: ["demo-1"] if mitigations.get("demo") else [])
'''
DEMO_RUNNER = '''
import contextlib, importlib, io, json, os, sys
import forgetbench.train.mitigations as mitigations
mitigations.__path__.append(sys.argv[1])
mitigations.entries.cache_clear()
import forgetbench.train.recipe as recipe
importlib.reload(recipe)
from pathlib import Path
from forgetbench.train import extra_points
argv = sys.argv[3:]
# first the refused run (its stderr kept apart, and whether it wrote anything), then the same with a good note
stderr = io.StringIO()
with contextlib.redirect_stderr(stderr):
    try:
        recipe.recipe_main("lora", [*argv, "--demo_note", "bad"])
        code = 0
    except SystemExit as exit:
        code = exit.code
print(json.dumps({"code": code, "stderr": stderr.getvalue(), "wrote": os.path.exists(sys.argv[2])}))
recipe.recipe_main("lora", [*argv, "--demo_note", "hello"])
print(json.dumps([[name, str(path)] for name, path in extra_points(Path(sys.argv[2]))]))
'''


@pytest.mark.heavy
def test_a_new_mitigation_is_one_module_the_recipe_finds(tmp_path):
    import os

    (tmp_path / "plugin").mkdir()
    (tmp_path / "plugin" / "demo.py").write_text(DEMO_MODULE)
    out = tmp_path / "out"
    command = [sys.executable, "-c", DEMO_RUNNER, str(tmp_path / "plugin"), str(out), "--config",
               str(REPO / "recipes" / "configs" / "lab" / "lora.yaml"), "--output_dir", str(out), *SHORT,
               "--max_steps", "1", "--lora_r", "2"]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **ENV_OFFLINE}, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    (refused,) = [json.loads(line) for line in lines if line.startswith('{"code"')]
    assert refused["code"] == 2 and not refused["wrote"]
    assert refused["stderr"].strip().splitlines()[-1] == "recipes/lora.py: error: --demo_note bad: refused"
    manifest = json.loads((out / "forgetbench_manifest.json").read_text())
    assert manifest["mitigations"] == {"replay": None, "kl": None, "l2sp": None, "wise": None,
                                       "demo": {"note": "hello", "record": {"kept": 8}, "trainer": "DemoTrainer",
                                                "trainer_note": "hello"}}
    assert manifest["data"]["rows"] == 8 and (out / "demo-1").is_dir()
    assert json.loads(lines[-1]) == [["demo-1", str(out / "demo-1")]]


# --- replay ---------------------------------------------------------------------------------------------------------


class KeepTrainData(TrainerCallback):
    """Keeps the dataset the Trainer's data loader draws from."""

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        self.dataset = train_dataloader.dataset


def prompt_of(messages) -> str:
    return next(part["text"] for part in messages[0]["content"] if part["type"] == "text")


def test_replay_mixes_the_replay_tasks_into_the_batch_stream_at_the_ratio(tmp_path):
    replay = ["forgetbench_lab_color", "forgetbench_lab_shape"]
    ratio = 0.25
    kept = KeepTrainData()
    _, manifest = lab_run(tmp_path, "lora", "--max_steps", "1", "--replay_tasks", ",".join(replay),
                          "--replay_ratio", str(ratio), "--lora_r", "2", callbacks=[kept])
    n = 1000
    prompts = [prompt_of(m) for m in kept.dataset.select_columns(["messages"])[:n]["messages"]]
    own = {lab.task_name(key): lab.prompt({"task": key}) for key in lab.LAB_TASKS}
    counts = {task: prompts.count(own[task]) for task in (*replay, "forgetbench_lab_digits")}
    assert sum(counts.values()) == n  # every row is the target's or a replay task's, asked with that task's prompt
    # Each row's source is drawn independently (interleave_datasets, seeded): a source's count among the first n rows
    # is Binomial(n, p). Four standard deviations: a correct mixture fails this for about 1 seed in 16,000.
    for task, p in [(replay[0], ratio / 2), (replay[1], ratio / 2), ("replay", ratio)]:
        count = counts[replay[0]] + counts[replay[1]] if task == "replay" else counts[task]
        assert abs(count - n * p) <= 4 * math.sqrt(n * p * (1 - p)), (task, count)
    share = math.ceil(1497 * ratio / 2 / (1 - ratio))
    assert manifest["mitigations"]["replay"] == {
        "tasks": replay, "ratio": ratio, "stopping_strategy": "all_exhausted",
        "rows": {"target": 1497, replay[0]: share, replay[1]: share}, "data": None,
        "evaluated_tasks_replayed": replay}
    assert manifest["data"]["rows"] == len(kept.dataset) >= 1497 + 2 * share


def test_replay_never_cuts_the_target_data_short():
    """all_exhausted: every target row is in the stream, however the draws fall (a tiny target here, so a replay
    task holds far more rows than its share)."""
    from forgetbench import suite
    from forgetbench.train.data import with_replay

    digits = suite.train_conversations("forgetbench_lab_digits").select(range(40))

    def unique(row, i):  # answers that name the row, so each target row can be found in the stream
        row["messages"][1]["content"][0]["text"] = f"row-{i}"
        return row

    target = digits.map(unique, with_indices=True)
    for seed in range(3):
        mixed, rows = with_replay(target, ["forgetbench_lab_count"], 0.5, seed)
        answers = [m[1]["content"][0]["text"] for m in mixed.select_columns(["messages"])[:]["messages"]]
        assert {f"row-{i}" for i in range(40)} <= set(answers)
        assert rows == {"target": 40, "forgetbench_lab_count": 40}


def general_source(messages) -> str:
    """Which source a stream row came from: a lab task (by its prompt) or the lab's general replay set."""
    from forgetbench.lab.data import DESCRIBE, POSITION

    text = prompt_of(messages)
    own = {lab.prompt({"task": key}): lab.task_name(key) for key in lab.LAB_TASKS}
    if text in own:
        return own[text]
    assert text in (DESCRIBE, POSITION) or re.fullmatch(r"Say \S+\.", text), text
    return "replay_data"


def test_replay_data_and_a_group_mix_into_the_batch_stream_at_the_ratio(tmp_path):
    """--replay_data (the lab's general set) beside --replay_tasks given as a group: five replay sources, each a
    share R/5 of the stream; the manifest names the data, its rows, and the evaluated tasks replayed."""
    from forgetbench.lab import general_replay_path

    upstream = list(suite_groups()["forgetbench_lab_upstream"])
    ratio, kept = 0.3, KeepTrainData()
    _, manifest = lab_run(tmp_path, "lora", "--max_steps", "1", "--replay_tasks", "forgetbench_lab_upstream",
                          "--replay_data", str(general_replay_path()), "--replay_ratio", str(ratio), "--lora_r", "2",
                          callbacks=[kept])
    n = 1000
    sources = [general_source(m) for m in kept.dataset.select_columns(["messages"])[:n]["messages"]]
    for source, p in [("replay_data", ratio / 5), (upstream[0], ratio / 5), ("target", 1 - ratio)]:
        count = sources.count("forgetbench_lab_digits" if source == "target" else source)
        assert abs(count - n * p) <= 4 * math.sqrt(n * p * (1 - p)), (source, count)  # Binomial(n, p), 4 sd
    share = math.ceil(1497 * ratio / 5 / (1 - ratio))
    assert manifest["mitigations"]["replay"] == {
        "tasks": upstream, "ratio": ratio, "stopping_strategy": "all_exhausted",
        "rows": {"target": 1497, **dict.fromkeys(upstream, share), "replay_data": share},
        "data": {"source": str(general_replay_path()), "kind": "parquet", "rows": 400, "replayed": share},
        "evaluated_tasks_replayed": upstream}
    assert manifest["data"]["rows"] == len(kept.dataset) >= 1497 + 5 * share


def suite_groups():
    from forgetbench import suite

    return suite.GROUPS


def test_replay_data_reads_folders_and_jsonl_with_relative_images_and_takes_its_share(tmp_path):
    """Without --replay_tasks the data is the one replay source (a share R); a save_to_disk folder and a JSONL file
    whose image paths are relative to it give the same rows as the parquet file."""
    import datasets

    from forgetbench import suite
    from forgetbench.lab import general_replay_path
    from forgetbench.train.data import load_replay_data, replay_data_source, with_replay

    general = datasets.load_dataset("parquet", data_files=str(general_replay_path()), split="train")
    general.select(range(30)).save_to_disk(str(tmp_path / "folder"))
    (tmp_path / "img").mkdir()
    with open(tmp_path / "rows.jsonl", "w") as out:
        for i, row in enumerate(general.select(range(30))):
            row["images"][0].save(tmp_path / "img" / f"{i}.png")
            out.write(json.dumps({"images": [f"img/{i}.png"], "messages": row["messages"]}) + "\n")
    target = suite.train_conversations("forgetbench_lab_digits").select(range(60))
    found = {}
    for given in (tmp_path / "folder", tmp_path / "rows.jsonl"):
        source, kind = replay_data_source(str(given))
        mixed, rows = with_replay(target, [], 0.25, 0, (load_replay_data(source, kind), source, kind))
        assert rows == {"target": 60, "replay_data": 20}  # ceil(60 * 0.25 / 0.75)
        assert mixed.features == target.features
        picked = [(m, img[0].tobytes()) for m, img in zip(mixed["messages"], mixed["images"], strict=True)
                  if general_source(m) == "replay_data"]
        found[kind] = picked
        assert 20 <= len(picked) and {prompt_of(m) for m, _ in picked} <= {prompt_of(m) for m in general["messages"]}
    assert found["save_to_disk"] == found["jsonl"]  # the same rows, the same pixels, whichever way stored


def _bad_replay_files(tmp_path):
    """(flag value, the message's end) for data a recipe must refuse once it reads it."""
    from forgetbench.lab.data import data_file

    rows = [{"images": [], "messages": [{"role": "user", "content": "Say red."},
                                        {"role": "assistant", "content": "red"}]}]
    rows.append({"images": [], "messages": [{"role": "user", "content": "Say red."}]})
    (tmp_path / "no_answer.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (tmp_path / "broken.png").write_bytes(b"not a png")
    broken = {"images": ["broken.png"], "messages": [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Say red."}]},
        {"role": "assistant", "content": "red"}]}
    (tmp_path / "broken.jsonl").write_text(json.dumps(broken) + "\n")
    return [
        (str(data_file("color", "train")), "not in TRL's vision format (needs the columns images and messages; it "
                                           "has id, task, answer, image)"),
        (str(tmp_path / "no_answer.jsonl"), "row 2: not in TRL's vision format (no user and assistant turns)"),
        (str(tmp_path / "broken.jsonl"), "1 of 1 rows of split train has an unreadable image (row 1: "),
    ]


def test_replay_data_the_recipe_cannot_use_is_refused_in_one_line_before_the_model_loads(tmp_path, capsys,
                                                                                          monkeypatch):
    from forgetbench.train import recipe, recipe_main

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded for replay data that should have been refused")

    monkeypatch.setattr(recipe, "load_model", refuse)
    for given, message in _bad_replay_files(tmp_path):
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            recipe_main("lora", ["--config", str(REPO / "recipes" / "configs" / "lab" / "lora.yaml"),
                                 "--output_dir", str(tmp_path / "out"), "--replay_data", given, "--replay_ratio",
                                 "0.2"])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and "Traceback" not in err, err
        # The last line (before it, only datasets' progress bars of the target's first load in this process).
        assert err.strip().splitlines()[-1].startswith(f"recipes/lora.py: error: --replay_data {given}: {message}"), err
        assert not (tmp_path / "out").exists()


# --- the anchor: KL to the base, L2-SP -----------------------------------------------------------------------------

OPTIONS = dict(tune_projector=False, tune_vision_tower=False, top_k=2, num_virtual_tokens=4)
ANCHOR_CASES = [(arch, method) for arch in FAMILIES for method in ("lora", "dora", "ia3", "full_st")]


@pytest.mark.parametrize(("arch", "method"), ANCHOR_CASES, ids=[f"{a}-{m}" for a, m in ANCHOR_CASES])
def test_anchor_terms_are_zero_at_the_start_and_grow_with_training(arch, method):
    """On a tiny batch: before any update the tuned model is the base, so both terms are exactly zero; the KL's
    gradient reaches the trainable parameters, and after two steps both terms are positive."""
    from peft import get_peft_model
    from trl import ModelConfig

    from forgetbench.train.methods import get_method, prepare

    model = tiny.build(arch)
    config = prepare(model, get_method(method), ModelConfig(lora_r=2, lora_alpha=4), types.SimpleNamespace(**OPTIONS))
    model = get_peft_model(model, config) if config is not None else model
    anchor = Anchor(model)
    assert (anchor.peft, anchor.reference is None) == (config is not None, config is not None)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    seen = []
    for step in range(3):
        batch = tiny.batch(model, seed=step)
        with anchor.watch():
            loss = model(**batch).loss
        kl, tokens = anchor.kl(batch)
        l2sp = anchor.l2sp()
        seen.append((kl.item(), l2sp.item()))
        assert tokens == (batch["labels"][:, 1:] != -100).sum() and kl.requires_grad and l2sp.requires_grad
        (loss + kl / tokens + l2sp).backward()
        optimizer.step()
        optimizer.zero_grad()
    assert seen[0] == (0.0, 0.0)
    assert all(kl > 0 and l2sp > 0 for kl, l2sp in seen[2:]), seen
    if anchor.reference is not None:  # the frozen parameters are shared with the reference, not copied
        frozen = {id(p) for p in model.parameters() if not p.requires_grad}
        assert frozen and frozen <= {id(p) for p in anchor.reference.parameters()}
        assert not any(p.requires_grad for p in anchor.reference.parameters())
    anchor.close()


@pytest.mark.parametrize("method", ["lora", "full_st"])
def test_kl_and_l2sp_in_a_recipe_start_at_zero_and_are_logged(method, tmp_path):
    _, manifest = lab_run(tmp_path, method, "--kl_weight", "0.5", "--l2sp_weight", "0.1", "--lora_r", "2")
    kl, l2sp = manifest["mitigations"]["kl"], manifest["mitigations"]["l2sp"]
    assert [step for step, _ in kl["logged"]] == [step for step, _ in l2sp["logged"]] == [1, 2, 3]
    assert kl["logged"][0][1] == 0.0 and l2sp["logged"][0][1] == 0.0  # step 1's batch comes before any update
    assert kl["logged"][-1][1] > 0 and l2sp["logged"][-1][1] > 0
    assert kl["weight"] == 0.5 and l2sp["weight"] == 0.1
    assert kl["base"] == ("the same model with the adapter disabled" if method == "lora" else
                          "a frozen copy of the trainable parameters (the frozen ones shared)")


@pytest.mark.parametrize("method", ["lora", "full_st"])
def test_weight_zero_measures_the_terms_and_trains_bit_for_bit_as_a_plain_run(method, tmp_path):
    plain, plain_manifest = lab_run(tmp_path, method, "--lora_r", "2", name="plain")
    zero, zero_manifest = lab_run(tmp_path, method, "--lora_r", "2", "--kl_weight", "0", "--l2sp_weight", "0",
                                  name="zero")
    assert zero_manifest["losses"] == plain_manifest["losses"]
    ours, theirs = weights(zero), weights(plain)
    assert all(torch.equal(ours[name], theirs[name]) for name in theirs)
    assert zero_manifest["mitigations"]["kl"]["logged"][-1][1] > 0  # measured all the same
    assert zero_manifest["mitigations"]["l2sp"]["logged"][-1][1] > 0
    assert plain_manifest["mitigations"] == {"replay": None, "kl": None, "l2sp": None, "wise": None}


# --- WiSE-FT --------------------------------------------------------------------------------------------------------

F32 = dict(rtol=torch.finfo(torch.float32).eps, atol=0.0)  # one float32 rounding of the exact midpoint


def assert_interpolates(base: dict, tuned: dict, wise: dict[float, dict]) -> None:
    assert base.keys() == tuned.keys() == wise[0.0].keys()
    for name in base:
        assert torch.equal(wise[0.0][name], base[name]), name
        assert torch.equal(wise[1.0][name], tuned[name]), name
        if base[name].is_floating_point():
            torch.testing.assert_close(wise[0.5][name], ((base[name].double() + tuned[name].double()) / 2).float(),
                                       **F32)
    assert any(not torch.equal(wise[0.5][n], base[n]) and not torch.equal(wise[0.5][n], tuned[n]) for n in base)


def test_wise_alphas_write_interpolated_checkpoints_of_the_arm(tmp_path):
    from peft import PeftModel

    from forgetbench.train import extra_points

    out, manifest = lab_run(tmp_path, "lora", "--wise_alphas", "0,0.5,1", "--lora_r", "2")
    base, tuned = weights(lab_base_model_path()), weights(out)
    wise = {alpha: weights(out / f"wise-{alpha:g}") for alpha in (0.0, 0.5, 1.0)}
    assert_interpolates(base, tuned, wise)
    assert manifest["mitigations"]["wise"] == {"alphas": [0.0, 0.5, 1.0], "folders": ["wise-0", "wise-0.5", "wise-1"]}
    assert extra_points(out) == [("wise-0", out / "wise-0"), ("wise-0.5", out / "wise-0.5"), ("wise-1", out / "wise-1")]
    assert extra_points(out / "wise-0.5") == []  # a WiSE-FT checkpoint's own manifest lists no further points
    half = json.loads((out / "wise-0.5" / "forgetbench_manifest.json").read_text())
    assert half["method"] == "lora+wise" and half["base_model"] == manifest["base_model"] == "forgetbench-lab"
    assert half["mitigations"]["wise"] == {"alpha": 0.5, "base": str(lab_base_model_path().resolve()),
                                          "tuned": str(out)}

    # For LoRA, interpolating the merged weights is merging the adapter with its scaling multiplied by alpha:
    # (1 - a) W + a (W + s BA) = W + (a s) BA, equal up to float32 rounding.
    scaled = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(lab_base_model_path()),
                                       str(out / "adapter"))
    for module in scaled.modules():
        if hasattr(module, "scaling") and isinstance(module.scaling, dict):
            module.scaling = {name: 0.5 * s for name, s in module.scaling.items()}
    scaled = scaled.merge_and_unload().state_dict()
    for name in base:
        torch.testing.assert_close(scaled[name], wise[0.5][name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arch", FAMILIES)
def test_wise_ft_interpolates_every_family(arch, tmp_path):
    base = tiny.build(arch, seed=0)
    tuned = tiny.build(arch, seed=0)
    with torch.no_grad():  # a "fine-tune": every parameter moved
        for param in tuned.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    base.save_pretrained(tmp_path / "base")
    tuned.save_pretrained(tmp_path / "tuned")
    if arch == "lab":  # the lab has a processor: the WiSE-FT checkpoint carries it
        for item in lab_base_model_path().iterdir():
            if item.name.startswith(("tokenizer", "processor", "chat_template", "preprocessor")):
                (tmp_path / "tuned" / item.name).write_bytes(item.read_bytes())
    wise = {alpha: weights(wise_ft(tmp_path / "base", tmp_path / "tuned", alpha, tmp_path / f"w{alpha}"))
            for alpha in (0.0, 0.5, 1.0)}
    assert_interpolates(weights(tmp_path / "base"), weights(tmp_path / "tuned"), wise)
    manifest = json.loads((tmp_path / "w0.5" / "forgetbench_manifest.json").read_text())
    assert manifest["method"] == "wise" and manifest["mitigations"]["wise"]["alpha"] == 0.5
    if arch == "lab":
        from transformers import AutoProcessor

        AutoProcessor.from_pretrained(tmp_path / "w0.5")


def test_wise_ft_refuses_in_one_line(tmp_path, capsys):
    tuned = tmp_path / "tuned"
    tuned.mkdir()
    manifest = {"base_model": "org/other-model", "method": "lora", "merged": True}
    (tuned / "forgetbench_manifest.json").write_text(json.dumps(manifest))
    cases = [("0.5", f"{tuned} was tuned from org/other-model, not from forgetbench-lab"),
             ("0.5,2", "--alphas 0.5,2: 2 is outside [0, 1] (0: the base model, 1: the tuned one)")]
    for alphas, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            main(["wise", "--base", "forgetbench-lab", "--tuned", str(tuned), "--alphas", alphas])
        assert exit_info.value.code == 2
        assert capsys.readouterr().err.strip().splitlines() == [
            f"python -m forgetbench.train.mitigations wise: error: {message}"]
    (tuned / "forgetbench_manifest.json").write_text(json.dumps({**manifest, "base_model": "forgetbench-lab",
                                                                 "method": "prompt_tuning", "merged": False}))
    with pytest.raises(MitigationError, match="not merged \\(prompt_tuning: a soft prompt\\)"):
        wise_ft("forgetbench-lab", tuned, 0.5, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tuned.glob("wise-*"))


# --- PEFT adapter merging -------------------------------------------------------------------------------------------


def lab_adapter(folder, seed: int, kind: str = "lora"):
    """A LoRA (or IA3) adapter of the lab model built with PEFT directly, random (not identity) weights."""
    from peft import IA3Config, LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_pretrained(lab_base_model_path())
    config = LoraConfig(r=2, lora_alpha=4, target_modules=LLAVA.llm_linear, init_lora_weights=False) \
        if kind == "lora" else IA3Config(target_modules=LLAVA.linear(("k_proj", "v_proj", "down_proj")),
                                         feedforward_modules=LLAVA.linear(("down_proj",)))
    get_peft_model(model, config).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("combination", ["ties", "dare_ties", "dare_linear"])
def test_merged_adapters_differ_from_the_base_exactly_in_the_llm_linears(combination, tmp_path):
    adapters = [lab_adapter(tmp_path / "a", 1), lab_adapter(tmp_path / "b", 2)]
    out = merge_adapters("forgetbench-lab", adapters, [0.6, 0.4], combination, 0.5, tmp_path / "merged")
    base, merged = weights(lab_base_model_path()), weights(out)
    assert base.keys() == merged.keys()
    differs = {name for name in base if not torch.equal(base[name], merged[name])}
    assert differs == {name for name in base if LLM_LINEAR_WEIGHT.fullmatch(name)} and len(differs) == 4 * 7
    manifest = json.loads((out / "forgetbench_manifest.json").read_text())
    assert manifest["method"] == f"merge-{combination}" and manifest["base_model"] == "forgetbench-lab"
    assert manifest["mitigations"]["merge"]["weights"] == [0.6, 0.4]


def test_merge_command_refuses_in_one_line(tmp_path, capsys):
    lora, ia3 = lab_adapter(tmp_path / "lora", 1), lab_adapter(tmp_path / "ia3", 2, kind="ia3")
    cases = [
        ([str(lora), str(ia3)], ["--combination", "ties", "--density", "0.5"],
         f"{ia3}: not a LoRA adapter (IA3); add_weighted_adapter merges LoRA adapters only"),
        ([str(lora), str(lora)], ["--combination", "ties"],
         "--density None: ties needs the share of values to keep, in (0, 1]"),
        ([str(lora)], ["--combination", "linear"], "--adapters: merging needs at least two adapters"),
    ]
    capsys.readouterr()  # building the adapters printed progress bars
    for adapters, flags, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            main(["merge", "--base", "forgetbench-lab", "--adapters", *adapters,
                  "--weights", *["0.5"] * len(adapters), *flags, "--out", str(tmp_path / "out")])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"python -m forgetbench.train.mitigations merge: error: {message}"]
    assert not (tmp_path / "out").exists()


# --- the commands ---------------------------------------------------------------------------------------------------


def test_forgetbench_wise_and_merge_refuse_in_one_line_with_their_own_name(tmp_path, capsys):
    """What the single ``forgetbench`` command calls: configure_* adds the options, run_* returns the exit code."""
    import argparse

    from forgetbench.train.mitigations import configure_merge, configure_wise, run_merge, run_wise

    wise, merge = argparse.ArgumentParser(), argparse.ArgumentParser()
    configure_wise(wise)
    configure_merge(merge)
    args = wise.parse_args(["--base", "forgetbench-lab", "--tuned", str(tmp_path / "none"), "--alphas", "0.5,-1"])
    assert run_wise(args) == 2
    assert capsys.readouterr().err == (
        "forgetbench wise: error: --alphas 0.5,-1: -1 is outside [0, 1] (0: the base model, 1: the tuned one)\n")
    args = wise.parse_args(["--base", "forgetbench-lab", "--tuned", str(tmp_path / "none"), "--alphas", "0.5"])
    assert run_wise(args) == 2
    assert capsys.readouterr().err == f"forgetbench wise: error: {tmp_path / 'none'}: no such checkpoint folder\n"
    args = merge.parse_args(["--base", "forgetbench-lab", "--adapters", str(tmp_path), "--weights", "1",
                             "--combination", "linear", "--out", str(tmp_path / "merged")])
    assert (args.seed, args.density) == (0, None)
    assert run_merge(args) == 2
    assert capsys.readouterr().err == "forgetbench merge: error: --adapters: merging needs at least two adapters\n"
    assert not (tmp_path / "merged").exists()


def test_the_module_entry_point_still_runs(tmp_path):
    import os

    done = subprocess.run([sys.executable, "-m", "forgetbench.train.mitigations", "wise", "--base", "forgetbench-lab",
                           "--tuned", str(tmp_path), "--alphas", "2"], capture_output=True, text=True,
                          env={**os.environ, **ENV_OFFLINE}, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "python -m forgetbench.train.mitigations wise: error: --alphas 2: 2 is outside [0, 1] (0: the base model, "
        "1: the tuned one)"]
