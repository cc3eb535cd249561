"""Tiny random-init models of every supported family, saved with the family's own processor classes, offline.

    forgetbench lab tiny --family qwen2-vl --out DIR

``build_tiny_family(family, out_dir)`` writes a folder that ``AutoProcessor.from_pretrained`` and
``AutoModelForImageTextToText.from_pretrained`` load like the real model's: the family's model class, its processor
and image processor classes (``LlavaProcessor`` + ``CLIPImageProcessor``, ``LlavaOnevisionProcessor`` +
``LlavaOnevisionImageProcessor``, ``Qwen2VLProcessor`` / ``Qwen2_5_VLProcessor`` + ``Qwen2VLImageProcessor``), a
tokenizer holding the family's special tokens (the lab's byte-level BPE, trained here on the lab's own text), small
images, and a chat template in the family's turn format whose ``{% generation %}`` block covers the assistant's
answer and its end-of-turn token (so TRL's ``assistant_only_loss=True`` trains on exactly those). The model
config's token ids are the tokenizer's. Every recipe, lmms-eval's own wrapper for the family and ``--model
forgetbench`` run on these folders on a CPU (docs/methods.md, "Every family end to end").

Every LLM linear is 64 or 128 wide (bitsandbytes' 4-bit blocks are 64 values; QLoRA runs on them), and the LLM's
weights are drawn with std 0.2 (not 0.02), so that its logits are not near-ties: greedy answers and likelihood
rankings do not flip with batching or CPU kernels.

``build_family(family, out_dir, size="real")`` builds LLaVA-OneVision-0.5B and Qwen2-VL-2B at their real sizes (the
configs in :mod:`forgetbench.lab.tiny`; the real vocabulary, of which this tokenizer uses the first ids) for
``benchmarks/gpu_smoke.py``. ``build_tiny_instructblip`` builds the InstructBLIP the tests refuse with.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from forgetbench.errors import ForgetbenchError

LAB_IMAGE_SIZE = 32  # the lab's images (forgetbench.lab.data.IMAGE_SIZE)
QWEN_IMAGE_SIDE = 56  # Qwen: one 56x56 grid = 4x4 patches of 14 = 4 image tokens after the 2x2 merge
VOCAB_MULTIPLE = 64
TINY_PATCH = 8  # the LLaVA families' (and InstructBLIP's) vision patch at 32 px: 16 patches per image
SIZES = ("tiny", "real")
REAL_SIZE = ("llava-onevision", "qwen2-vl")  # real-size configs: LLaVA-OneVision-0.5B, Qwen2-VL-2B (tiny.py)

# The LLM of every tiny family: 2 decoder layers, 64 wide (2 heads of 32), MLP 128.
TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
            max_position_embeddings=512, tie_word_embeddings=False, initializer_range=0.2)
MROPE = dict(rope_type="default", rope_theta=1000000.0, mrope_section=[4, 6, 6])  # sums to head_dim / 2 = 16

# -- chat templates -------------------------------------------------------------------------------------------------
# Each renders a message whose content is a plain string ("<image>\nquestion", how lmms-eval's llava_hf sends it) and
# one given as parts ([{"type": "image"}, {"type": "text", ...}], how TRL and --model forgetbench send it) to the same
# text, and renders the prompt a generation starts from (add_generation_prompt) as the prefix of the training text.

# Flattens message['content'] into `text` (images as the family's placeholder, `image` below).
_TEXT_OF = (
    "{%- if message['content'] is string -%}{%- set text = message['content'] -%}"
    "{%- else -%}{%- set ns = namespace(text='') -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' or 'image' in part or 'image_url' in part -%}{%- set ns.text = ns.text + IMAGE -%}"
    "{%- elif part['type'] == 'video' or 'video' in part -%}{%- set ns.text = ns.text + VIDEO -%}"
    "{%- elif 'text' in part -%}{%- set ns.text = ns.text + part['text'] -%}{%- endif -%}"
    "{%- endfor -%}{%- set text = ns.text -%}{%- endif -%}"
)


def _template(image: str, video: str, body: str, head: str = "") -> str:
    flatten = _TEXT_OF.replace("IMAGE", repr(image)).replace("VIDEO", repr(video))
    return head + "{%- for message in messages -%}" + flatten + body + "{%- endfor -%}"


# LLaVA-1.5 (Vicuna v1): "USER: <image>\nquestion ASSISTANT: answer</s>"; the prompt ends at "ASSISTANT:".
LLAVA_1_5_TEMPLATE = _template(
    "<image>\n", "<video>\n",
    "{%- if message['role'] == 'system' -%}{{ text + ' ' }}"
    "{%- elif message['role'] == 'user' -%}{{ 'USER: ' + text + ' ' }}"
    "{%- elif message['role'] == 'assistant' -%}{{ 'ASSISTANT:' }}"
    "{%- generation -%}{{ ' ' + text + eos_token }}{%- endgeneration -%}{{ ' ' }}"
    "{%- endif -%}",
) + "{%- if add_generation_prompt -%}{{ 'ASSISTANT:' }}{%- endif -%}"

# LLaVA-OneVision (llava-hf's turn format): "<|im_start|>user <image>\nquestion<|im_end|><|im_start|>assistant\n
# answer<|im_end|>"; the prompt ends at "<|im_start|>assistant\n".
ONEVISION_TEMPLATE = _template(
    "<image>\n", "<video>\n",
    "{%- if message['role'] == 'assistant' -%}{{ '<|im_start|>assistant\n' }}"
    "{%- generation -%}{{ text + '<|im_end|>' }}{%- endgeneration -%}"
    "{%- else -%}{{ '<|im_start|>' + message['role'] + ' ' + text + '<|im_end|>' }}"
    "{%- endif -%}",
) + "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"

# Qwen2-VL and Qwen2.5-VL (ChatML, Qwen's default system turn): "<|im_start|>system\nYou are a helpful
# assistant.<|im_end|>\n<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>question<|im_end|>\n
# <|im_start|>assistant\nanswer<|im_end|>\n"; the prompt ends at "<|im_start|>assistant\n".
QWEN_SYSTEM = "You are a helpful assistant."
QWEN_TEMPLATE = _template(
    "<|vision_start|><|image_pad|><|vision_end|>", "<|vision_start|><|video_pad|><|vision_end|>",
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{ '<|im_start|>system\n" + QWEN_SYSTEM + "<|im_end|>\n' }}{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}{{ '<|im_start|>assistant\n' }}"
    "{%- generation -%}{{ text + '<|im_end|>' }}{%- endgeneration -%}{{ '\n' }}"
    "{%- else -%}{{ '<|im_start|>' + message['role'] + '\n' + text + '<|im_end|>\n' }}"
    "{%- endif -%}",
) + "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"

CHATML = ("<|im_start|>", "<|im_end|>", "<|endoftext|>")
QWEN_VISION = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")


@dataclass(frozen=True)
class Family:
    name: str
    model_class: str  # transformers class the folder loads as
    processor_class: str
    image_processor_class: str
    config_folder: str  # recipes/configs/<folder>: the real model's recipe configs
    lmms_eval_model: str  # lmms-eval's own wrapper for the family
    chat_template: str
    eos_token: str
    pad_token: str
    bos_token: str | None
    image_token: str
    video_token: str | None
    added_tokens: tuple[str, ...]  # special tokens beyond the lab tokenizer's <pad> <s> </s> <image>

    @property
    def end_of_turn(self) -> str:
        """The token that closes the assistant's turn (trained on, with the answer)."""
        return self.eos_token


