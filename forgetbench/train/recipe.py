"""What every recipe shares: the arguments, the model, the trainer, and the checkpoint with its manifest.

A recipe (``recipes/<method>.py``) parses TRL's ``ScriptArguments``/``SFTConfig``/``ModelConfig`` plus
:class:`ForgetbenchArguments` and calls :func:`run_recipe`; the method-specific part lives in
:mod:`forgetbench.train.methods`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from forgetbench.checkpoint import library_versions, resolve_model
from forgetbench.train.data import load_sft_dataset, with_replay
from forgetbench.train.save import (
    GatherError,
    configure_fsdp_wrap,
    distributed_entry,
    distributed_refusal,
    gather_for_merge,
    last_complete_checkpoint,
    save_checkpoint,
    sharded,
)

# bitsandbytes quantizes 4-bit weights in blocks of 64 values along a linear layer's input; its AVX-512 CPU path
# cannot run a layer whose input is not a whole number of blocks.
QUANTIZATION_BLOCK = 64


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
    probe_every: int | None = field(
        default=None, metadata={"help": "forgetting probe: score the probe tasks every N steps (docs/recipes.md)"}
    )
    probe_limit: int = field(default=32, metadata={"help": "forgetting probe: documents per task"})
    probe_tasks: str | None = field(
        default=None, metadata={"help": "forgetting probe: upstream tasks a,b (default: the dataset task's family's)"}
    )
    forgetting_budget: float | None = field(
        default=None, metadata={"help": "stop when F is below -P points with 95%% confidence; keep the last state "
                                        "within budget (turns the probe on)"}
    )
    # Mitigations of forgetting (docs/mitigations.md; checked by forgetbench.train.mitigations.plan_mitigations).
    replay_tasks: str | None = field(
        default=None, metadata={"help": "replay: registered tasks a,b whose train rows are mixed into the data"}
    )
    replay_ratio: float | None = field(
        default=None, metadata={"help": "replay: the share of replay rows in the training stream, in (0, 1)"}
    )
    kl_weight: float | None = field(
        default=None, metadata={"help": "anchor: weight of KL(base || tuned) on the answer tokens (LwF); 0 logs it"}
    )
    l2sp_weight: float | None = field(
        default=None, metadata={"help": "anchor: weight of ||theta - theta_0||^2 over trainable parameters (L2-SP)"}
    )
    wise_alphas: str | None = field(
        default=None, metadata={"help": "WiSE-FT: alphas a,b in [0, 1]; writes OUTPUT_DIR/wise-<alpha>/ checkpoints"}
    )
    skip_bad_rows: bool = field(
        default=False, metadata={"help": "train without the rows whose images cannot be read (refused otherwise); "
                                         "the manifest records them under skipped_rows"}
    )


def parts_trained(model) -> dict[str, int]:
    """Trainable parameter count per architectural part (vision_tower, projector, decoder_layers, llm_other,
    lm_head; ``other`` for parameters outside the base model, e.g. a soft prompt)."""
    from forgetbench.train.architectures import architecture_of, bare_name

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


def check_quantizable(model_path: str, method, label: str) -> None:
    """On CPU, refuse a QLoRA model with an LLM linear layer that bitsandbytes' 4-bit kernels cannot run (input
    width not a multiple of the 64-value block), before anything is loaded. Every CPU is held to it, so a run
    behaves the same whatever the instruction set."""
    import torch
    from transformers import AutoConfig

    from forgetbench.train.architectures import ARCHITECTURES

    if not method.quantize_4bit or torch.cuda.is_available():
        return
    config = AutoConfig.from_pretrained(model_path)
    arch = ARCHITECTURES.get((config.architectures or [""])[0])
    text = config.get_text_config()
    if arch is None:
        return  # prepare() names the unknown architecture
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    inputs = {"self_attn.q_proj": text.hidden_size, "self_attn.o_proj": text.num_attention_heads * head_dim,
              "mlp.down_proj": text.intermediate_size}
    for module, width in inputs.items():
        if width % QUANTIZATION_BLOCK:
            raise RecipeError(
                f"{label}: {arch.layers}.0.{module} has {width} input features, not a multiple of bitsandbytes' "
                f"{QUANTIZATION_BLOCK}-value 4-bit block, so its CPU kernels cannot run it; fix: use recipes/lora.py "
                f"(LoRA without quantization) or a GPU")


def load_model(model_path: str, method, model_args, training_args):
    """The base model, in 4-bit for QLoRA; returns (model, dtype a full-precision reload should use)."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    from forgetbench.train.methods import quantization_config

    dtype = model_args.dtype if model_args.dtype in (None, "auto") else getattr(torch, model_args.dtype)
    from forgetbench.train.checks import trusts_remote_code

    # Weights load from safetensors only (a pickled .bin is refused); remote code runs only when asked.
    remote = trusts_remote_code(training_args, model_args)
    kwargs = {"dtype": dtype or "auto", "use_safetensors": True, "trust_remote_code": remote}
    if method.quantize_4bit:
        config = AutoConfig.from_pretrained(model_path, trust_remote_code=remote)
        compute = torch.bfloat16 if training_args.bf16 else torch.float16 if training_args.fp16 else torch.float32
        kwargs["quantization_config"] = quantization_config(method, config.architectures[0], model_args, compute)
        if torch.cuda.is_available():  # bitsandbytes places each process's copy on its own GPU
            from accelerate import PartialState

            kwargs["device_map"] = {"": PartialState().local_process_index}
    return AutoModelForImageTextToText.from_pretrained(model_path, **kwargs), dtype


