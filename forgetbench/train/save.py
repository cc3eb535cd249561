"""Saving what a recipe trained: the merged model that stock lmms-eval wrappers load, the PEFT adapter if any, and
the manifest, all-or-nothing (:func:`forgetbench.checkpoint.write_model_folder`)."""

from __future__ import annotations

from pathlib import Path

from forgetbench.checkpoint import manifest_bytes, manifest_path, write_model_folder


def _unwrap_modules_to_save(model):
    """Replace PEFT's ModulesToSaveWrapper by its trained copy (for a soft-prompt model, which cannot merge)."""
    from peft.utils import ModulesToSaveWrapper

    for name, module in list(model.named_modules()):
        if isinstance(module, ModulesToSaveWrapper):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, module.modules_to_save[module.active_adapter])
    return model


def merge_adapter_into_base(adapter_dir: Path, base_path: str, dtype=None):
    """Load the base model in full precision, apply the saved adapter, merge. QLoRA trains its adapter against
    4-bit weights; merging into dequantized 4-bit weights would bake the quantization error into every layer, so
    the merge goes into the original full-precision base instead (the usual QLoRA practice)."""
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    base = AutoModelForImageTextToText.from_pretrained(base_path, dtype=dtype or "auto")
    return PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()


def save_checkpoint(model, processor, out_dir: Path, manifest: dict, merge_from_base: str | None = None) -> None:
    """Write the merged model, the PEFT adapter if any, and the manifest into ``out_dir``.

    A PEFT model is merged in memory, or, with ``merge_from_base`` (QLoRA), into a fresh full-precision load of
    that base. A soft prompt (prompt tuning) cannot be merged: the top level then holds the base model (with any
    fully tuned modules) and ``adapter/`` holds the prompt.
    """

    def write(staging: Path) -> None:
        merged = model
        if hasattr(model, "peft_config"):
            model.save_pretrained(staging / "adapter")
            if not manifest.get("merged", True):
                merged = _unwrap_modules_to_save(model.get_base_model())
            elif merge_from_base is not None:
                merged = merge_adapter_into_base(staging / "adapter", merge_from_base, manifest.get("merge_dtype"))
            else:
                merged = model.merge_and_unload()
        merged.save_pretrained(staging, safe_serialization=True)
        processor.save_pretrained(staging)
        manifest_path(staging).write_bytes(manifest_bytes(manifest))

    write_model_folder(out_dir, write)


def last_complete_checkpoint(output_dir) -> str | None:
    """The newest ``checkpoint-N`` that was fully written (the Trainer writes ``trainer_state.json`` last, so a
    run killed mid-save leaves a folder without it)."""
    complete = [f for f in Path(output_dir).glob("checkpoint-*")
                if f.name.rpartition("-")[2].isdigit() and (f / "trainer_state.json").is_file()]
    return str(max(complete, key=lambda f: int(f.name.rpartition("-")[2]))) if complete else None


def sharded(trainer) -> bool:
    """Whether each rank holds only a shard of the weights (FSDP or DeepSpeed ZeRO-3)."""
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    return bool(trainer.is_fsdp_enabled or (plugin is not None and plugin.zero_stage == 3))


def gather_for_merge(trainer, out_dir: Path, model_path: str, dtype):
    """FSDP / ZeRO-3: the full weights (or the adapter) are gathered to rank 0 by the Trainer's own save (a
    collective call: every rank enters it), then loaded back on rank 0 for the merge. Returns the model on rank 0,
    None elsewhere; the caller removes :func:`gathered_dir` after saving. Written for GPU clusters and not
    exercised by the CPU tests."""
    from transformers import AutoModelForImageTextToText

    gathered = gathered_dir(out_dir)
    trainer.save_model(str(gathered))
    trainer.accelerator.wait_for_everyone()
    if not trainer.accelerator.is_main_process:
        return None
    if (gathered / "adapter_config.json").is_file():
        from peft import PeftModel

        base = AutoModelForImageTextToText.from_pretrained(model_path, dtype=dtype or "auto")
        return PeftModel.from_pretrained(base, str(gathered))
    return AutoModelForImageTextToText.from_pretrained(str(gathered), dtype=dtype or "auto")


def gathered_dir(out_dir: Path) -> Path:
    return Path(out_dir).parent / f".{Path(out_dir).name}.gathered"
