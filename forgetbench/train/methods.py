"""The one table of tuning methods: what each tunes, in terms of architecture parts, and with which PEFT config.

Families follow paper 2503.04543: reparameterization (LoRA, DoRA, QLoRA), selective (a chosen set of the
model's own parameters) and additive (new parameters: IA3 vectors, a soft prompt, LN-tuning's norm copies).
Every method can add the projector (``--tune_projector``) or the vision tower (``--tune_vision_tower``) to what it
tunes; the vision tower is frozen otherwise. A PEFT method tunes those through PEFT's ``modules_to_save`` so the
adapter holds them; a selective method simply unfreezes them.

Freezing and ``parts_trained`` derive from this table and the architecture map; nothing else decides what is
trainable. tests/test_methods.py takes the list of methods from the table but writes each method's expected
trainable names from literal module paths, so it checks the table rather than repeating it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from forgetbench.train.architectures import Architecture, architecture_of
from forgetbench.train.errors import RecipeError

FAMILIES = ("reparameterization", "selective", "additive")


class MethodError(RecipeError, ValueError):
    """A method, its options or the model do not fit together; the message names the offending input. A
    RecipeError, so a recipe prints it as one line; a ValueError, as it always was, for callers that catch that."""


@dataclass(frozen=True)
class Method:
    name: str
    family: str
    description: str
    # Architecture parts whose own parameters this method trains (selective tuning): "llm", "projector",
    # "decoder_layers", "vision_tower".
    tunes: tuple[str, ...] = ()
    # Which decoder layers "decoder_layers" means: (number of layers, top_k option) -> layer indexes; None: all.
    layers: Callable[[int, int], Sequence[int]] | None = None
    # Builds the PEFT config from the architecture map, TRL's ModelConfig, the forgetbench options and the extra
    # module paths to train in full (``modules_to_save``); None for selective tuning.
    peft_config: Callable[[Architecture, object, object, list[str]], object] | None = None
    quantize_4bit: bool = False  # load the base model in bitsandbytes 4-bit (QLoRA)
    mergeable: bool = True  # the adapter folds into the weights (prompt tuning's soft prompt does not)

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"method {self.name}: family {self.family!r} is not one of {', '.join(FAMILIES)}")


def _lora(arch: Architecture, model_args, options, extra: list[str], dora: bool = False):
    from peft import LoraConfig

    return LoraConfig(
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=arch.llm_linear,  # a regex: the vision tower's q/k/v_proj stay untouched
        use_dora=dora,
        modules_to_save=extra or None,
        task_type="CAUSAL_LM",
    )


def _dora(arch, model_args, options, extra):
    return _lora(arch, model_args, options, extra, dora=True)


def _ia3(arch: Architecture, model_args, options, extra: list[str]):
    from peft import IA3Config

    # PEFT's own IA3 choice for Llama/Qwen2: rescale keys, values and the MLP's input to down_proj.
    return IA3Config(
        target_modules=arch.linear(("k_proj", "v_proj", "down_proj")),
        feedforward_modules=arch.linear(("down_proj",)),
        modules_to_save=extra or None,
        task_type="CAUSAL_LM",
    )


def _ln_tuning(arch: Architecture, model_args, options, extra: list[str]):
    from peft import LNTuningConfig

    return LNTuningConfig(target_modules=arch.llm_norms, modules_to_save=extra or None, task_type="CAUSAL_LM")


def _prompt_tuning(arch: Architecture, model_args, options, extra: list[str]):
    from peft import PromptTuningConfig

    return PromptTuningConfig(
        num_virtual_tokens=options.num_virtual_tokens, modules_to_save=extra or None, task_type="CAUSAL_LM"
    )


def _top_k(num_layers: int, k: int) -> range:
    if not 1 <= k <= num_layers:
        raise MethodError(f"--top_k {k}: must be between 1 and the model's {num_layers} decoder layers")
    return range(num_layers - k, num_layers)


METHODS: dict[str, Method] = {
    method.name: method
    for method in (
        Method("lora", "reparameterization", "LoRA on every attention and MLP linear layer of the LLM",
               peft_config=_lora),
        Method("dora", "reparameterization", "DoRA (weight-decomposed LoRA) on the same layers as LoRA",
               peft_config=_dora),
        Method("qlora", "reparameterization", "LoRA on the LLM's linear layers over a bitsandbytes 4-bit (nf4) LLM",
               peft_config=_lora, quantize_4bit=True),
        Method("full_st", "selective", "every decoder layer of the LLM (not embeddings, final norm or lm_head)",
               tunes=("decoder_layers",)),
        Method("top_layers", "selective", "the top k decoder layers of the LLM (--top_k)",
               tunes=("decoder_layers",), layers=_top_k),
        Method("last_layer", "selective", "the last decoder layer of the LLM",
               tunes=("decoder_layers",), layers=lambda n, k: [n - 1]),
        Method("projector", "selective", "the vision-language projector only", tunes=("projector",)),
        Method("full", "selective", "the whole LLM (embeddings, decoder layers, norm, lm_head) and the projector",
               tunes=("llm", "projector")),
        Method("ia3", "additive", "IA3 scaling vectors on the LLM's keys, values and MLP down-projection inputs",
               peft_config=_ia3),
        Method("prompt_tuning", "additive", "a soft prompt of --num_virtual_tokens learned embeddings",
               peft_config=_prompt_tuning, mergeable=False),
        Method("ln_tuning", "additive", "LN tuning: trainable copies of the LLM's RMSNorm layers",
               peft_config=_ln_tuning),
    )
}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise MethodError(f"unknown tuning method {name!r}; known: {', '.join(METHODS)}")
    return METHODS[name]


def num_decoder_layers(model, arch: Architecture) -> int:
    layers = {arch.layer_of(name) for name, _ in model.named_parameters()} - {None}
    if not layers:
        raise MethodError(f"no parameter of {type(model).__name__} matches the decoder layers {arch.layers}.N")
    return max(layers) + 1


def trained_paths(method: Method, arch: Architecture, num_layers: int, options) -> list[str]:
    """Module (or parameter) paths whose parameters are trained in full: the method's own parts plus the
    projector / vision tower when the options ask for them."""
    parts = list(method.tunes)
    if getattr(options, "tune_projector", False) and "projector" not in parts:
        parts.append("projector")
    if getattr(options, "tune_vision_tower", False):
        parts.append("vision_tower")
    paths: list[str] = []
    for part in parts:
        if part == "decoder_layers" and method.layers is not None:
            paths += [f"{arch.layers}.{i}" for i in method.layers(num_layers, getattr(options, "top_k", 1))]
        else:
            paths += arch.paths(part)
    return paths


def _modules_to_save(model, paths: list[str]) -> list[str]:
    """PEFT wraps each ``modules_to_save`` module in a copy; a ModuleList cannot be wrapped (its owner iterates
    it), so it is expanded into its children. A bare parameter (image_newline) cannot be wrapped at all."""
    import torch

    modules = dict(model.named_modules())
    out: list[str] = []
    for path in paths:
        module = modules.get(path)
        if module is None:
            raise MethodError(f"PEFT can only add whole modules to what it trains; {path} is not a module")
        if isinstance(module, torch.nn.ModuleList):
            out += [f"{path}.{i}" for i in range(len(module))]
        else:
            out.append(path)
    return out


def prepare(model, method: Method, model_args, options):
    """Freeze ``model`` for ``method``; returns the PEFT config to apply (TRL's SFTTrainer applies it), or None.

    Selective methods: every parameter is frozen except those under the method's paths. PEFT methods: the model is
    left alone (PEFT freezes the base itself) and the extra paths become ``modules_to_save``.
    """
    arch = architecture_of(model)
    paths = trained_paths(method, arch, num_decoder_layers(model, arch), options)
    if method.peft_config is not None:
        return method.peft_config(arch, model_args, options, _modules_to_save(model, paths))
    pattern = re.compile("(" + "|".join(re.escape(p) + r"(\.|$)" for p in paths) + ")")
    for name, param in model.named_parameters():
        param.requires_grad_(bool(pattern.match(name)))
    return None


def quantization_config(method: Method, model_class_name: str, model_args, compute_dtype):
    """The bitsandbytes 4-bit config for QLoRA: only the LLM's decoder layers are quantized; the vision tower,
    projector and lm_head stay in full precision (they are small, and the projector may be tuned)."""
    if not method.quantize_4bit:
        return None
    from transformers import BitsAndBytesConfig

    from forgetbench.train.architectures import ARCHITECTURES

    arch = ARCHITECTURES[model_class_name]
    # Full module paths: transformers matches them from the start of a module's name, up to a dot.
    skip = [*arch.vision_tower, *arch.projector, arch.lm_head]
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=getattr(model_args, "bnb_4bit_quant_type", None) or "nf4",
        bnb_4bit_use_double_quant=bool(getattr(model_args, "use_bnb_nested_quant", False)),
        bnb_4bit_compute_dtype=compute_dtype,
        llm_int8_skip_modules=skip,
    )