FAMILIES = {
    "llava-1.5": Family(
        "llava-1.5", "LlavaForConditionalGeneration", "LlavaProcessor", "CLIPImageProcessor", "llava-1.5-7b",
        "llava_hf", LLAVA_1_5_TEMPLATE, eos_token="</s>", pad_token="<pad>", bos_token="<s>", image_token="<image>",
        video_token=None, added_tokens=()),
    "llava-onevision": Family(
        "llava-onevision", "LlavaOnevisionForConditionalGeneration", "LlavaOnevisionProcessor",
        "LlavaOnevisionImageProcessor", "llava-onevision-0.5b", "llava_hf", ONEVISION_TEMPLATE,
        eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token=None, image_token="<image>",
        video_token="<video>", added_tokens=(*CHATML, "<video>")),
    "qwen2-vl": Family(
        "qwen2-vl", "Qwen2VLForConditionalGeneration", "Qwen2VLProcessor", "Qwen2VLImageProcessor", "qwen2-vl-2b",
        "qwen2_vl", QWEN_TEMPLATE, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token=None,
        image_token="<|image_pad|>", video_token="<|video_pad|>", added_tokens=(*CHATML, *QWEN_VISION)),
    "qwen2.5-vl": Family(
        "qwen2.5-vl", "Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor", "Qwen2VLImageProcessor",
        "qwen2.5-vl-3b", "qwen2_5_vl", QWEN_TEMPLATE, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        bos_token=None, image_token="<|image_pad|>", video_token="<|video_pad|>", added_tokens=(*CHATML, *QWEN_VISION)),
}


