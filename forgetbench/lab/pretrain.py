"""Pre-train the lab base model on the upstream lab tasks, so that it has something to forget.

    forgetbench lab pretrain            # writes forgetbench/lab/base_model (about 3.5 MB)

Deterministic for a given seed and library versions. The shipped weights came from this command; tests never
re-run it. About 20 % of the rows are "Say <word>." with every lab answer word, the digits included: a LoRA
fine-tune cannot make the frozen lm_head emit a token it never learned to emit.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from forgetbench.errors import command_main


def say_rows(n: int, seed: int) -> list[dict]:
    from forgetbench.lab.data import _canvas
    from forgetbench.suite.lab import LAB_TASKS

    words = sorted({label for task in LAB_TASKS.values() for label in task.labels})
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        word = words[i % len(words)]
        image, _ = _canvas(rng)
        rows.append(
            {
                "images": [image],
                "messages": [
                    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": f"Say {word}."}]},
                    {"role": "assistant", "content": [{"type": "text", "text": word}]},
                ],
            }
        )
    return rows


def pretraining_dataset(seed: int):
    import datasets

    from forgetbench.lab import data
    from forgetbench.suite.lab import ROLES, to_sft_example

    upstream = [task for task, role in ROLES.items() if role == "upstream"]
    rows = [to_sft_example(doc) for task in upstream for doc in data.load(task, "train")]
    rows += say_rows(len(rows) // 4, seed)
    return datasets.Dataset.from_list(rows).shuffle(seed=seed)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    from forgetbench.lab.model import base_model_path

    parser.description = __doc__.splitlines()[0]
    parser.add_argument("--out", type=Path, default=base_model_path(), help="(default: the shipped base model)")
    parser.add_argument("--steps", type=int, default=1800)
    parser.add_argument("--seed", type=int, default=0)


def main(argv: list[str] | None = None) -> int:
    return command_main("python -m forgetbench.lab.pretrain", configure_parser, run, argv)


def run(args: argparse.Namespace) -> int:
    """``forgetbench lab pretrain``: trains the base model and writes it to ``--out``."""
    from transformers import set_seed
    from trl import SFTConfig, SFTTrainer

    from forgetbench.checkpoint import library_versions, save_model
    from forgetbench.lab.model import build_model, build_processor, build_tokenizer

    set_seed(args.seed)
    processor = build_processor(build_tokenizer())
    model = build_model(processor.tokenizer, seed=args.seed)
    train = pretraining_dataset(args.seed)
    with tempfile.TemporaryDirectory() as scratch:
        config = SFTConfig(
            output_dir=scratch, max_steps=args.steps, per_device_train_batch_size=32, learning_rate=1e-3,
            lr_scheduler_type="cosine", warmup_steps=30, max_grad_norm=1.0, weight_decay=0.01,
            assistant_only_loss=True, logging_steps=50, save_strategy="no", report_to="none", bf16=False,
            gradient_checkpointing=False, seed=args.seed,
        )
        trainer = SFTTrainer(model=model, args=config, train_dataset=train, processing_class=processor)
        trainer.train()
    manifest = {
        "base_model": None,
        "method": "pretrain",
        "trainable_parameters": sum(p.numel() for p in model.parameters()),
        "data": {"dataset": "forgetbench lab upstream train splits + 'Say <word>.' rows", "rows": len(train)},
        "seed": args.seed,
        "steps": args.steps,
        "versions": library_versions(),
    }
    save_model(model, processor, args.out, manifest)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
