"""One map from a model architecture to its parts, by parameter-name pattern.

Recipes, methods and tests ask this map, never the model's module names directly, which answers questions like
"is my vision tower frozen?" and "does LoRA touch the projector?" in one place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Architecture:
    name: str
    vision_tower: str  # regex over parameter/module names
    projector: str
    decoder_layers: str  # must capture the layer index as group "layer"
    lm_head: str
    llm_linear: str  # the LLM's attention and MLP linear modules: what LoRA-family methods adapt

    def layer_of(self, name: str) -> int | None:
        match = re.match(self.decoder_layers, name)
        return int(match.group("layer")) if match else None


# transformers >= 5 names for LlavaForConditionalGeneration (llava-hf LLaVA-1.5 and the forgetbench lab model).
LLAVA = Architecture(
    name="llava",
    vision_tower=r"model\.vision_tower\.",
    projector=r"model\.multi_modal_projector\.",
    decoder_layers=r"model\.language_model\.layers\.(?P<layer>\d+)\.",
    lm_head=r"lm_head\.",
    llm_linear=r"model\.language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)",
)

ARCHITECTURES = {"LlavaForConditionalGeneration": LLAVA}


def architecture_of(model) -> Architecture:
    """The parts map for a loaded model, by its class name (unwrapping PEFT)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    name = type(base).__name__
    if name not in ARCHITECTURES:
        raise ValueError(f"model class {name} has no forgetbench architecture map; known: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name]
