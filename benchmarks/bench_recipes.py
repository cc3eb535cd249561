"""Benchmark (not a test): what each tuning method costs, and what the forgetbench recipe adds over plain TRL.

CPU, the lab model (default): for every method, trainable parameters, seconds per step and peak memory (each
method in its own process: peak resident memory, baseline included; the same lab config: batch 32, the lab's
downstream data), plus the first and last logged loss; then the overhead of ``run_recipe`` against a plain TRL
SFT script (same model, data, LoRA config and steps), measured in one process, alternating, as a ratio of medians
(goal <= 1.03x).

    python benchmarks/bench_recipes.py                      # all methods, 20 steps each, and the overhead ratio
    python benchmarks/bench_recipes.py --methods lora,full --steps 40

GPU, random-init real-size models (no hub access: configs are dicts in forgetbench/lab/tiny.py): step time and
peak ``torch.cuda.max_memory_allocated`` of one forward + backward + AdamW step on a synthetic batch (goal: QLoRA
<= 40 % of full tuning's memory):

    python benchmarks/bench_recipes.py --device cuda --arch llava_onevision_0.5b --methods lora,qlora,full

Prints a Markdown table and, with ``--json FILE``, writes the rows.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _lab_args(method: str, steps: int, out: Path, extra: list[str] = ()):
    from trl import ModelConfig, ScriptArguments, SFTConfig, TrlParser

    from forgetbench.train.recipe import ForgetbenchArguments

    parser = TrlParser((ScriptArguments, SFTConfig, ModelConfig, ForgetbenchArguments))
    args = parser.parse_args_and_config(args=[
        "--config", str(REPO / "recipes" / "configs" / "lab" / f"{method}.yaml"), "--output_dir", str(out),
        "--max_steps", str(steps), "--logging_steps", "5", "--warmup_steps", "0", *extra])
    args[3].method = method
    return args


def one_lab_method(method: str, steps: int) -> dict:
    """Runs in a fresh process so that its peak resident memory is its own."""
    from forgetbench.train.recipe import run_recipe

    with tempfile.TemporaryDirectory() as tmp:
        out = run_recipe(*_lab_args(method, steps, Path(tmp) / "out"))
        manifest = json.loads((out / "forgetbench_manifest.json").read_text())
    return {"method": method, "trainable": manifest["trainable_parameters"],
            "s_per_step": manifest["train_seconds"] / steps,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "first_loss": manifest["losses"][0][1], "last_loss": manifest["losses"][-1][1]}


def plain_trl_lora(steps: int, out: Path) -> float:
    """A plain TRL SFT script (TRL's sft.py, reduced): the lab model, the lab data, LoRA; seconds of train+save."""
    from peft import LoraConfig
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import SFTTrainer

    from forgetbench.lab.model import base_model_path
    from forgetbench.train.data import load_sft_dataset

    script_args, training_args, model_args, _ = _lab_args("lora", steps, out)
    start = time.perf_counter()
    processor = AutoProcessor.from_pretrained(base_model_path())
    model = AutoModelForImageTextToText.from_pretrained(base_model_path())
    peft_config = LoraConfig(r=model_args.lora_r, lora_alpha=model_args.lora_alpha, lora_dropout=0.0,
                             target_modules=r"model\.language_model\.layers\.\d+\.(self_attn|mlp)\.\w+_proj",
                             task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=training_args, train_dataset=load_sft_dataset("forgetbench_lab_digits"),
                         processing_class=processor, peft_config=peft_config)
    trainer.train()
    trainer.save_model(str(out))
    trainer.model.merge_and_unload().save_pretrained(out / "merged")
    return time.perf_counter() - start


def recipe_lora(steps: int, out: Path) -> float:
    from forgetbench.train.recipe import run_recipe

    start = time.perf_counter()
    run_recipe(*_lab_args("lora", steps, out))
    return time.perf_counter() - start


def overhead(steps: int, repeats: int) -> dict:
    times = {"recipe": [], "plain": []}
    with tempfile.TemporaryDirectory() as tmp:
        # One untimed run of each first: the process's one-time imports and data build would otherwise land on
        # whichever side runs first.
        recipe_lora(2, Path(tmp) / "warm-recipe")
        plain_trl_lora(2, Path(tmp) / "warm-plain")
        for i in range(repeats):
            # Alternate, so that machine load drifting over the run hits both alike.
            for name, run in (("recipe", recipe_lora), ("plain", plain_trl_lora))[:: 1 if i % 2 == 0 else -1]:
                times[name].append(run(steps, Path(tmp) / f"{name}{i}"))
    recipe, plain = statistics.median(times["recipe"]), statistics.median(times["plain"])
    return {"steps": steps, "repeats": repeats, "recipe_s": recipe, "plain_trl_s": plain, "ratio": recipe / plain,
            "all_recipe_s": times["recipe"], "all_plain_s": times["plain"]}


def gpu_method(arch: str, method_name: str, batch_size: int, steps: int, checkpointing: bool) -> dict:
    """One method on a random-init real-size model: mean step time (after 2 warm-up steps) and peak memory."""
    import torch
    from peft import get_peft_model

    from forgetbench.lab import tiny
    from forgetbench.train.methods import get_method, prepare
    from forgetbench.train.recipe import load_model

    method = get_method(method_name)
    gc.collect()  # the previous method's model (PEFT holds reference cycles)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    model = tiny.build(arch).to(torch.bfloat16)
    if method.quantize_4bit:  # through the recipe's own loader, from a saved copy of the same random init
        tmp = tempfile.mkdtemp()
        model.save_pretrained(tmp)
        del model
        model_args = types.SimpleNamespace(dtype="bfloat16", bnb_4bit_quant_type="nf4", use_bnb_nested_quant=False)
        model = load_model(tmp, method, model_args, types.SimpleNamespace(bf16=True, fp16=False))[0]
    model = model.to("cuda")
    options = types.SimpleNamespace(tune_projector=False, tune_vision_tower=False, top_k=2, num_virtual_tokens=16)
    peft_config = prepare(model, method, types.SimpleNamespace(lora_r=16, lora_alpha=32, lora_dropout=0.0), options)
    if peft_config is not None:
        model = get_peft_model(model, peft_config)
        if method.quantize_4bit:  # as TRL's SFTTrainer does for a quantized base: bf16 adapters (QLoRA paper)
            for p in model.parameters():
                if p.requires_grad:
                    p.data = p.data.to(torch.bfloat16)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5)
    batch = {k: v.to("cuda") for k, v in tiny.batch(model, batch_size=batch_size).items()}
    batch["pixel_values"] = batch["pixel_values"].to(torch.bfloat16)
    times = []
    for step in range(steps + 2):
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if step >= 2:
            times.append(time.perf_counter() - start)
    return {"method": method_name, "arch": arch, "batch_size": batch_size, "tokens": batch["input_ids"].shape[1],
            "trainable": sum(p.numel() for p in trainable), "total": sum(p.numel() for p in model.parameters()),
            "s_per_step": statistics.mean(times), "peak_mem_gb": torch.cuda.max_memory_allocated() / 2**30,
            # After a step, gradients freed: weights + optimizer state, without activations.
            "state_gb": torch.cuda.memory_allocated() / 2**30,
            "gradient_checkpointing": checkpointing, "loss": float(loss),
            "linear4bit_layers": sum(type(m).__name__ == "Linear4bit" for m in model.modules())}


