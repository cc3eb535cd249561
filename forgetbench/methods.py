"""The one table of tuning methods: what each tunes and with which PEFT config."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from forgetbench.architectures import Architecture


@dataclass(frozen=True)
class Method:
    name: str
    family: str  # "reparameterization", "selective" or "additive" (paper 2503.04543's taxonomy)
    description: str
    # Builds the PEFT config from the architecture map and TRL's ModelConfig; None for selective tuning.
    peft_config: Callable[[Architecture, object], object] | None = None


def _lora(arch: Architecture, model_args) -> object:
    from peft import LoraConfig

    return LoraConfig(
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=arch.llm_linear,  # a regex: the vision tower's q/k/v_proj stay untouched
        use_dora=model_args.use_dora,
        task_type="CAUSAL_LM",
    )


METHODS: dict[str, Method] = {
    method.name: method
    for method in (
        Method("lora", "reparameterization", "LoRA on every attention and MLP linear layer of the LLM", _lora),
    )
}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown tuning method {name!r}; known: {', '.join(METHODS)}")
    return METHODS[name]
