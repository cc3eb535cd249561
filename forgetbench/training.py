"""What every recipe shares: the data, the trainer, the checkpoint and its manifest.

A recipe (``recipes/<method>.py``) parses TRL's ``ScriptArguments``/``SFTConfig``/``ModelConfig`` plus
:class:`ForgetbenchArguments` and calls :func:`run_recipe`; the method-specific part lives in
:mod:`forgetbench.methods`.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

MANIFEST_NAME = "forgetbench_manifest.json"
LAB_TASK_PREFIX = "forgetbench_lab_"
LAB_MODEL_ALIAS = "forgetbench-lab"


class RecipeError(Exception):
    """Bad input or a failed run: the recipe prints it as one line and exits 2."""


class TrainingDiverged(RecipeError):
    """The loss, gradient norm or weights became NaN or infinite."""


@dataclass
class ForgetbenchArguments:
    method: str | None = field(
        default=None, metadata={"help": "tuning method, a key of forgetbench.methods.METHODS (each recipe sets it)"}
    )
    tune_projector: bool = field(default=False, metadata={"help": "also tune the vision-language projector"})
    tune_vision_tower: bool = field(default=False, metadata={"help": "also tune the vision tower (frozen otherwise)"})
    top_k: int = field(default=2, metadata={"help": "top_layers: how many of the top decoder layers to tune"})
    num_virtual_tokens: int = field(default=16, metadata={"help": "prompt_tuning: length of the soft prompt"})
    max_train_samples: int | None = field(
        default=None, metadata={"help": "use only the first N training rows (after a seeded shuffle)"}
    )
    data_files: str | None = field(
        default=None,
        metadata={"help": "a local parquet copy of a suite task's split, read instead of the hub (air-gapped)"},
    )


def load_sft_dataset(name: str, split: str = "train", config: str | None = None, data_files: str | None = None):
    """Training rows in TRL's vision-language format (``images`` + ``messages``).

    ``name`` is a forgetbench task (its train split, asked with the very prompt its evaluation uses: a lab task
    or any task of :data:`forgetbench.suite.TASKS`), a folder written by ``datasets.save_to_disk``, or a hub
    dataset id already in that format. ``data_files`` points a suite task at a local copy of its split.
    """
    import datasets

    from forgetbench import suite

    if name in suite.TASKS:
        return suite.train_conversations(name, split, data_files=data_files)
    if data_files is not None:
        raise ValueError(f"--data_files is for forgetbench suite tasks; {name!r} is not one")
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
    """Trainable parameter count per architectural part (vision_tower, projector, decoder_layers, llm_other,
    lm_head; ``other`` for parameters outside the base model, e.g. a soft prompt)."""
    from forgetbench.architectures import architecture_of, bare_name

    arch = architecture_of(model)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    counts: dict[str, int] = {}
    inside = set()
    for name, param in base.named_parameters():
        inside.add(id(param))
        if param.requires_grad:
            part = arch.part_of(bare_name(name))
            counts[part] = counts.get(part, 0) + param.numel()
    outside = sum(p.numel() for p in model.parameters() if p.requires_grad and id(p) not in inside)
    return counts | ({"other": outside} if outside else {})


def trainable_names(model) -> list[str]:
    return [name for name, param in model.named_parameters() if param.requires_grad]


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for package in ("forgetbench", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            continue
    return found


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
    """Write the merged model that stock lmms-eval wrappers load, the PEFT adapter if any, and the manifest.

    A PEFT model is merged in memory, or, with ``merge_from_base`` (QLoRA), into a fresh full-precision load of
    that base. A soft prompt (prompt tuning) cannot be merged: the top level then holds the base model (with any
    fully tuned modules) and ``adapter/`` holds the prompt. Everything is written to a sibling temporary folder
    first and moved into place, so a crash never leaves a folder that looks like a finished checkpoint.
    """
    out_dir = Path(out_dir)
    staging = out_dir.parent / f".{out_dir.name}.saving"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    if hasattr(model, "peft_config"):
        model.save_pretrained(staging / "adapter")
        if not manifest.get("merged", True):
            model = _unwrap_modules_to_save(model.get_base_model())
        elif merge_from_base is not None:
            model = merge_adapter_into_base(staging / "adapter", merge_from_base, manifest.get("merge_dtype"))
        else:
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


def last_complete_checkpoint(output_dir) -> str | None:
    """The newest ``checkpoint-N`` that was fully written (the Trainer writes ``trainer_state.json`` last, so a
    run killed mid-save leaves a folder without it)."""
    complete = [f for f in Path(output_dir).glob("checkpoint-*")
                if f.name.rpartition("-")[2].isdigit() and (f / "trainer_state.json").is_file()]
    return str(max(complete, key=lambda f: int(f.name.rpartition("-")[2]))) if complete else None


def _resume_target(training_args) -> str | None:
    """``--resume_from_checkpoint last`` picks the newest complete checkpoint in ``output_dir``."""
    target = training_args.resume_from_checkpoint
    if target in ("last", "latest", "True", "true"):
        found = last_complete_checkpoint(training_args.output_dir)
        if found is None:
            raise RecipeError(f"--resume_from_checkpoint {target}: no complete checkpoint in "
                              f"{training_args.output_dir}")
        return found
    if target is not None and not Path(target).is_dir():
        raise RecipeError(f"--resume_from_checkpoint {target}: no such checkpoint folder")
    return target


def _callbacks():
    from transformers import TrainerCallback

    class DivergenceGuard(TrainerCallback):
        """Stops training at the first non-finite loss or gradient norm (checked at every log, so within one
        logging step) and never lets a checkpoint with non-finite weights be written: the last checkpoint on
        disk stays the last good one."""

        def __init__(self):
            self.diverged: str | None = None

        def _stop(self, state, control, what: str):
            first = self.diverged is None or self.diverged.startswith(f"step {state.global_step}:")
            if first:  # every symptom of the first bad step, in one line
                self.diverged = f"{self.diverged}, {what}" if self.diverged else f"step {state.global_step}: {what}"
            control.should_training_stop = True
            control.should_save = False

        def on_log(self, args, state, control, logs=None, **kwargs):
            bad = [f"{k} {logs[k]}" for k in ("loss", "grad_norm")
                   if isinstance(logs.get(k), (int, float)) and not math.isfinite(logs[k])]
            if bad:
                self._stop(state, control, ", ".join(bad))

        def on_step_end(self, args, state, control, model=None, **kwargs):
            # A save can fall between two logs: check the weights it would write.
            if control.should_save and model is not None:
                import torch

                if not all(torch.isfinite(p).all() for p in model.parameters() if p.requires_grad):
                    self._stop(state, control, "non-finite trainable weights")

    class InjectNaN(TrainerCallback):
        """Fault injection for the tests: FORGETBENCH_FAULT_NAN_AT_STEP=N poisons a trainable weight before
        step N, so step N's loss is NaN."""

        def __init__(self, step: int):
            self.step = step

        def on_step_begin(self, args, state, control, model=None, **kwargs):
            if state.global_step + 1 == self.step:
                next(p for p in model.parameters() if p.requires_grad).data.fill_(float("nan"))

    guard = DivergenceGuard()
    callbacks = [guard]
    if os.environ.get("FORGETBENCH_FAULT_NAN_AT_STEP"):
        callbacks.append(InjectNaN(int(os.environ["FORGETBENCH_FAULT_NAN_AT_STEP"])))
    return guard, callbacks


