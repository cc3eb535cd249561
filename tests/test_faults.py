"""Faults: a run killed (SIGKILL) after a checkpoint and resumed ends with an uninterrupted run's weights; a NaN
loss stops the run within one logging step with a one-line error, keeping the last good checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO, train_here

HOOKED = [str(REPO / "tests" / "helpers" / "hooked_recipe.py"), "lora", "--save-rank-state"]
ARGS = ["--config", str(REPO / "recipes" / "configs" / "lab" / "lora.yaml"), "--lora_r", "4", "--warmup_steps", "0",
        "--per_device_train_batch_size", "4", "--max_train_samples", "64", "--save_strategy", "steps"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _recipe(out, *extra: str, env: dict = ENV) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *HOOKED, *ARGS, "--output_dir", str(out), *extra], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(process: subprocess.Popen) -> tuple[int, str]:
    _, err = process.communicate(timeout=600)
    return process.returncode, err


@pytest.mark.heavy
def test_resume_after_sigkill_equals_an_uninterrupted_run(tmp_path):
    steps = ["--max_steps", "20", "--save_steps", "5", "--logging_steps", "5"]
    killed = _recipe(tmp_path / "killed", *steps)
    first = tmp_path / "killed" / "checkpoint-5" / "trainer_state.json"  # written last: the checkpoint is whole
    deadline = time.monotonic() + 300
    while not first.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    code, _ = _finish(killed)
    assert code == -signal.SIGKILL, "the run ended before it could be killed"
    assert first.exists() and not (tmp_path / "killed" / "forgetbench_manifest.json").exists()

    code, err = _finish(_recipe(tmp_path / "killed", *steps, "--resume_from_checkpoint", "last"))
    assert code == 0, err[-3000:]
    train_here("lora", [*HOOKED[2:], *ARGS, "--output_dir", str(tmp_path / "straight"), *steps])  # uninterrupted
    resumed, uninterrupted = (torch.load(tmp_path / name / "rank0.pt") for name in ("killed", "straight"))
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)


def test_nan_loss_stops_within_one_logging_step_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        train_here("lora", [*ARGS, "--output_dir", str(out), "--max_steps", "30", "--save_steps", "5",
                            "--logging_steps", "5", "--nan-at-step", "7"])
    code, err = exit_info.value.code, capsys.readouterr().err
    assert code == 2
    message = err.strip().splitlines()[-1]
    # Poisoned before step 7; step 10 both logs (loss) and would save: caught there, nothing written.
    assert message.startswith("recipes/lora.py: error: training diverged at step 10: "), message
    assert "non-finite trainable weights" in message and "loss nan" in message and "grad_norm nan" in message
    assert f"Last good checkpoint: {out / 'checkpoint-5'}" in message
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-5"]
    assert not (out / "forgetbench_manifest.json").exists()
    from safetensors.torch import load_file

    kept = load_file(out / "checkpoint-5" / "adapter_model.safetensors")
    assert kept and all(torch.isfinite(t).all() for t in kept.values())


def test_bad_input_is_one_line_naming_it(tmp_path, capsys):
    from forgetbench.train import recipe_main

    cases = {("--dataset_name", "forgetbench_lab_nosuch"): "--dataset_name forgetbench_lab_nosuch: cannot load",
             ("--resume_from_checkpoint", "last"): "--resume_from_checkpoint last: no complete checkpoint in",
             ("--method", "ia3"): "--method ia3 names another method; run recipes/ia3.py"}
    for extra, expected in cases.items():
        with pytest.raises(SystemExit) as exit_info:
            recipe_main("lora", [*ARGS, "--output_dir", str(tmp_path / "x"), "--max_steps", "1", *extra])
        assert exit_info.value.code == 2
        assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f"recipes/lora.py: error: {expected}")
