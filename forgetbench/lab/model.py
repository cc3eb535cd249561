"""The lab's tiny MLLM: a real ``LlavaForConditionalGeneration`` (CLIP vision tower, projector, Llama) built offline.

It is small enough (about 1 M parameters) to pre-train, fine-tune and evaluate on two CPU cores in minutes, and
it is a stock transformers LLaVA, so lmms-eval's own ``llava_hf`` wrapper and TRL's ``SFTTrainer`` run on it
unchanged. The tokenizer is a byte-level BPE trained here on the lab's own text, so it can encode any string.
"""

from __future__ import annotations

from forgetbench.checkpoint import lab_base_model_path as base_model_path  # noqa: F401  (the lab's own name for it)
from forgetbench.lab.data import IMAGE_SIZE
from forgetbench.suite.lab import LAB_TASKS

PATCH_SIZE = 8
VOCAB_SIZE = 1024
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<image>")

# Renders a user turn given as a plain string ("<image>\nquestion", how lmms-eval's llava_hf sends it) and one
# given as parts ([{"type": "image"}, {"type": "text", ...}], how TRL sends it) to the same text, so the prompt
# seen in training is byte-for-byte the prompt seen in evaluation. {% generation %} marks the tokens that TRL's
# assistant_only_loss trains on.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}{%- set text = message['content'] -%}"
    "{%- else -%}{%- set ns = namespace(text='') -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{%- set ns.text = ns.text + '<image>\n' -%}"
    "{%- elif part['type'] == 'text' -%}{%- set ns.text = ns.text + part['text'] -%}{%- endif -%}"
    "{%- endfor -%}{%- set text = ns.text -%}{%- endif -%}"
    "{%- if message['role'] == 'user' -%}{{ 'USER: ' + text + '\n' }}"
    "{%- elif message['role'] == 'assistant' -%}{{ 'ASSISTANT:' }}"
    "{%- generation -%}{{ ' ' + text + '</s>' }}{%- endgeneration -%}{{ '\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'ASSISTANT:' }}{%- endif -%}"
)


def tokenizer_corpus() -> list[str]:
    """Text the BPE is trained on: every prompt and answer, so each answer word is a single token."""
    lines = []
    for task in LAB_TASKS.values():
        for label in task.labels:
            lines += [f"USER: <image>\n{task.question}\nASSISTANT: {label}</s>"] * 20
            lines += [f"Say {label}.", f"{label} {label}. {label}"] * 20
    lines += ["yes no the a an is what how many which colour color shape digit number image answer word"] * 10
    return lines


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(tokenizer_corpus(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        extra_special_tokens={"image_token": "<image>"},
        model_input_names=["input_ids", "attention_mask"],
        chat_template=CHAT_TEMPLATE,
    )
    for task in LAB_TASKS.values():
        for label in task.labels:
            pieces = tokenizer.tokenize(" " + label)
            if len(pieces) != 1:
                raise RuntimeError(f"lab answer {label!r} is {len(pieces)} tokens; enlarge the tokenizer corpus")
    return tokenizer


def build_processor(tokenizer=None):
    from transformers import CLIPImageProcessor, LlavaProcessor

    tokenizer = tokenizer or build_tokenizer()
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token, dropped by the "default" strategy
        chat_template=CHAT_TEMPLATE,
    )


def build_model(tokenizer, seed: int = 0):
    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(seed)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
            image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, projection_dim=64,
        ),
        text_config=LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
            pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False,
        ),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model
