"""Random-init models of every supported architecture, built offline from a config, and a batch each can train on.

Tiny ones (a few tens of thousands of parameters) back the method x architecture tests; real-size configs (written
here as dicts, no hub access) back the GPU benchmark. ``lab`` is the shipped lab base model itself.
"""

from __future__ import annotations

# Every LLM linear is at least 64 wide and a multiple of 64: bitsandbytes quantizes in 64-value blocks, and its
# AVX-512 CPU path fails on a narrower layer (QLoRA's tests run on these models).
_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=2,
             vocab_size=128, bos_token_id=1, eos_token_id=2, pad_token_id=0)
_MROPE = dict(rope_type="default", mrope_section=[4, 6, 6])  # sums to head_dim / 2 = 16
IMAGE_TOKEN = 100  # a token id inside every tiny vocabulary
_VIDEO_TOKEN = 101
_VISION_START = 102

def _llava_1_5():
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                              image_size=16, patch_size=8)
    return LlavaForConditionalGeneration(LlavaConfig(vision_config=vision, text_config=LlamaConfig(**_TEXT),
                                                     image_token_index=IMAGE_TOKEN))


def _onevision(text: dict = _TEXT, vision: dict | None = None, image_size: int = 16):
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

    vision = vision or dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                            image_size=image_size, patch_size=8, vision_use_head=False)
    config = LlavaOnevisionConfig(
        vision_config=dict(model_type="siglip_vision_model", **vision),
        text_config=dict(model_type="qwen2", **text),
        image_token_index=IMAGE_TOKEN, video_token_index=_VIDEO_TOKEN,
        image_grid_pinpoints=[[vision["image_size"], vision["image_size"]]],  # one tile: base view + one crop
    )
    return LlavaOnevisionForConditionalGeneration(config)


def _qwen2_vl():
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    vision = dict(depth=2, embed_dim=16, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=4, spatial_merge_size=2,
                  temporal_patch_size=2)
    config = Qwen2VLConfig(vision_config=vision, text_config=dict(**_TEXT, rope_parameters=_MROPE),
                           image_token_id=IMAGE_TOKEN, video_token_id=_VIDEO_TOKEN, vision_start_token_id=_VISION_START)
    return Qwen2VLForConditionalGeneration(config)


def _qwen2_5_vl():
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    vision = dict(depth=2, hidden_size=16, intermediate_size=32, out_hidden_size=64, num_heads=2, patch_size=4,
                  spatial_merge_size=2, temporal_patch_size=2, fullatt_block_indexes=[1], window_size=16)
    config = Qwen2_5_VLConfig(vision_config=vision, text_config=dict(**_TEXT, rope_parameters=_MROPE),
                              image_token_id=IMAGE_TOKEN, video_token_id=_VIDEO_TOKEN,
                              vision_start_token_id=_VISION_START)
    return Qwen2_5_VLForConditionalGeneration(config)


def _lab():
    from transformers import AutoModelForImageTextToText

    from forgetbench.checkpoint import lab_base_model_path

    return AutoModelForImageTextToText.from_pretrained(lab_base_model_path())


# LLaVA-OneVision-0.5B (llava-hf/llava-onevision-qwen2-0.5b-ov-hf): Qwen2-0.5B text + SigLIP so400m-patch14-384.
ONEVISION_0_5B_TEXT = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                           num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768,
                           rope_parameters=dict(rope_type="default", rope_theta=1000000.0), tie_word_embeddings=True,
                           bos_token_id=151643, eos_token_id=151645, pad_token_id=151643)
ONEVISION_0_5B_VISION = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                             image_size=384, patch_size=14, vision_use_head=False)

# Qwen2-VL-2B (Qwen/Qwen2-VL-2B-Instruct): Qwen2-1.5B-sized text with M-RoPE + a 675 M-parameter ViT (patch 14,
# 2x2 merge). Token ids are left to the tokenizer that goes with the model.
QWEN2_VL_2B_TEXT = dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                        num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, rms_norm_eps=1e-6,
                        rope_parameters=dict(rope_type="default", rope_theta=1000000.0, mrope_section=[16, 24, 24]),
                        tie_word_embeddings=True)
QWEN2_VL_2B_VISION = dict(depth=32, embed_dim=1280, hidden_size=1536, hidden_act="quick_gelu", mlp_ratio=4,
                          num_heads=16, in_channels=3, patch_size=14, spatial_merge_size=2, temporal_patch_size=2)

BUILDERS = {
    "lab": _lab,
    "llava-1.5": _llava_1_5,
    "llava-onevision": _onevision,
    "qwen2-vl": _qwen2_vl,
    "qwen2.5-vl": _qwen2_5_vl,
    "llava_onevision_0.5b": lambda: _onevision(ONEVISION_0_5B_TEXT, ONEVISION_0_5B_VISION),
}

