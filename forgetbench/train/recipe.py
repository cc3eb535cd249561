"""What every recipe shares: the arguments, and a run as named steps.

A recipe (``recipes/<method>.py``) calls :func:`recipe_main`, which parses TRL's
``ScriptArguments``/``SFTConfig``/``ModelConfig`` plus :class:`ForgetbenchArguments` and calls :func:`run_recipe`:

1. :func:`check`: everything that needs no model (values, the model's config, the training rows, the mitigations,
   the probe), so a bad input is refused before anything heavy loads;
2. :func:`load`: the processor and the model, prepared for the method;
3. :func:`build_trainer`: TRL's SFTTrainer, or the class the mitigations substitute, with forgetbench's callbacks;
4. :func:`train`: training, the divergence verdict, the weights gathered when sharded;
5. :func:`save`: the checkpoint with its manifest (built in one place, :func:`build_manifest`), then the
   mitigations' extra checkpoints.

The method-specific part lives in :mod:`forgetbench.train.methods`, the mitigations in
:mod:`forgetbench.train.mitigations`.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from forgetbench.checkpoint import library_versions, resolve_model
from forgetbench.errors import guarded
from forgetbench.suite.user_tasks import is_user_task
from forgetbench.train.data import load_sft_dataset
from forgetbench.train.errors import RecipeError, TrainingDiverged
from forgetbench.train.mitigations import Plan, option_fields
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


@dataclass
class RecipeOptions:
    """forgetbench's own recipe flags; :class:`ForgetbenchArguments` adds the mitigations' after them."""

    method: str | None = field(
        default=None,
        metadata={"help": "tuning method, a key of forgetbench.train.methods.METHODS (each recipe sets it)"},
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
    tasks_dir: str | None = field(
        default=None,
        metadata={"help": "a folder of user tasks (forgetbench task add --dir): --dataset_name, --probe_tasks and "
                          "--replay_tasks may name them"},
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
    allow_underpowered_budget: bool = field(
        default=False, metadata={"help": "run a --forgetting_budget smaller than the probe can detect (refused "
                                         "otherwise; docs/recipes.md); the manifest records it"}
    )
    skip_bad_rows: bool = field(
        default=False, metadata={"help": "train without the rows whose images cannot be read (refused otherwise); "
                                         "the manifest records them under skipped_rows"}
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "write into an output_dir that holds files a recipe did not write "
                                         "(refused otherwise); never into the model folder it loads"}
    )


# The mitigations' flags (--replay_tasks, --replay_ratio, --kl_weight, --l2sp_weight, --wise_alphas) are declared by
# their registry entries (forgetbench/train/mitigations/), so a new mitigation adds its flags without an edit here.
ForgetbenchArguments = dataclasses.make_dataclass(
    "ForgetbenchArguments", option_fields(), bases=(RecipeOptions,),
    namespace={"__doc__": "Every forgetbench flag of a recipe: :class:`RecipeOptions` and the mitigations'.",
               "__module__": __name__},
)


# --- what the steps share -------------------------------------------------------------------------------------------


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



# --- a run, step by step --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Args:
    """A run's parsed arguments: TRL's three and forgetbench's."""

    script: Any  # trl.ScriptArguments
    training: Any  # trl.SFTConfig
    model: Any  # trl.ModelConfig
    options: Any  # ForgetbenchArguments


@dataclass
class Checked:
    """What :func:`check` established before any model loads."""

    method: Any  # forgetbench.train.methods.Method
    model_path: str  # what from_pretrained takes: a local folder absolute, without symlinks
    remote_code: bool
    resume: str | None  # the checkpoint to resume from
    rows: Any  # the training rows, after the mitigations that change them
    skipped: list  # forgetbench.suite.images.UnreadableRows left out with --skip_bad_rows
    mitigations: Plan
    probe: Any  # forgetbench.train.probe.ForgettingProbe, or None when off
    tasks_dir: str | None = None  # --tasks_dir, absolute, when --dataset_name is a user task there


@dataclass
class Loaded:
    processor: Any
    model: Any  # prepared for the method (frozen where it trains nothing)
    dtype: Any  # what a full-precision reload uses
    peft_config: Any  # None for a selective method
    training_template: str | None = None  # the family whose answer-only training template was installed


@dataclass
class Session:
    trainer: Any
    guard: Any  # forgetbench.train.callbacks.DivergenceGuard
    trained_parts: dict[str, int]  # counted before training: parts_trained


