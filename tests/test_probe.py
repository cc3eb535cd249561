"""The forgetting probe (forgetbench/train/probe.py): E and F while a recipe trains, the budget that stops it, its
agreement with lmms-eval, DDP, and final weights untouched by it."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import BIN, REPO, train_here

from forgetbench.train import launch_command

CONFIG = REPO / "recipes" / "configs" / "lab" / "full_st.yaml"
HOOKED = str(REPO / "tests" / "helpers" / "hooked_recipe.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
SMALL = ["--per_device_train_batch_size", "8", "--disable_tqdm", "true"]
UPSTREAM = ["forgetbench_lab_color", "forgetbench_lab_shape", "forgetbench_lab_count", "forgetbench_lab_printed"]
TASKS = ["forgetbench_lab_digits", *UPSTREAM]


def _run(command: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    completed = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=timeout, check=False,
                               cwd=cwd)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "forgetting_probe.jsonl").read_text().splitlines()]


def _manifest(out: Path) -> dict:
    return json.loads((out / "forgetbench_manifest.json").read_text())


def _probe(limit: int):
    from forgetbench.train.probe import forgetting_probe

    args = SimpleNamespace(probe_every=1, probe_limit=limit, probe_tasks=None, forgetting_budget=None)
    return forgetting_probe(args, "forgetbench_lab_digits")


def _probe_scores(model_dir: Path, limit: int) -> dict[str, float]:
    """The probe's scorer on a saved model (no training)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(model_dir)
    items = _probe(limit)._score(model, AutoProcessor.from_pretrained(model_dir))
    return {task: sum(values) / len(values) for task, values in items.items()}