_LLAVA_VISION = (r"model\.vision_tower",)
_QWEN_VISION = (r"model\.visual\.patch_embed", r"model\.visual\.blocks\.\d+")  # merger (the projector) excluded
# What each tiny model's parts are, written out by hand from models instantiated with transformers 5 (not derived from
# forgetbench/train/architectures.py, which tests/test_methods.py checks against these): vision / projector: module
# paths (regex); layers: decoder layer count; extra: the LLM's parts beyond embed_tokens, layers, norm and lm_head;
# unused_vision: vision parameters that get no gradient because the features are read from an earlier layer. A new
# family's tiny builder and its row here are what the method x architecture tests need.
PARTS = {
    "lab": dict(vision=_LLAVA_VISION, projector=(r"model\.multi_modal_projector",), layers=4, extra=(),
                unused_vision=r"model\.vision_tower\.post_layernorm\."),
    "llava-1.5": dict(vision=_LLAVA_VISION, projector=(r"model\.multi_modal_projector",), layers=3, extra=(),
                      unused_vision=r"model\.vision_tower\.(post_layernorm|encoder\.layers\.1)\."),
    "llava-onevision": dict(vision=_LLAVA_VISION, projector=(r"model\.multi_modal_projector",), layers=3,
                            extra=(r"model\.image_newline",), unused_vision=r"model\.vision_tower\.post_layernorm\."),
    "qwen2-vl": dict(vision=_QWEN_VISION, projector=(r"model\.visual\.merger",), layers=3, extra=(),
                     unused_vision=None),
    "qwen2.5-vl": dict(vision=_QWEN_VISION, projector=(r"model\.visual\.merger",), layers=3, extra=(),
                       unused_vision=None),
}


def build(name: str, seed: int = 0):
    """A random-init model (or the lab base model) by name; see :data:`BUILDERS`."""
    import torch

    if name not in BUILDERS:
        raise ValueError(f"unknown test architecture {name!r}; known: {', '.join(BUILDERS)}")
    torch.manual_seed(seed)
    return BUILDERS[name]()


def batch(model, batch_size: int = 2, text_tokens: int = 8, seed: int = 0) -> dict:
    """Inputs with one image per row and labels on the text tokens, shaped for ``model``'s class."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    model = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT-wrapped
    config = model.config
    kind = type(model).__name__
    vision = config.vision_config
    if kind.startswith("Qwen2"):
        merge, patch, temporal = vision.spatial_merge_size, vision.patch_size, vision.temporal_patch_size
        grid = (1, 2 * merge, 2 * merge)  # 4 merged image tokens per image
        per_image = grid[0] * grid[1] * grid[2]
        pixel_values = torch.randn(batch_size * per_image, 3 * temporal * patch * patch, generator=generator)
        image = {"pixel_values": pixel_values, "image_grid_thw": torch.tensor([grid] * batch_size)}
        n_image = per_image // (merge * merge)
        prefix = [config.vision_start_token_id]
    else:
        size = vision.image_size
        if kind == "LlavaOnevisionForConditionalGeneration":
            pixel_values = torch.randn(batch_size, 2, 3, size, size, generator=generator)  # base view + one crop
            image = {"pixel_values": pixel_values, "image_sizes": torch.tensor([[size, size]] * batch_size)}
            weight = model.model.vision_tower.embeddings.patch_embedding.weight
            with torch.no_grad():
                features = model.model.get_image_features(
                    pixel_values=pixel_values[:1].to(weight.device, weight.dtype),
                    image_sizes=image["image_sizes"][:1].to(weight.device),
                    vision_feature_layer=config.vision_feature_layer,
                    vision_feature_select_strategy=config.vision_feature_select_strategy)
            features = getattr(features, "pooler_output", features)
            n_image = sum(f.shape[0] for f in features)
        else:
            image = {"pixel_values": torch.randn(batch_size, 3, size, size, generator=generator)}
            n_image = (size // vision.patch_size) ** 2
        prefix = []
    image_token = getattr(config, "image_token_id", None) or config.image_token_index
    vocab = config.text_config.vocab_size
    text = torch.randint(4, min(vocab, IMAGE_TOKEN), (batch_size, text_tokens), generator=generator)
    image_ids = torch.tensor(prefix + [image_token] * n_image).expand(batch_size, -1)
    input_ids = torch.cat([image_ids, text], dim=1)
    labels = input_ids.clone()
    labels[:, : image_ids.shape[1]] = -100
    if kind.startswith("Qwen2"):  # M-RoPE needs to know which tokens are image tokens (1), as the processor says
        image["mm_token_type_ids"] = (input_ids == image_token).long()
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels, **image}