class FamilyError(ForgetbenchError):
    """An unknown family or an output folder that cannot be written."""


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise FamilyError(f"--family {name}: unknown; known: {', '.join(FAMILIES)}")
    return FAMILIES[name]


# -- tokenizer and processor ----------------------------------------------------------------------------------------

def build_tokenizer(family: Family):
    """The lab's byte-level BPE (:func:`forgetbench.lab.model.build_tokenizer`) with the family's special tokens,
    end-of-sequence, padding and image tokens, and chat template."""
    import copy

    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast

    from forgetbench.lab.model import build_tokenizer as lab_tokenizer

    bpe = copy.deepcopy(lab_tokenizer().backend_tokenizer)
    bpe.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in family.added_tokens])
    extra = {"image_token": family.image_token}
    if family.video_token:
        extra["video_token"] = family.video_token
    if family.name.startswith("qwen"):
        extra |= {"vision_bos_token": "<|vision_start|>", "vision_eos_token": "<|vision_end|>"}
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token=family.eos_token, pad_token=family.pad_token, bos_token=family.bos_token,
        extra_special_tokens=extra, model_input_names=["input_ids", "attention_mask"],
        chat_template=family.chat_template, padding_side="right",
    )


def build_processor(family: Family, tokenizer=None, size: str = "tiny"):
    """The family's real processor class around ``tokenizer`` and an image processor for the model's ``size``:
    32-px images (the lab's) or, Qwen, one 56x56 grid for ``tiny``; the real model's image size (384 px, one tile,
    for LLaVA-OneVision-0.5B's SigLIP; 448x448 for Qwen2-VL-2B) for ``real``."""
    import transformers

    tokenizer = tokenizer or build_tokenizer(family)
    real = _check_size(family, size) == "real"
    side, patch = (384, 14) if real else (LAB_IMAGE_SIZE, TINY_PATCH)
    if family.name == "llava-1.5":
        image = transformers.CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
        return transformers.LlavaProcessor(
            image_processor=image, tokenizer=tokenizer, patch_size=patch, vision_feature_select_strategy="default",
            num_additional_image_tokens=1, chat_template=family.chat_template)  # CLIP's CLS, dropped by "default"
    if family.name == "llava-onevision":
        image = transformers.LlavaOnevisionImageProcessor(size={"height": side, "width": side},
                                                          image_grid_pinpoints=[[side, side]])
        video = transformers.LlavaOnevisionVideoProcessor(size={"height": side, "width": side})
        return transformers.LlavaOnevisionProcessor(
            image_processor=image, tokenizer=tokenizer, video_processor=video,
            num_image_tokens=(side // patch) ** 2, vision_feature_select_strategy="full",
            chat_template=family.chat_template)
    pixels = (448 if real else QWEN_IMAGE_SIDE) ** 2
    shape = dict(patch_size=14, merge_size=2, temporal_patch_size=2)
    image = transformers.Qwen2VLImageProcessor(min_pixels=pixels, max_pixels=pixels, **shape)
    video = transformers.Qwen2VLVideoProcessor(min_pixels=pixels, max_pixels=pixels, **shape)
    processor_class = getattr(transformers, family.processor_class)
    return processor_class(image_processor=image, tokenizer=tokenizer, video_processor=video,
                           chat_template=family.chat_template)


# -- models ---------------------------------------------------------------------------------------------------------

def _check_size(family: Family, size: str) -> str:
    if size not in SIZES:
        raise FamilyError(f"--size {size}: unknown; known: {', '.join(SIZES)}")
    if size == "real" and family.name not in REAL_SIZE:
        raise FamilyError(f"--size real: written here for {', '.join(REAL_SIZE)} only, not {family.name}")
    return size


def _token_ids(tokenizer) -> dict:
    return dict(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                bos_token_id=tokenizer.bos_token_id)


def _text_config(tokenizer, **extra) -> dict:
    vocab = -(-len(tokenizer) // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
    return dict(TEXT, vocab_size=vocab, **_token_ids(tokenizer), **extra)


def model_config(family: Family, tokenizer, size: str = "tiny"):
    """The transformers config of a ``family`` model whose token ids are ``tokenizer``'s: tiny, or the real model's
    sizes (forgetbench/lab/tiny.py; the real vocabulary, of which the tokenizer uses the first ids)."""
    import transformers

    from forgetbench.lab import tiny

    real = _check_size(family, size) == "real"
    image_id = tokenizer.convert_tokens_to_ids(family.image_token)
    video_id = tokenizer.convert_tokens_to_ids(family.video_token) if family.video_token else None
    side = LAB_IMAGE_SIZE
    if family.name == "llava-1.5":
        vision = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                               num_attention_heads=2, image_size=side, patch_size=TINY_PATCH,
                                               projection_dim=32)
        return transformers.LlavaConfig(
            vision_config=vision, text_config=transformers.LlamaConfig(**_text_config(tokenizer)),
            image_token_id=image_id, vision_feature_layer=-2, vision_feature_select_strategy="default",
            projector_hidden_act="gelu")
    if family.name == "llava-onevision":
        if real:
            vision = tiny.ONEVISION_0_5B_VISION
            text = {k: v for k, v in tiny.ONEVISION_0_5B_TEXT.items() if not k.endswith("_token_id")}
            text |= _token_ids(tokenizer)
        else:
            vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                          image_size=side, patch_size=TINY_PATCH, vision_use_head=False)
            text = _text_config(tokenizer)
        return transformers.LlavaOnevisionConfig(
            vision_config=dict(model_type="siglip_vision_model", **vision),
            text_config=dict(model_type="qwen2", **text), image_token_id=image_id, video_token_id=video_id,
            image_grid_pinpoints=[[vision["image_size"]] * 2], vision_feature_layer=-1,
            vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9")
    ids = dict(image_token_id=image_id, video_token_id=video_id,
               vision_start_token_id=tokenizer.convert_tokens_to_ids("<|vision_start|>"),
               vision_end_token_id=tokenizer.convert_tokens_to_ids("<|vision_end|>"))
    if real:  # qwen2-vl
        text = dict(tiny.QWEN2_VL_2B_TEXT, **_token_ids(tokenizer))
        return transformers.Qwen2VLConfig(vision_config=dict(tiny.QWEN2_VL_2B_VISION), text_config=text, **ids)
    text = _text_config(tokenizer, rope_parameters=MROPE)
    shape = dict(patch_size=14, spatial_merge_size=2, temporal_patch_size=2, in_channels=3)
    if family.name == "qwen2-vl":
        vision = dict(depth=2, embed_dim=32, hidden_size=TEXT["hidden_size"], num_heads=2, mlp_ratio=2, **shape)
        return transformers.Qwen2VLConfig(vision_config=vision, text_config=text, **ids)
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, out_hidden_size=TEXT["hidden_size"], num_heads=2,
                  window_size=112, fullatt_block_indexes=[1], **shape)
    return transformers.Qwen2_5_VLConfig(vision_config=vision, text_config=text, **ids)