@pytest.fixture(scope="module")
def watched(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """accelerate launch recipes/full_st.py ... --max_steps 80 --probe_every 20 (batch 8 to keep it short)."""
    out = tmp_path_factory.mktemp("probe") / "watched"
    command = launch_command("full_st", CONFIG, ["--max_steps", "80", "--probe_every", "20", "--output_dir",
                                                  str(out), "--logging_steps", "20", *SMALL])
    return out, _run(command, out.parent)


def test_probe_writes_e_and_f_at_every_probe_step(watched):
    out, completed = watched
    records = _records(out)
    assert [r["step"] for r in records] == [0, 20, 40, 60, 80]
    first = records[0]
    assert first["E"] == 0.0 and first["F"] == 0.0 and first["F_ci"] == [0.0, 0.0]
    assert set(first["deltas"].values()) == {0.0}
    for record in records:
        assert list(record["scores"]) == TASKS
        assert all(0.0 <= v <= 100.0 for v in record["scores"].values())
        delta = {t: record["scores"][t] - first["scores"][t] for t in TASKS}
        assert record["E"] == pytest.approx(delta["forgetbench_lab_digits"])
        assert record["F"] == pytest.approx(sum(delta[t] for t in UPSTREAM) / len(UPSTREAM))
        assert record["F_ci"][0] <= record["F"] <= record["F_ci"][1]
        assert "stop" not in record  # no budget
    assert first["scores"]["forgetbench_lab_color"] >= 90  # the base model knows its colours
    assert records[-1]["E"] > 0  # full_st learns digits in 80 steps

    probe = _manifest(out)["probe"]
    assert probe["every"] == 20 and probe["limit"] == 32 and probe["budget"] is None
    assert probe["tasks"] == {"downstream": ["forgetbench_lab_digits"], "upstream": UPSTREAM}
    assert probe["stopped_at_step"] is None and probe["restored_step"] is None and probe["probes"] == 5
    assert probe["last"] == {"step": 80, "E": records[-1]["E"], "F": records[-1]["F"]}
    assert _manifest(out)["steps"] == 80
    assert "'probe/F'" in completed.stdout + completed.stderr  # through the Trainer's logging, like the loss


def test_last_probe_equals_lmms_eval_on_the_saved_model(watched):
    """The probe's sample is the first probe_limit documents of each test split: lmms-eval --limit 32 scores the
    same documents, with the same prompts, generation and scorer, so the scores are equal, not close."""
    from lmms_eval import evaluator
    from lmms_eval.tasks import TaskManager

    import forgetbench

    out, _ = watched
    manager = TaskManager(include_path=str(forgetbench.tasks_path()), include_defaults=False)
    result = evaluator.simple_evaluate(model="forgetbench", model_args=f"pretrained={out}", tasks=TASKS,
                                       batch_size=8, limit=32, task_manager=manager, device="cpu")
    last = _records(out)[-1]["scores"]
    lmms = {task: 100 * result["results"][task]["exact_match,none"] for task in TASKS}
    assert lmms == last
    assert len({round(v) for v in last.values()}) > 1  # not a degenerate all-equal case


def test_budget_stops_early_and_saves_the_last_state_within_budget(tmp_path):
    out = tmp_path / "budget"
    # 2 points is below what 4 x 32 documents can detect (6.95): allowed, and recorded, on request.
    train_here("full_st", ["--config", str(CONFIG), "--max_steps", "300", "--forgetting_budget", "2",
                            "--allow_underpowered_budget", "--probe_every", "5", "--output_dir", str(out), *SMALL])
    manifest = _manifest(out)
    probe = manifest["probe"]
    assert probe["power"] == {
        "minimum_detectable_effect": 6.95, "documents": dict.fromkeys(UPSTREAM, 32), "flip_rate": 0.1, "alpha": 0.05,
        "power": 0.8, "sided": 1, "underpowered": True, "allow_underpowered_budget": True}
    stopped, restored = probe["stopped_at_step"], probe["restored_step"]
    assert stopped is not None and stopped % 5 == 0 and 0 < stopped < 300
    assert manifest["steps"] == stopped
    assert restored is not None and restored < stopped and restored % 5 == 0
    assert probe["reason"].startswith(f"step {stopped}: F ")
    assert probe["reason"].endswith(f"restored the step-{restored} state")

    records = {r["step"]: r for r in _records(out)}
    assert list(records) == list(range(0, stopped + 1, 5))
    assert records[stopped]["stop"] and records[stopped]["F_ci"][1] < -2
    assert records[restored]["within_budget"] and records[restored]["F"] >= -2
    assert not any(records[s]["within_budget"] or records[s]["stop"] for s in range(restored + 5, stopped, 5))
    assert not any(records[s]["stop"] for s in range(0, stopped, 5))
    # What was saved is the restored state: the probe scores it exactly as it scored that step.
    assert _probe_scores(out, 32) == records[restored]["scores"]
    if restored == 0:
        from safetensors.torch import load_file

        from forgetbench.lab.model import base_model_path

        saved, base = load_file(out / "model.safetensors"), load_file(base_model_path() / "model.safetensors")
        layers = [k for k in saved if ".layers." in k and "vision" not in k]
        assert layers and all(torch.equal(saved[k], base[k]) for k in layers)


# Records every rank's last step beside hooked_recipe's per-rank weights (--save-rank-state).
STEP_RECORDER = f"""
import json, sys
from pathlib import Path
sys.path.insert(0, {str(REPO / "tests" / "helpers")!r})
import hooked_recipe
from transformers import TrainerCallback

class Steps(TrainerCallback):
    def on_train_end(self, args, state, control, **kwargs):
        import torch.distributed as dist
        Path(args.output_dir, f"rank{{dist.get_rank()}}_step.json").write_text(json.dumps(state.global_step))

real = hooked_recipe.recipe_main
hooked_recipe.recipe_main = lambda method, argv, callbacks=(): real(method, argv, callbacks=[*callbacks, Steps()])
hooked_recipe.main(sys.argv[1:])
"""


@pytest.mark.heavy
def test_two_processes_stop_together_with_identical_weights(tmp_path):
    script = tmp_path / "recipe_with_steps.py"
    script.write_text(STEP_RECORDER)
    out = tmp_path / "ddp"
    _run([str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", str(script), "full_st", "--save-rank-state",
          "--config", str(CONFIG), "--use_cpu", "true", "--max_steps", "300", "--forgetting_budget", "2",
          "--allow_underpowered_budget", "--probe_every", "5", "--probe_limit", "16", "--output_dir", str(out),
          "--per_device_train_batch_size", "4", "--disable_tqdm", "true"], tmp_path)
    probe = _manifest(out)["probe"]
    stopped = probe["stopped_at_step"]
    assert stopped is not None and stopped % 5 == 0 and stopped < 300 and probe["restored_step"] < stopped
    assert [json.loads((out / f"rank{r}_step.json").read_text()) for r in (0, 1)] == [stopped, stopped]
    rank0, rank1 = (torch.load(out / f"rank{r}.pt") for r in (0, 1))
    assert rank0.keys() == rank1.keys() and all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    assert _probe_scores(out, 16) == {r["step"]: r for r in _records(out)}[probe["restored_step"]]["scores"]


@pytest.mark.parametrize("method, extra", [("full_st", []), ("lora", ["--lora_dropout", "0.1"])])
def test_final_weights_equal_with_the_probe_on_and_off(tmp_path, method, extra):
    """Same seed, 6 steps: the probe (every 2 steps) leaves no trace in the weights. LoRA with dropout draws from
    torch's random stream at every step and has dropout modules the probe switches to eval and back."""
    config = REPO / "recipes" / "configs" / "lab" / f"{method}.yaml"
    common = ["--save-rank-state", "--config", str(config), "--max_steps", "6", "--warmup_steps", "0",
              "--max_train_samples", "64", *SMALL, *extra]
    for name, flags in (("on", ["--probe_every", "2", "--probe_limit", "8"]), ("off", [])):
        train_here(method, [*common, "--output_dir", str(tmp_path / name), *flags])
    assert [r["step"] for r in _records(tmp_path / "on")] == [0, 2, 4, 6]
    assert not (tmp_path / "off" / "forgetting_probe.jsonl").exists()
    on, off = (torch.load(tmp_path / name / "rank0.pt") for name in ("on", "off"))
    assert on.keys() == off.keys() and all(torch.equal(on[k], off[k]) for k in on)
    assert _moved(on), "training did not move the weights: the comparison would prove nothing"


def _moved(weights: dict) -> bool:
    """Whether 6 steps changed the trainable weights (LoRA's B starts at zero; full_st's layers at the base)."""
    if any("lora_B" in k for k in weights):
        return all(float(v.abs().max()) > 0 for k, v in weights.items() if "lora_B" in k)
    from safetensors.torch import load_file

    from forgetbench.lab.model import base_model_path

    base = load_file(base_model_path() / "model.safetensors")
    names = {k: "language_model.model." + k.split("language_model.", 1)[1] for k in weights}  # on-disk names
    return all(not torch.equal(weights[k], base[b]) for k, b in names.items() if k.endswith("q_proj.weight"))


@pytest.mark.parametrize("extra, message", [
    (["--probe_every", "0"], "--probe_every 0: must be a positive number of steps"),
    (["--forgetting_budget", "-1"], "--forgetting_budget -1.0: must be a number of points >= 0"),
    (["--probe_every", "5", "--probe_limit", "0"], "--probe_limit 0: must be a positive number"),
    (["--probe_every", "5", "--probe_tasks", "forgetbench_lab_nosuch"],
     "--probe_tasks forgetbench_lab_nosuch: not a forgetbench suite task"),
    (["--probe_every", "5", "--probe_tasks", "forgetbench_lab_color_closed"],
     "--probe_tasks forgetbench_lab_color_closed: a multiple_choice task"),
    (["--probe_every", "5", "--probe_tasks", "forgetbench_lab_digits"],
     "--probe_tasks forgetbench_lab_digits: the training task"),
    (["--probe_tasks", "forgetbench_lab_color"], "--probe_tasks: the probe is off"),
    (["--forgetting_budget", "2"], "--forgetting_budget 2: below what the probe can detect: 32 documents on each of "
     "4 upstream tasks detect a forgetting of 6.95 points (one-sided 5%, power 80%, assuming 10% of documents flip); "
     "no --probe_limit can (the test splits hold 200 documents each); or pass --allow_underpowered_budget to run "
     "anyway"),
    (["--forgetting_budget", "5"], "--forgetting_budget 5: below what the probe can detect: 32 documents on each of "
     "4 upstream tasks detect a forgetting of 6.95 points (one-sided 5%, power 80%, assuming 10% of documents flip); "
     "--probe_limit 62 would detect 5; or pass --allow_underpowered_budget to run anyway"),
])
def test_bad_probe_values_are_one_line_before_any_model_loads(tmp_path, capsys, monkeypatch, extra, message):
    import forgetbench.train.recipe as recipe
    from forgetbench.train import recipe_main

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(recipe, "load_model", no_model)
    with pytest.raises(SystemExit) as exit_info:
        recipe_main("full_st", ["--config", str(CONFIG), "--output_dir", str(tmp_path / "x"), *extra])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith(f"recipes/full_st.py: error: {message}"), lines[-1]


@pytest.mark.slow
def test_the_issue_commands_at_the_config_batch(tmp_path):
    """The two commands of the issue as written (batch 32, the config's): probes at 0, 20, ..., 80; a budget of 2
    points stops a 300-step full_st run early."""
    watched, budget = tmp_path / "watched", tmp_path / "budget"
    _run(launch_command("full_st", CONFIG, ["--max_steps", "80", "--probe_every", "20", "--output_dir",
                                            str(watched)]), tmp_path)
    assert [r["step"] for r in _records(watched)] == [0, 20, 40, 60, 80]
    assert _records(watched)[0]["F"] == 0.0
    _run(launch_command("full_st", CONFIG, ["--max_steps", "300", "--probe_every", "20", "--forgetting_budget", "2",
                                            "--allow_underpowered_budget", "--output_dir", str(budget)]), tmp_path)
    probe = _manifest(budget)["probe"]
    assert probe["stopped_at_step"] % 20 == 0 and probe["stopped_at_step"] < 300
    assert probe["restored_step"] < probe["stopped_at_step"]
