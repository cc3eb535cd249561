"""A recipe in 2 processes on CPU (torchrun, gloo): both ranks end with the same weights, and those equal a
1-process run at twice the per-device batch (the same global batch), up to float rounding."""

from __future__ import annotations

import json
import os
import subprocess

import torch
from conftest import BIN, REPO

ARGS = ["--config", str(REPO / "recipes" / "configs" / "lab" / "lora.yaml"), "--max_steps", "4", "--lora_r", "4",
        "--logging_steps", "1", "--warmup_steps", "0", "--use_cpu", "true", "--max_train_samples", "64"]


def _run(command: list[str], out) -> None:
    # Every rank writes its trainable weights (the tests' SaveRankState callback); one thread per process on 2
    # shared cores.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    completed = subprocess.run([*command, *ARGS, "--output_dir", str(out)], env=env, capture_output=True, text=True,
                               timeout=600, check=False, cwd=out.parent)
    assert completed.returncode == 0, completed.stderr[-3000:]


def test_two_processes_match_each_other_and_one_process_at_the_same_global_batch(tmp_path):
    recipe = [str(REPO / "tests" / "helpers" / "hooked_recipe.py"), "lora", "--save-rank-state"]
    _run([str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", *recipe,
          "--per_device_train_batch_size", "4"], tmp_path / "ddp")
    _run([str(BIN / "python"), *recipe, "--per_device_train_batch_size", "8"], tmp_path / "single")

    rank0, rank1 = (torch.load(tmp_path / "ddp" / f"rank{r}.pt") for r in (0, 1))
    single = torch.load(tmp_path / "single" / "rank0.pt")
    assert rank0.keys() == rank1.keys() == single.keys() and len(rank0) == 4 * 7 * 2
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)  # DDP: one all-reduced gradient, one update
    moved = max(float(single[k].abs().max()) for k in single if "lora_B" in k)  # B starts at zero
    assert moved > 1e-3
    # 2 ranks x 4 rows = 1 process x 8 rows: the same rows (accelerate deals each rank alternate batches of one
    # seeded order) and the same mean loss (every answer is one token + </s>), so only rounding may differ. The
    # gradient is summed in another order (all-reduce of two halves), and AdamW divides it by its own running RMS,
    # so a rounding difference of a few float32 ulps can move an update by a sizeable fraction of the learning
    # rate. The bound is therefore relative to how far training moved the weights, not a fixed number: the two
    # runs must agree to within 1 % of the largest change training made (measured: ~1e-5 absolute, ~0.1 %).
    gap = max(float((rank0[k] - single[k]).abs().max()) for k in rank0)
    assert gap <= 0.01 * moved, (gap, moved)
    manifest = json.loads((tmp_path / "ddp" / "forgetbench_manifest.json").read_text())
    assert manifest["steps"] == 4 and manifest["method"] == "lora"


def test_every_accelerate_config_loads_and_is_headed_by_a_launch_command():
    from accelerate.commands.config.config_args import load_config_from_file

    configs = sorted((REPO / "recipes" / "accelerate").glob("*.yaml"))
    assert {c.stem for c in configs} >= {"single_gpu", "multi_gpu", "fsdp", "zero2", "zero3", "multi_node"}
    for config in configs:
        loaded = load_config_from_file(str(config))
        assert loaded.num_processes >= 1, config
        assert f"accelerate launch --config_file recipes/accelerate/{config.name} " in config.read_text(), config