def check(args: Args) -> Checked:
    """Everything that needs no model, checked before one loads (docs/faults.md): the method, the mitigations, the
    probe, every value, the model's config, the training rows and every image in them."""
    from forgetbench.train.checks import (
        check_model_config,
        check_output_dir,
        check_values,
        local_model_path,
        trusts_remote_code,
    )
    from forgetbench.train.methods import MethodError, get_method
    from forgetbench.train.mitigations import plan_mitigations
    from forgetbench.train.probe import forgetting_probe

    options, dataset = args.options, args.script.dataset_name
    tasks_dir = check_tasks_dir(options.tasks_dir)
    if options.method is None:
        raise RecipeError("--method: not set (run a recipe, recipes/<method>.py, which sets it)")
    try:
        method = get_method(options.method)
    except MethodError as exc:
        raise RecipeError(f"--method: {exc}") from None
    mitigations = plan_mitigations(options, method, dataset)
    resume = _resume_target(args.training)
    probe = forgetting_probe(options, dataset, resume)  # None when off
    check_values(args.script, args.training, args.model, options)
    model_path = local_model_path(args.model.model_name_or_path)
    remote_code = trusts_remote_code(args.training, args.model)
    check_model_config(model_path, args.model, method, options, remote_code)
    check_quantizable(model_path, method, f"--model_name_or_path {args.model.model_name_or_path}")
    check_output_dir(args.training.output_dir, model_path, options.overwrite_output_dir)
    rows, skipped = training_rows(args)
    rows = mitigations.mix_data(rows, args.training.seed)
    user_task = tasks_dir is not None and is_user_task(dataset, tasks_dir)
    return Checked(method, model_path, remote_code, resume, rows, skipped, mitigations, probe,
                   tasks_dir if user_task else None)


def check_tasks_dir(tasks_dir: str | None) -> str | None:
    """``--tasks_dir`` as an absolute folder (None when not given); refused when it is no folder."""
    if tasks_dir is None:
        return None
    folder = Path(tasks_dir).expanduser()
    if not folder.is_dir():
        raise RecipeError(f"--tasks_dir {tasks_dir}: no such folder (the --dir of forgetbench task add)")
    return str(folder.resolve())


def training_rows(args: Args):
    """The dataset's training rows (images read), cut to ``--max_train_samples``; and the unreadable rows left out
    under ``--skip_bad_rows``."""
    from forgetbench.suite.images import UnreadableRows
    from forgetbench.train.checks import one_line

    script, tasks_dir = args.script, args.options.tasks_dir
    skipped: list[UnreadableRows] = []
    try:
        rows = load_sft_dataset(script.dataset_name, script.dataset_train_split, script.dataset_config,
                                args.options.data_files,
                                on_bad_rows=skipped.append if args.options.skip_bad_rows else None,
                                tasks_dir=tasks_dir)
    except UnreadableRows as exc:
        raise RecipeError(f"--dataset_name {script.dataset_name}: {exc}; pass --skip_bad_rows to train "
                          "without them") from None
    except Exception as exc:  # datasets raises many kinds; the user needs to know which input was wrong
        from forgetbench.suite.user_tasks import list_tasks

        there = f"; user tasks under --tasks_dir {tasks_dir}: {', '.join(list_tasks(tasks_dir)) or 'none'}" \
            if tasks_dir else ""
        raise RecipeError(f"--dataset_name {script.dataset_name}: cannot load "
                          f"(split {script.dataset_train_split}): {type(exc).__name__}: {one_line(exc)}{there}") \
            from None
    if args.options.max_train_samples is not None:
        keep = min(args.options.max_train_samples, len(rows))
        rows = rows.shuffle(seed=args.training.seed).select(range(keep))
    return rows, skipped