def build_model(family: Family, tokenizer, size: str = "tiny", device=None, dtype=None):
    """A random-init model of ``family`` whose token ids are ``tokenizer``'s, built on ``device`` in ``dtype``
    (a real-size model is built where it will run, in the precision it runs in)."""
    import torch
    import transformers

    config = model_config(family, tokenizer, size)
    previous = torch.get_default_dtype()
    try:
        if dtype is not None:
            torch.set_default_dtype(dtype)
        with torch.device(device or "cpu"):
            model = getattr(transformers, family.model_class)(config)
    finally:
        torch.set_default_dtype(previous)
    generation = model.generation_config
    generation.eos_token_id = tokenizer.eos_token_id
    generation.pad_token_id = tokenizer.pad_token_id
    generation.bos_token_id = tokenizer.bos_token_id
    return model


def build_family(family: str, out_dir: str | Path, size: str = "tiny", seed: int = 0, device=None,
                 dtype=None) -> Path:
    """Write a random-init ``family`` model of ``size`` and its processor to ``out_dir`` (all or nothing); returns
    the folder."""
    import torch

    from forgetbench.checkpoint import write_model_folder

    spec = get_family(family)
    _check_size(spec, size)
    tokenizer = build_tokenizer(spec)
    processor = build_processor(spec, tokenizer, size)
    torch.manual_seed(seed)
    model = build_model(spec, tokenizer, size, device=device, dtype=dtype)

    def write(staging: Path) -> None:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)

    try:
        return write_model_folder(out_dir, write)
    except OSError as exc:
        raise FamilyError(f"--out {out_dir}: cannot write ({exc.strerror or exc})") from None