def run_recipe(script_args, training_args, model_args, forgetbench_args: ForgetbenchArguments,
               callbacks: Sequence = (), on_checked: Callable[[], None] | None = None) -> Path:
    """Fine-tune ``model_args.model_name_or_path`` with one method on one dataset; returns the checkpoint folder.

    ``callbacks``: extra ``TrainerCallback`` objects, after forgetbench's own divergence guard. ``on_checked``:
    called once everything that needs no model has been checked, right before the model loads."""
    from transformers import AutoProcessor, set_seed
    from trl import SFTTrainer

    from forgetbench.train.callbacks import DivergenceGuard
    from forgetbench.train.methods import MethodError, get_method, prepare

    if forgetbench_args.method is None:
        raise RecipeError("--method: not set (run a recipe, recipes/<method>.py, which sets it)")
    try:
        method = get_method(forgetbench_args.method)
    except MethodError as exc:
        raise RecipeError(f"--method: {exc}") from None
    from forgetbench.train.mitigations import anchored_trainer, manifest_entry, plan_mitigations, write_wise_checkpoints

    mitigations = plan_mitigations(forgetbench_args, method, script_args.dataset_name)
    resume = _resume_target(training_args)
    from forgetbench.train.probe import forgetting_probe

    probe = forgetting_probe(forgetbench_args, script_args.dataset_name, resume)  # None when off
    # Everything that needs no model is checked before one loads (docs/faults.md): values, the model's config,
    # the training rows and every image in them.
    from forgetbench.suite.images import UnreadableRows
    from forgetbench.train.checks import check_model_config, check_values, one_line, trusts_remote_code, unwritten

    check_values(script_args, training_args, model_args, forgetbench_args)
    model_path = resolve_model(model_args.model_name_or_path)
    remote_code = trusts_remote_code(training_args, model_args)
    check_model_config(model_path, model_args, method, forgetbench_args, remote_code)
    check_quantizable(model_path, method, f"--model_name_or_path {model_args.model_name_or_path}")
    skipped: list[UnreadableRows] = []
    try:
        train = load_sft_dataset(script_args.dataset_name, script_args.dataset_train_split,
                                 script_args.dataset_config, forgetbench_args.data_files,
                                 on_bad_rows=skipped.append if forgetbench_args.skip_bad_rows else None)
    except UnreadableRows as exc:
        raise RecipeError(f"--dataset_name {script_args.dataset_name}: {exc}; pass --skip_bad_rows to train "
                          "without them") from None
    except Exception as exc:  # datasets raises many kinds; the user needs to know which input was wrong
        raise RecipeError(f"--dataset_name {script_args.dataset_name}: cannot load "
                          f"(split {script_args.dataset_train_split}): {type(exc).__name__}: {one_line(exc)}") from None
    if forgetbench_args.max_train_samples is not None:
        keep = min(forgetbench_args.max_train_samples, len(train))
        train = train.shuffle(seed=training_args.seed).select(range(keep))
    replay_rows = None
    if mitigations.replay_tasks:
        try:
            train, replay_rows = with_replay(train, mitigations.replay_tasks, mitigations.replay_ratio,
                                             training_args.seed)
        except ValueError as exc:
            raise RecipeError(f"--replay_tasks {exc}") from None
    if on_checked is not None:
        on_checked()

    # The Trainer's default filter replaces a NaN/inf loss by the running mean in the logs, hiding divergence.
    training_args.logging_nan_inf_filter = False
    set_seed(training_args.seed)
    try:
        processor = AutoProcessor.from_pretrained(model_path, trust_remote_code=remote_code)
        model, dtype = load_model(model_path, method, model_args, training_args)
    except (OSError, ValueError) as exc:  # huggingface_hub's HFValidationError is a ValueError
        raise RecipeError(f"--model_name_or_path {model_args.model_name_or_path}: cannot load "
                          f"({one_line(exc)})") from None
    try:
        peft_config = prepare(model, method, model_args, forgetbench_args)
    except (MethodError, ValueError) as exc:
        raise RecipeError(str(exc)) from None

    configure_fsdp_wrap(model)  # read by accelerate's FSDP plugin, which the Trainer builds next
    guard = DivergenceGuard()
    trainer_class = anchored_trainer(mitigations) if mitigations.anchored else SFTTrainer
    trainer = trainer_class(model=model, args=training_args, train_dataset=train, processing_class=processor,
                            peft_config=peft_config, callbacks=[guard, *callbacks, *([probe] if probe else [])])
    if probe:
        probe.trainer = trainer  # it logs through the trainer
    refusal = distributed_refusal(trainer)
    if refusal:
        raise RecipeError(refusal)
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
    model = trainer.accelerator.unwrap_model(trainer.model)
    if sharded(trainer):
        try:
            model = gather_for_merge(trainer, model_path, dtype)
        except GatherError as exc:
            raise RecipeError(f"{exc}; nothing was saved in {out_dir}") from None

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
            "skipped_rows": skipped[0].manifest_entry() if skipped else None,
            "trust_remote_code": remote_code,
            "mitigations": manifest_entry(mitigations, trainer, replay_rows),
            "seed": training_args.seed,
            "distributed": distributed_entry(trainer),
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
        if probe:
            manifest["probe"] = probe.manifest_entry()
        if method.quantize_4bit:
            manifest["merge_dtype"] = None if dtype in (None, "auto") else str(dtype).removeprefix("torch.")
        from safetensors import SafetensorError  # what safetensors raises for a full disk

        try:  # all-or-nothing: a failure removes the staging folder and leaves out_dir as it was
            save_checkpoint(model, processor, out_dir, manifest,
                            merge_from_base=model_path if method.quantize_4bit else None)
        except (OSError, SafetensorError) as exc:
            raise RecipeError(unwritten(out_dir, exc, "the checkpoint was not saved and what the folder held is "
                                                      "unchanged")) from None
        try:
            write_wise_checkpoints(out_dir, model_path, mitigations.wise_alphas)  # also clears an earlier run's
        except (OSError, SafetensorError) as exc:
            raise RecipeError(unwritten(out_dir, exc, "the checkpoint is saved, its WiSE-FT checkpoints are "
                                                      "not")) from None
    trainer.accelerator.wait_for_everyone()
    return out_dir