def load(args: Args, checked: Checked) -> Loaded:
    """The processor and the model (4-bit for QLoRA), frozen for the method; the seed is set first. With
    ``assistant_only_loss``, a stock llava-hf template that leaves the end of turn out of the loss is replaced by
    its training template (:mod:`forgetbench.train.templates`), so the tuned model learns to stop."""
    from transformers import AutoProcessor, set_seed

    from forgetbench.train.checks import one_line
    from forgetbench.train.methods import MethodError, prepare
    from forgetbench.train.templates import install_training_template

    # The Trainer's default filter replaces a NaN/inf loss by the running mean in the logs, hiding divergence.
    args.training.logging_nan_inf_filter = False
    set_seed(args.training.seed)
    try:
        processor = AutoProcessor.from_pretrained(checked.model_path, trust_remote_code=checked.remote_code)
        model, dtype = load_model(checked.model_path, checked.method, args.model, args.training)
    except (OSError, ValueError) as exc:  # huggingface_hub's HFValidationError is a ValueError
        raise RecipeError(f"--model_name_or_path {args.model.model_name_or_path}: cannot load "
                          f"({one_line(exc)})") from None
    # Qwen2-VL/2.5-VL need nothing here: TRL swaps in its own training template for theirs.
    template = install_training_template(processor) if args.training.assistant_only_loss else None
    try:
        peft_config = prepare(model, checked.method, args.model, args.options)
    except (MethodError, ValueError) as exc:
        raise RecipeError(str(exc)) from None
    return Loaded(processor, model, dtype, peft_config, template)


def build_trainer(args: Args, checked: Checked, loaded: Loaded, callbacks: Sequence = ()) -> Session:
    """TRL's SFTTrainer, or the subclass the mitigations ask for, with the divergence guard first, then the
    caller's callbacks, then the probe; refused when the processes would not train as the launcher was asked."""
    from trl import SFTTrainer

    from forgetbench.train.callbacks import DivergenceGuard

    configure_fsdp_wrap(loaded.model)  # read by accelerate's FSDP plugin, which the Trainer builds next
    guard, probe = DivergenceGuard(), checked.probe
    trainer_class, extra = checked.mitigations.trainer_class(SFTTrainer)
    trainer = trainer_class(model=loaded.model, args=args.training, train_dataset=checked.rows,
                            processing_class=loaded.processor, peft_config=loaded.peft_config,
                            callbacks=[guard, *callbacks, *([probe] if probe else [])], **extra)
    if probe:
        probe.trainer = trainer  # it logs through the trainer
    refusal = distributed_refusal(trainer)
    if refusal:
        raise RecipeError(refusal)
    return Session(trainer, guard, parts_trained(trainer.model))


def train(args: Args, checked: Checked, loaded: Loaded, session: Session):
    """Train; a divergence raises :class:`TrainingDiverged` naming the last good checkpoint. Returns the model to
    save (gathered to rank 0 when sharded; None on the other ranks then)."""
    trainer = session.trainer
    trainer.train(resume_from_checkpoint=checked.resume)
    out_dir = Path(args.training.output_dir)
    if session.guard.diverged:
        last = last_complete_checkpoint(out_dir)
        raise TrainingDiverged(
            f"training diverged at {session.guard.diverged}; stopped without saving. Last good checkpoint: "
            + (f"{last} (resume with --resume_from_checkpoint {last}, e.g. at a lower learning rate)" if last
               else "none (set save_strategy: steps to keep one)")
        )
    model = trainer.accelerator.unwrap_model(trainer.model)
    if sharded(trainer):
        try:
            model = gather_for_merge(trainer, checked.model_path, loaded.dtype)
        except GatherError as exc:
            raise RecipeError(f"{exc}; nothing was saved in {out_dir}") from None
    return model