def build_tiny_family(family: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny random-init ``family`` model and its processor to ``out_dir`` (all or nothing); returns it."""
    return build_family(family, out_dir, "tiny", seed)


# -- InstructBLIP: not a supported family (docs/methods.md, "Every family end to end") --------------------------------

def build_tiny_instructblip(out_dir: str | Path, seed: int = 0) -> Path:
    """A tiny random-init InstructBLIP (ViT, Q-Former with 4 queries, Llama) with its ``InstructBlipProcessor``:
    what the tests hold forgetbench's InstructBLIP answers with. Its processor has no chat template (as the real
    ones: the prompt is the question itself, after the query tokens)."""
    import copy

    import torch
    import transformers

    from forgetbench.checkpoint import write_model_folder
    from forgetbench.lab.model import build_tokenizer as lab_tokenizer

    def plain_tokenizer():  # no image_token attribute: InstructBlipProcessor adds its own <image> (already in the BPE)
        return transformers.PreTrainedTokenizerFast(
            tokenizer_object=copy.deepcopy(lab_tokenizer().backend_tokenizer), pad_token="<pad>", bos_token="<s>",
            eos_token="</s>", model_input_names=["input_ids", "attention_mask"])

    tokenizer, queries = plain_tokenizer(), 4
    processor = transformers.InstructBlipProcessor(
        image_processor=transformers.BlipImageProcessor(size={"height": LAB_IMAGE_SIZE, "width": LAB_IMAGE_SIZE}),
        tokenizer=tokenizer, qformer_tokenizer=plain_tokenizer(), num_query_tokens=queries)
    vocab = -(-len(tokenizer) // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    config = transformers.InstructBlipConfig(
        vision_config=dict(small, image_size=LAB_IMAGE_SIZE, patch_size=TINY_PATCH),
        qformer_config=dict(small, vocab_size=vocab, encoder_hidden_size=32, max_position_embeddings=128),
        text_config=dict(model_type="llama", **_text_config(tokenizer)),
        num_query_tokens=queries, image_token_index=tokenizer.convert_tokens_to_ids("<image>"))
    torch.manual_seed(seed)
    model = transformers.InstructBlipForConditionalGeneration(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id

    def write(staging: Path) -> None:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)

    return write_model_folder(out_dir, write)


# -- command line ---------------------------------------------------------------------------------------------------

def configure_tiny(parser: argparse.ArgumentParser) -> None:
    """Options of ``forgetbench lab tiny``."""
    parser.add_argument("--family", required=True, choices=list(FAMILIES), help="the model family to build")
    parser.add_argument("--out", required=True, type=Path, help="folder to write the model and processor to")
    parser.add_argument("--size", choices=SIZES, default="tiny",
                        help=f"tiny (the default: CPU tests), or real (random init at the real model's size: "
                             f"{', '.join(REAL_SIZE)} only; several GB)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random initialization")


def run_tiny(args: argparse.Namespace) -> int:
    """``forgetbench lab tiny``: build the folder and print its path. Raises :class:`FamilyError` (one line)."""
    out = build_family(args.family, args.out, size=getattr(args, "size", "tiny"), seed=args.seed)
    print(out)
    return 0
