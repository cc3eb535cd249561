"""Saving what a recipe trained: the merged model that stock lmms-eval wrappers load, the PEFT adapter if any, and
the manifest, all-or-nothing (:func:`forgetbench.checkpoint.write_model_folder`)."""

from __future__ import annotations

import os
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
        merged.save_pretrained(staging)  # transformers 5 writes safetensors only (no switch left)
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


def _launched_with_fsdp() -> bool:
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def fsdp_wrap_classes(model) -> list[str]:
    """The layer classes FSDP's transformer-based wrap should shard: those of the model's ``_no_split_modules``
    that occur in it. transformers collects ``_no_split_modules`` from every sub-model's class, so a LLaVA names
    ``CLIPTextEmbeddings`` although its CLIP is vision-only, and accelerate refuses a named class it cannot find
    ("Could not find the transformer layer class CLIPTextEmbeddings in the model"): the shipped
    ``recipes/accelerate/fsdp.yaml`` could not start on any LLaVA-1.5 without this."""
    present = {type(module).__name__ for module in model.modules()}
    return sorted(name for name in (getattr(model, "_no_split_modules", None) or ()) if name in present)


def configure_fsdp_wrap(model) -> list[str] | None:
    """Under an FSDP launch with ``TRANSFORMER_BASED_WRAP`` and no class list of the user's, name the classes
    (:func:`fsdp_wrap_classes`) in the environment variable accelerate's FSDP plugin reads when the Trainer builds
    it; returns them, or None when there is nothing to set."""
    if not _launched_with_fsdp() or os.environ.get("FSDP_TRANSFORMER_CLS_TO_WRAP"):
        return None
    if os.environ.get("FSDP_AUTO_WRAP_POLICY", "NO_WRAP").upper() != "TRANSFORMER_BASED_WRAP":
        return None
    classes = fsdp_wrap_classes(model)
    if classes:
        os.environ["FSDP_TRANSFORMER_CLS_TO_WRAP"] = ",".join(classes)
    return classes or None


def distributed_refusal(trainer) -> str | None:
    """Why the processes the launcher started do not train as it was asked, or None. Checked before training:
    accelerate falls back without a word in both cases.

    - an FSDP launch (``ACCELERATE_USE_FSDP``) on CPU: accelerate 1.15 turns FSDP on only for GPU-like devices, so
      CPU processes train with plain DDP, and nothing is sharded;
    - several processes (``WORLD_SIZE``) of which each trains alone (no GPU and no ``--use_cpu true``): every
      process trains on all the data and all of them write the same output folder."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world > 1 and trainer.accelerator.num_processes == 1:
        return (f"the launcher started {world} processes but each trains alone (accelerate found no GPU and "
                "--use_cpu is not true): pass --use_cpu true for data-parallel training on CPU")
    if _launched_with_fsdp() and not trainer.is_fsdp_enabled:
        return (f"the accelerate config asks for FSDP but accelerate set up {trainer.accelerator.distributed_type}: "
                "accelerate 1.15 applies FSDP only on GPUs (CPU processes would train unsharded, with DDP); on CPU "
                "use recipes/accelerate/cpu_ddp.yaml")
    return None


def distributed_entry(trainer) -> dict:
    """How the run was distributed, for the manifest: accelerate's distributed type, the process count and, for
    FSDP, its version and the classes it wrapped.

    >>> class _Acc: distributed_type, num_processes, state = "DistributedType.NO", 1, None
    >>> class _Trainer: accelerator, is_fsdp_enabled = _Acc(), False
    >>> distributed_entry(_Trainer())
    {'type': 'NO', 'processes': 1}
    """
    entry = {"type": str(trainer.accelerator.distributed_type).removeprefix("DistributedType."),
             "processes": trainer.accelerator.num_processes}
    if trainer.is_fsdp_enabled:
        plugin = trainer.accelerator.state.fsdp_plugin
        entry["fsdp_version"] = plugin.fsdp_version
        entry["wrapped"] = sorted(plugin.transformer_cls_names_to_wrap or [])
    return entry


# Module names that wrappers insert into parameter names: torch's activation-checkpoint wrapper (applied by
# accelerate's fsdp_activation_checkpointing), FSDP1's wrapper, torch.compile.
WRAPPER_PREFIXES = ("_checkpoint_wrapped_module.", "_fsdp_wrapped_module.", "_orig_mod.")


def unwrapped_names(state_dict: dict) -> dict:
    """The state dict under the names the unwrapped model has.

    >>> list(unwrapped_names({"model.layers.0._checkpoint_wrapped_module.mlp.lora_A.weight": 1}))
    ['model.layers.0.mlp.lora_A.weight']
    """
    out = {}
    for name, value in state_dict.items():
        for prefix in WRAPPER_PREFIXES:
            name = name.replace(prefix, "")
        out[name] = value
    return out


class GatherError(RuntimeError):
    """The gathered weights do not fit the model they came from; one line."""


def gather_for_merge(trainer, model_path: str, dtype):
    """FSDP / ZeRO-3: the full weights are gathered to rank 0 (a collective call: every rank enters it), renamed
    to the unwrapped model's names, and loaded strictly into a fresh copy of the base model (with the run's PEFT
    config applied for an adapter method), which is what gets merged and saved. Returns that model on rank 0, None
    elsewhere.

    Not the Trainer's ``save_model`` and a reload, which is what this did before it was ever run: accelerate's
    ``fsdp_activation_checkpointing`` (on in the shipped ``recipes/accelerate/fsdp.yaml``) wraps layers, and PEFT
    0.21 picks adapter weights by the wrapped module names, so the gathered adapter was written with no weights,
    the reload only warned ("Found missing adapter keys"), and the merged checkpoint was the base model, bit for
    bit. A strict load refuses any such loss. Exercised with FSDP2 in 2 CPU processes by
    tests/test_distributed.py; ZeRO-3 is not."""
    import copy

    from transformers import AutoModelForImageTextToText

    accelerator = trainer.accelerator
    wrapped = trainer.model_wrapped if trainer.is_deepspeed_enabled else trainer.model
    state_dict = unwrapped_names(accelerator.get_state_dict(wrapped))  # the gather: every rank takes part
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return None
    trained = accelerator.unwrap_model(trainer.model)
    model = AutoModelForImageTextToText.from_pretrained(model_path, dtype=dtype or "auto")
    if hasattr(trained, "peft_config"):
        from peft import get_peft_model

        model = get_peft_model(model, copy.deepcopy(trained.peft_config[trained.active_adapter]))
    try:
        result = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as exc:  # a shape that does not fit
        raise GatherError(f"the gathered weights do not fit the model: {str(exc).splitlines()[-1].strip()}") from None
    missing, unexpected = sorted(result.missing_keys), sorted(result.unexpected_keys)
    if missing or unexpected:
        raise GatherError(f"the gathered weights do not fit the model: {len(missing)} missing, {len(unexpected)} "
                          f"unexpected (e.g. {(missing or unexpected)[0]})")
    return model