def build_manifest(args: Args, checked: Checked, loaded: Loaded, session: Session) -> dict:
    """The manifest of the checkpoint (``forgetbench_manifest.json``): the one place that says what it holds."""
    method, options, trainer = checked.method, args.options, session.trainer
    history = trainer.state.log_history
    name = args.model.model_name_or_path
    manifest = {
        # A relative folder is stored absolute, so compare run from another folder still finds the lineage.
        "base_model": checked.model_path if resolve_model(name) == name and not Path(name).is_absolute()
        and Path(name).exists() else name,
        "base_model_path": checked.model_path,
        "method": method.name,
        "method_family": method.family,
        "tuned": {"tune_projector": options.tune_projector,
                  "tune_vision_tower": options.tune_vision_tower,
                  **({"top_k": options.top_k} if method.name == "top_layers" else {}),
                  **({"peft": loaded.peft_config.to_dict()} if loaded.peft_config is not None else {})},
        "trainable_parameters": sum(session.trained_parts.values()),
        "trainable_parameters_by_part": session.trained_parts,
        "trainable_parameter_names": trainable_names(trainer.model),
        "total_parameters": sum(p.numel() for p in trainer.model.parameters()),
        "quantization": "bitsandbytes 4-bit (LLM decoder layers)" if method.quantize_4bit else None,
        "merged": method.mergeable,
        "merge": ("none: a soft prompt cannot be folded into weights; load adapter/ with PEFT" if not
                  method.mergeable else "adapter merged into a full-precision reload of the base" if
                  method.quantize_4bit else "in memory" if loaded.peft_config is not None else "not needed"),
        "data": {"dataset": args.script.dataset_name, "split": args.script.dataset_train_split,
                 "rows": len(checked.rows), **({"tasks_dir": checked.tasks_dir} if checked.tasks_dir else {})},
        "assistant_only_loss": bool(args.training.assistant_only_loss),
        "training_template": loaded.training_template,
        "skipped_rows": checked.skipped[0].manifest_entry() if checked.skipped else None,
        "trust_remote_code": checked.remote_code,
        "mitigations": checked.mitigations.manifest_entry(trainer),
        "seed": args.training.seed,
        "distributed": distributed_entry(trainer),
        "steps": trainer.state.global_step,
        "final_train_loss": next((log["train_loss"] for log in reversed(history) if "train_loss" in log), None),
        "losses": [[log["step"], log["loss"]] for log in history if "loss" in log],
        "train_seconds": next((log["train_runtime"] for log in reversed(history) if "train_runtime" in log), None),
        "versions": library_versions(),
    }
    if checked.probe:
        manifest["probe"] = checked.probe.manifest_entry()
    if method.quantize_4bit:
        manifest["merge_dtype"] = None if loaded.dtype in (None, "auto") else str(loaded.dtype).removeprefix("torch.")
    return manifest


def save(args: Args, checked: Checked, loaded: Loaded, model, manifest: dict) -> Path:
    """The checkpoint, all-or-nothing (a failure leaves ``output_dir`` as it was), then the mitigations' extra
    checkpoints. On the main process only."""
    from safetensors import SafetensorError  # what safetensors raises for a full disk

    from forgetbench.train.checks import unwritten

    out_dir = Path(args.training.output_dir)
    try:
        save_checkpoint(model, loaded.processor, out_dir, manifest,
                        merge_from_base=checked.model_path if checked.method.quantize_4bit else None)
    except (OSError, SafetensorError) as exc:
        raise RecipeError(unwritten(out_dir, exc, "the checkpoint was not saved and what the folder held is "
                                                  "unchanged")) from None
    checked.mitigations.after_save(out_dir, checked.model_path)  # also clears an earlier run's extra checkpoints
    return out_dir


def run_recipe(script_args, training_args, model_args, forgetbench_args: ForgetbenchArguments,
               callbacks: Sequence = (), on_checked: Callable[[], None] | None = None) -> Path:
    """Fine-tune ``model_args.model_name_or_path`` with one method on one dataset; returns the checkpoint folder.

    ``callbacks``: extra ``TrainerCallback`` objects, after forgetbench's own divergence guard. ``on_checked``:
    called once everything that needs no model has been checked, right before the model loads."""
    args = Args(script_args, training_args, model_args, forgetbench_args)
    checked = check(args)
    if on_checked is not None:
        on_checked()
    loaded = load(args, checked)
    session = build_trainer(args, checked, loaded, callbacks)
    model = train(args, checked, loaded, session)
    accelerator = session.trainer.accelerator
    if accelerator.is_main_process:
        save(args, checked, loaded, model, build_manifest(args, checked, loaded, session))
    accelerator.wait_for_everyone()
    return Path(training_args.output_dir)


def recipe_main(method: str, argv: list[str] | None = None, callbacks: Sequence = ()) -> None:
    """The whole of a recipe: parse TRL's and forgetbench's arguments (``--config`` YAML plus overrides), train
    ``method``; bad input or divergence ends the process with a one-line message and exit status 2 (Ctrl-C: 130).
    ``callbacks``: extra ``TrainerCallback`` objects (see :func:`run_recipe`).

    Until the model loads, the libraries' warnings are held back: a refused run prints its one line only."""
    from forgetbench.train.checks import HeldWarnings, argparse_error, check_config_file, parse_error

    argv = list(sys.argv[1:] if argv is None else argv)
    held = HeldWarnings()

    def run() -> None:
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

    try:
        # A refused run drops the held warnings (a no-op once shown: those raised before training were shown).
        code = guarded(f"recipes/{method}.py", run, on_error=held.drop)
    finally:
        held.show()  # anything else: the warnings may explain it
    if code:
        sys.exit(code)
