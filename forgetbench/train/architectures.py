"""One map from a model architecture to its parts, by module path.

Recipes, methods and tests ask this map, never the model's module names directly, which answers questions like
"is my vision tower frozen?" and "does LoRA touch the projector?" in one place. Every path below was read off a
model instantiated with transformers 5 (``model.named_parameters()``), not copied from model cards.

A part is a tuple of module paths (a parameter belongs to it when its name starts with one of them plus ``.``, or
equals a path that names a bare parameter such as LLaVA-OneVision's ``model.image_newline``). The same paths serve
PEFT's ``modules_to_save`` when a PEFT method also tunes the projector or the vision tower.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PARTS = ("vision_tower", "projector", "decoder_layers", "llm_other", "lm_head")

# The attention and MLP linear layers of a Llama/Qwen2-style decoder layer: what LoRA-family methods adapt.
_ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
_MLP = ("gate_proj", "up_proj", "down_proj")


def _prefix_regex(paths: tuple[str, ...]) -> str:
    return "(" + "|".join(re.escape(p) + r"(\.|$)" for p in paths) + ")"


@dataclass(frozen=True)
class Architecture:
    name: str
    vision_tower: tuple[str, ...]
    projector: tuple[str, ...]
    layers: str  # the module list of the LLM's decoder layers
    llm_other: tuple[str, ...]  # the rest of the LLM: embeddings, final norm (and what the LLM side owns)
    lm_head: str = "lm_head"

    def paths(self, part: str) -> tuple[str, ...]:
        if part == "decoder_layers":
            return (self.layers,)
        if part == "lm_head":
            return (self.lm_head,)
        if part == "llm":  # the whole language model, as "full" tuning means it
            return (self.layers, *self.llm_other, self.lm_head)
        if part in ("vision_tower", "projector", "llm_other"):
            return getattr(self, part)
        raise ValueError(f"unknown architecture part {part!r}; known: {', '.join((*PARTS, 'llm'))}")

    def regex(self, part: str) -> str:
        return _prefix_regex(self.paths(part))

    @property
    def decoder_layers(self) -> str:
        """Regex over a parameter name, capturing the decoder layer index as group ``layer``."""
        return re.escape(self.layers) + r"\.(?P<layer>\d+)\."

    @property
    def llm_linear(self) -> str:
        """Regex (PEFT ``target_modules``, full match) over the LLM's attention and MLP linear modules only:
        the vision tower's own q/k/v_proj (and Qwen2.5-VL's vision MLP gate/up/down_proj) stay untouched."""
        return self.linear(_ATTENTION + _MLP)

    def linear(self, names: tuple[str, ...]) -> str:
        return re.escape(self.layers) + r"\.\d+\.(self_attn|mlp)\.(" + "|".join(names) + ")"

    @property
    def llm_norms(self) -> str:
        """Regex over the LLM's RMSNorm modules (per-layer and final): what LN tuning adapts."""
        norms = [p for p in self.llm_other if p.endswith(".norm")]
        return "(" + "|".join([re.escape(self.layers) + r"\.\d+\.(input|post_attention)_layernorm",
                               *map(re.escape, norms)]) + ")"

    def layer_of(self, name: str) -> int | None:
        match = re.match(self.decoder_layers, name)
        return int(match.group("layer")) if match else None

    def part_of(self, name: str) -> str:
        """The part a (PEFT-unwrapped) parameter name belongs to, or ``other`` (e.g. a prompt-tuning embedding).

        >>> [QWEN2_VL.part_of(n) for n in ("model.visual.merger.mlp.0.weight", "model.visual.blocks.0.attn.qkv.weight",
        ...                                  "model.language_model.layers.3.mlp.up_proj.weight", "lm_head.weight")]
        ['projector', 'vision_tower', 'decoder_layers', 'lm_head']
        """
        return next((part for part in PARTS if re.match(self.regex(part), name)), "other")


# LlavaForConditionalGeneration: llava-hf LLaVA-1.5 (CLIP + Llama) and the forgetbench lab model.
LLAVA = Architecture(
    name="llava",
    vision_tower=("model.vision_tower",),
    projector=("model.multi_modal_projector",),
    layers="model.language_model.layers",
    llm_other=("model.language_model.embed_tokens", "model.language_model.norm"),
)

# LlavaOnevisionForConditionalGeneration (SigLIP + Qwen2). ``image_newline`` is a learned vector placed after the
# projected image features; LLaVA-NeXT's own trainer tunes it with the language model ("mm_language_model"), so
# it is counted with the LLM here: "full" tunes it, "projector" does not.
LLAVA_ONEVISION = Architecture(
    name="llava_onevision",
    vision_tower=("model.vision_tower",),
    projector=("model.multi_modal_projector",),
    layers="model.language_model.layers",
    llm_other=("model.language_model.embed_tokens", "model.language_model.norm", "model.image_newline"),
)

# Qwen2VLForConditionalGeneration and Qwen2_5_VLForConditionalGeneration: the projector (``merger``) sits inside
# ``model.visual`` beside the vision blocks, so the vision tower is ``visual`` less ``merger``.
QWEN2_VL = Architecture(
    name="qwen2_vl",
    vision_tower=("model.visual.patch_embed", "model.visual.blocks"),
    projector=("model.visual.merger",),
    layers="model.language_model.layers",
    llm_other=("model.language_model.embed_tokens", "model.language_model.norm"),
)

ARCHITECTURES = {
    "LlavaForConditionalGeneration": LLAVA,
    "LlavaOnevisionForConditionalGeneration": LLAVA_ONEVISION,
    "Qwen2VLForConditionalGeneration": QWEN2_VL,
    "Qwen2_5_VLForConditionalGeneration": QWEN2_VL,
}


def architecture_of(model) -> Architecture:
    """The parts map for a loaded model, by its class name (unwrapping PEFT)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    name = type(base).__name__
    if name not in ARCHITECTURES:
        raise ValueError(f"model class {name} has no forgetbench architecture map; known: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name]


def bare_name(name: str) -> str:
    """A parameter name of ``peft_model.get_base_model()`` with PEFT's module wrappers removed, as the plain
    model names it (so parts can be matched).

    >>> bare_name("model.multi_modal_projector.modules_to_save.default.linear_1.weight")
    'model.multi_modal_projector.linear_1.weight'
    """
    return re.sub(r"\.(modules_to_save\.[^.]+|original_module)\.", ".", name)