def load_model(model_path: str, method, model_args, training_args):
    """The base model, in 4-bit for QLoRA; returns (model, dtype a full-precision reload should use)."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    from forgetbench.methods import quantization_config

    dtype = model_args.dtype if model_args.dtype in (None, "auto") else getattr(torch, model_args.dtype)
    kwargs = {"dtype": dtype or "auto"}
    if method.quantize_4bit:
        config = AutoConfig.from_pretrained(model_path)
        compute = torch.bfloat16 if training_args.bf16 else torch.float16 if training_args.fp16 else torch.float32
        kwargs["quantization_config"] = quantization_config(method, config.architectures[0], model_args, compute)
        if torch.cuda.is_available():  # bitsandbytes places each process's copy on its own GPU
            from accelerate import PartialState

            kwargs["device_map"] = {"": PartialState().local_process_index}
    return AutoModelForImageTextToText.from_pretrained(model_path, **kwargs), dtype


def _save_rank_state(model, out_dir: Path) -> None:
    """Test hook (FORGETBENCH_SAVE_RANK_STATE=1): every rank writes its trainable weights, to compare ranks."""
    import torch
    import torch.distributed as dist

    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}
    torch.save(state, out_dir / f"rank{rank}.pt")


def _sharded(trainer) -> bool:
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    return bool(trainer.is_fsdp_enabled or (plugin is not None and plugin.zero_stage == 3))


def _gather(trainer, out_dir: Path, model_path: str, dtype):
    """FSDP / ZeRO-3: each rank holds a shard, so the full weights (or the adapter) are gathered to rank 0 by the
    Trainer's own save (a collective call: every rank enters it), then loaded back on rank 0 for the merge.
    Written for GPU clusters and not exercised by the CPU tests."""
    from transformers import AutoModelForImageTextToText

    gathered = out_dir.parent / f".{out_dir.name}.gathered"
    trainer.save_model(str(gathered))
    trainer.accelerator.wait_for_everyone()
    if not trainer.accelerator.is_main_process:
        return None
    if (gathered / "adapter_config.json").is_file():
        from peft import PeftModel

        base = AutoModelForImageTextToText.from_pretrained(model_path, dtype=dtype or "auto")
        return PeftModel.from_pretrained(base, str(gathered))
    return AutoModelForImageTextToText.from_pretrained(str(gathered), dtype=dtype or "auto")


def run_recipe(script_args, training_args, model_args, forgetbench_args: ForgetbenchArguments) -> Path:
    """Fine-tune ``model_args.model_name_or_path`` with one method on one dataset; returns the checkpoint folder."""
    from transformers import AutoProcessor, set_seed
    from trl import SFTTrainer

    from forgetbench.methods import MethodError, get_method, prepare

    if forgetbench_args.method is None:
        raise RecipeError("--method: not set (run a recipe, recipes/<method>.py, which sets it)")
    try:
        method = get_method(forgetbench_args.method)
    except MethodError as exc:
        raise RecipeError(f"--method: {exc}") from None
    resume = _resume_target(training_args)
    # The Trainer's default filter replaces a NaN/inf loss by the running mean in the logs, hiding divergence.
    training_args.logging_nan_inf_filter = False
    set_seed(training_args.seed)
    model_path = resolve_model(model_args.model_name_or_path)
    try:
        processor = AutoProcessor.from_pretrained(model_path)
        model, dtype = load_model(model_path, method, model_args, training_args)
    except OSError as exc:
        raise RecipeError(f"--model_name_or_path {model_args.model_name_or_path}: cannot load ({exc})") from None
    try:
        peft_config = prepare(model, method, model_args, forgetbench_args)
    except (MethodError, ValueError) as exc:
        raise RecipeError(str(exc)) from None

    try:
        train = load_sft_dataset(script_args.dataset_name, script_args.dataset_train_split,
                                 script_args.dataset_config, forgetbench_args.data_files)
    except Exception as exc:  # datasets raises many kinds; the user needs to know which input was wrong
        raise RecipeError(f"--dataset_name {script_args.dataset_name}: cannot load "
                          f"(split {script_args.dataset_train_split}): {type(exc).__name__}: {exc}") from None
    if forgetbench_args.max_train_samples is not None:
        keep = min(forgetbench_args.max_train_samples, len(train))
        train = train.shuffle(seed=training_args.seed).select(range(keep))

    guard, callbacks = _callbacks()
    trainer = SFTTrainer(model=model, args=training_args, train_dataset=train, processing_class=processor,
                         peft_config=peft_config, callbacks=callbacks)
    trained_parts = parts_trained(trainer.model)
    trainer.train(resume_from_checkpoint=resume)
    out_dir = Path(training_args.output_dir)
    if guard.diverged:
        last = last_complete_checkpoint(out_dir)
        raise TrainingDiverged(
            f"training diverged at {guard.diverged}; stopped without saving. Last good checkpoint: "
            + (f"{last} (resume with --resume_from_checkpoint {last}, e.g. at a lower learning rate)" if last
               else "none (set save_strategy: steps to keep one)")
        )
    if os.environ.get("FORGETBENCH_SAVE_RANK_STATE"):
        _save_rank_state(trainer.model, out_dir)

    model = trainer.accelerator.unwrap_model(trainer.model)
    if _sharded(trainer):
        model = _gather(trainer, out_dir, model_path, dtype)

    if trainer.accelerator.is_main_process:
        manifest = {
            "base_model": model_args.model_name_or_path,
            "base_model_path": model_path,
            "method": method.name,
            "method_family": method.family,
            "tuned": {"tune_projector": forgetbench_args.tune_projector,
                      "tune_vision_tower": forgetbench_args.tune_vision_tower,
                      **({"top_k": forgetbench_args.top_k} if method.name == "top_layers" else {}),
                      **({"peft": peft_config.to_dict()} if peft_config is not None else {})},
            "trainable_parameters": sum(trained_parts.values()),
            "trainable_parameters_by_part": trained_parts,
            "trainable_parameter_names": trainable_names(trainer.model),
            "total_parameters": sum(p.numel() for p in trainer.model.parameters()),
            "quantization": "bitsandbytes 4-bit (LLM decoder layers)" if method.quantize_4bit else None,
            "merged": method.mergeable,
            "merge": ("none: a soft prompt cannot be folded into weights; load adapter/ with PEFT" if not
                      method.mergeable else "adapter merged into a full-precision reload of the base" if
                      method.quantize_4bit else "in memory" if peft_config is not None else "not needed"),
            "data": {"dataset": script_args.dataset_name, "split": script_args.dataset_train_split, "rows": len(train)},
            "seed": training_args.seed,
            "steps": trainer.state.global_step,
            "final_train_loss": next(
                (log["train_loss"] for log in reversed(trainer.state.log_history) if "train_loss" in log), None
            ),
            "losses": [[log["step"], log["loss"]] for log in trainer.state.log_history if "loss" in log],
            "train_seconds": next(
                (log["train_runtime"] for log in reversed(trainer.state.log_history) if "train_runtime" in log), None
            ),
            "versions": library_versions(),
        }
        if method.quantize_4bit:
            manifest["merge_dtype"] = None if dtype in (None, "auto") else str(dtype).removeprefix("torch.")
        save_checkpoint(model, processor, out_dir, manifest,
                        merge_from_base=model_path if method.quantize_4bit else None)
        shutil.rmtree(out_dir.parent / f".{out_dir.name}.gathered", ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    return out_dir


def recipe_main(method: str, argv: list[str] | None = None) -> None:
    """The whole of a recipe: parse TRL's and forgetbench's arguments (``--config`` YAML plus overrides), train
    ``method``; bad input or divergence ends the process with a one-line message and exit status 2."""
    from trl import ModelConfig, ScriptArguments, SFTConfig, TrlParser

    parser = TrlParser((ScriptArguments, SFTConfig, ModelConfig, ForgetbenchArguments))
    script_args, training_args, model_args, forgetbench_args = parser.parse_args_and_config(args=argv)
    if forgetbench_args.method not in (None, method):
        print(f"recipes/{method}.py: error: --method {forgetbench_args.method} names another method; run "
              f"recipes/{forgetbench_args.method}.py", file=sys.stderr)
        sys.exit(2)
    forgetbench_args.method = method
    try:
        run_recipe(script_args, training_args, model_args, forgetbench_args)
    except RecipeError as exc:
        print(f"recipes/{method}.py: error: {exc}", file=sys.stderr)
        sys.exit(2)