def recipe_main(method: str, argv: list[str] | None = None, callbacks: Sequence = ()) -> None:
    """The whole of a recipe: parse TRL's and forgetbench's arguments (``--config`` YAML plus overrides), train
    ``method``; bad input or divergence ends the process with a one-line message and exit status 2.
    ``callbacks``: extra ``TrainerCallback`` objects (see :func:`run_recipe`).

    Until the model loads, the libraries' warnings are held back: a refused run prints its one line only."""
    from forgetbench.train.checks import HeldWarnings, argparse_error, check_config_file, parse_error

    argv = list(sys.argv[1:] if argv is None else argv)
    held = HeldWarnings()
    try:
        from trl import ModelConfig, ScriptArguments, SFTConfig, TrlParser

        parser = TrlParser((ScriptArguments, SFTConfig, ModelConfig, ForgetbenchArguments))
        parser.error = argparse_error  # one line, not argparse's usage block
        check_config_file(parser, argv)
        try:
            script_args, training_args, model_args, forgetbench_args = parser.parse_args_and_config(args=argv)
        except (ValueError, TypeError) as exc:  # HfArgumentParser's unknown options, TrainingArguments' checks
            raise RecipeError(parse_error(exc)) from None
        if forgetbench_args.method not in (None, method):
            raise RecipeError(f"--method {forgetbench_args.method} names another method; run "
                              f"recipes/{forgetbench_args.method}.py")
        forgetbench_args.method = method
        run_recipe(script_args, training_args, model_args, forgetbench_args, callbacks, on_checked=held.show)
    except RecipeError as exc:
        held.drop()  # a no-op once shown: warnings raised before training have been shown
        print(f"recipes/{method}.py: error: {exc}", file=sys.stderr)
        sys.exit(2)
    finally:
        held.show()  # anything else: the warnings may explain it