def table(rows: list[dict], columns: list[str]) -> str:
    def cell(value):
        return f"{value:,.3f}" if isinstance(value, float) else f"{value:,}" if isinstance(value, int) else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from forgetbench.train.methods import METHODS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--arch", default="lab", help="cpu: lab; cuda: a forgetbench.lab.tiny builder name")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--steps", type=int, default=None, help="steps per method (cpu 20, cuda 10)")
    parser.add_argument("--batch-size", type=int, default=4, help="cuda only (cpu: the lab config's 32)")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="cuda only")
    parser.add_argument("--overhead-repeats", type=int, default=3, help="cpu: recipe/plain pairs (0: skip)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: one lab method in this process
    args = parser.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"--methods: unknown {', '.join(unknown)}; known: {', '.join(METHODS)}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.one:
        print(json.dumps(one_lab_method(args.one, args.steps)))
        return 0
    result: dict = {"device": args.device, "arch": args.arch}
    if args.device == "cuda":
        rows = [gpu_method(args.arch, m, args.batch_size, args.steps or 10, args.gradient_checkpointing)
                for m in methods]
        full = next((r for r in rows if r["method"] == "full"), None)
        for row in rows:
            row["mem_vs_full"] = row["peak_mem_gb"] / full["peak_mem_gb"] if full else ""
        print(table(rows, ["method", "trainable", "total", "tokens", "batch_size", "s_per_step", "peak_mem_gb",
                           "mem_vs_full", "state_gb", "linear4bit_layers"]))
    else:
        steps = args.steps or 20
        rows = []
        for method in methods:
            done = subprocess.run([sys.executable, __file__, "--one", method, "--steps", str(steps)],
                                  capture_output=True, text=True, check=False)
            if done.returncode != 0:
                print(f"{method}: failed: {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
                continue
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(table(rows, ["method", "trainable", "s_per_step", "peak_rss_mb", "first_loss", "last_loss"]))
        if args.overhead_repeats:
            result["overhead"] = overhead(steps, args.overhead_repeats)
            o = result["overhead"]
            print(f"\nrecipe vs plain TRL (LoRA, {steps} steps, load + train + save, median of {o['repeats']}): "
                  f"{o['recipe_s']:.2f} s vs {o['plain_trl_s']:.2f} s = {o['ratio']:.3f}x")
    result["rows"] = rows
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
