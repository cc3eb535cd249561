"""What every recipe shares: the data, the trainer, the checkpoint and its manifest.

A recipe (``recipes/<method>.py``) parses TRL's ``ScriptArguments``/``SFTConfig``/``ModelConfig`` plus
:class:`ForgetbenchArguments` and calls :func:`run_recipe`; the method-specific part lives in
:mod:`forgetbench.methods`.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

MANIFEST_NAME = "forgetbench_manifest.json"
LAB_TASK_PREFIX = "forgetbench_lab_"
LAB_MODEL_ALIAS = "forgetbench-lab"


@dataclass
class ForgetbenchArguments:
    method: str = field(default="lora", metadata={"help": "tuning method, a key of forgetbench.methods.METHODS"})
    max_train_samples: int | None = field(
        default=None, metadata={"help": "use only the first N training rows (after a seeded shuffle)"}
    )


def load_sft_dataset(name: str, split: str = "train", config: str | None = None):
    """Training rows in TRL's vision-language format (``images`` + ``messages``).

    ``name`` is a forgetbench task (its train split, asked with the very prompt its evaluation uses), a folder
    written by ``datasets.save_to_disk``, or a hub dataset id already in that format.
    """
    import datasets

    if name.startswith(LAB_TASK_PREFIX):
        from forgetbench.lab import data
        from forgetbench.lab.tasks import to_sft_example

        rows = data.load(name[len(LAB_TASK_PREFIX) :], split)
        return datasets.Dataset.from_list([to_sft_example(doc) for doc in rows])
    if Path(name).is_dir():
        loaded = datasets.load_from_disk(name)
        return loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
    return datasets.load_dataset(name, config, split=split)


def parts_trained(model) -> dict[str, int]:
    """Trainable parameter count per architectural part (vision tower, projector, LLM layers, lm_head, other)."""
    from forgetbench.architectures import architecture_of

    arch = architecture_of(model)
    patterns = {
        "vision_tower": arch.vision_tower,
        "projector": arch.projector,
        "decoder_layers": arch.decoder_layers,
        "lm_head": arch.lm_head,
    }
    counts: dict[str, int] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        bare = re.sub(r"^(base_model\.model\.)", "", name)  # PEFT's wrapper prefix
        part = next((p for p, pattern in patterns.items() if re.match(pattern, bare)), "other")
        counts[part] = counts.get(part, 0) + param.numel()
    return counts


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for package in ("forgetbench", "torch", "transformers", "trl", "peft", "accelerate", "datasets"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            continue
    return found


def save_checkpoint(model, processor, out_dir: Path, manifest: dict) -> None:
    """Write the merged model that stock lmms-eval wrappers load, the PEFT adapter if any, and the manifest.

    Everything is written to a sibling temporary folder first and moved into place, so a crash never leaves a
    folder that looks like a finished checkpoint.
    """
    out_dir = Path(out_dir)
    staging = out_dir.parent / f".{out_dir.name}.saving"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    if hasattr(model, "merge_and_unload"):
        model.save_pretrained(staging / "adapter")
        model = model.merge_and_unload()
    model.save_pretrained(staging, safe_serialization=True)
    processor.save_pretrained(staging)
    (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    out_dir.mkdir(parents=True, exist_ok=True)
    for item in staging.iterdir():
        target = out_dir / item.name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(item, target)
    staging.rmdir()


def resolve_model(name_or_path: str) -> str:
    """``forgetbench-lab`` names the shipped lab base model; anything else goes to ``from_pretrained`` as is."""
    if name_or_path == LAB_MODEL_ALIAS:
        from forgetbench.lab.model import base_model_path

        return str(base_model_path())
    return name_or_path


def run_recipe(script_args, training_args, model_args, forgetbench_args: ForgetbenchArguments) -> Path:
    """Fine-tune ``model_args.model_name_or_path`` with one method on one dataset; returns the checkpoint folder."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor, set_seed
    from trl import SFTTrainer

    from forgetbench.architectures import architecture_of
    from forgetbench.methods import get_method

    method = get_method(forgetbench_args.method)
    set_seed(training_args.seed)
    model_path = resolve_model(model_args.model_name_or_path)
    processor = AutoProcessor.from_pretrained(model_path)
    dtype = model_args.dtype if model_args.dtype in (None, "auto") else getattr(torch, model_args.dtype)
    model = AutoModelForImageTextToText.from_pretrained(model_path, dtype=dtype or "auto")
    arch = architecture_of(model)
    peft_config = method.peft_config(arch, model_args) if method.peft_config else None

    train = load_sft_dataset(script_args.dataset_name, script_args.dataset_train_split, script_args.dataset_config)
    if forgetbench_args.max_train_samples is not None:
        keep = min(forgetbench_args.max_train_samples, len(train))
        train = train.shuffle(seed=training_args.seed).select(range(keep))

    trainer = SFTTrainer(
        model=model, args=training_args, train_dataset=train, processing_class=processor, peft_config=peft_config
    )
    trained_parts = parts_trained(trainer.model)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)

    out_dir = Path(training_args.output_dir)
    if trainer.accelerator.is_main_process:
        manifest = {
            "base_model": model_args.model_name_or_path,
            "base_model_path": model_path,
            "method": method.name,
            "method_family": method.family,
            "trainable_parameters": sum(trained_parts.values()),
            "trainable_parameters_by_part": trained_parts,
            "total_parameters": sum(p.numel() for p in trainer.model.parameters()),
            "data": {"dataset": script_args.dataset_name, "split": script_args.dataset_train_split, "rows": len(train)},
            "seed": training_args.seed,
            "steps": trainer.state.global_step,
            "final_train_loss": next(
                (log["train_loss"] for log in reversed(trainer.state.log_history) if "train_loss" in log), None
            ),
            "versions": library_versions(),
        }
        save_checkpoint(trainer.accelerator.unwrap_model(trainer.model), processor, out_dir, manifest)
    trainer.accelerator.wait_for_everyone()
    return out_dir
