"""Chat templates that train on the answer only, for real models whose stock template does not.

TRL's ``SFTTrainer(assistant_only_loss=True)`` computes the loss on the tokens inside the chat template's
``{% generation %}...{% endgeneration %}`` blocks. What the supported families ship (transformers 5.23, TRL 1.16):

- Qwen2-VL and Qwen2.5-VL: their stock template (byte-identical for both) has no generation block; TRL recognizes
  it and swaps in its own training template (``trl/chat_templates/qwen2_5_vl_training.jinja``), whose block covers
  the answer and ``<|im_end|>\\n``. Nothing to do here.
- llava-hf LLaVA-1.5 and LLaVA-OneVision: their stock templates have generation blocks, so TRL keeps them, but the
  blocks leave the end-of-turn token out (LLaVA-1.5's renders none at all; OneVision's ``<|im_end|>`` follows the
  block): a model tuned on them is never trained to stop (TRL warns: "the model may not learn to stop").
  OneVision's stock template also renders a trained turn as ``<|im_start|>assistant \\n`` while its generation
  prompt is ``<|im_start|>assistant\\n``: the prompt seen in training is not the prompt seen in evaluation.

:data:`TRAINING_TEMPLATES` holds, per stock template (matched byte for byte, as TRL matches its own), a training
template that renders every prompt exactly as the stock one does (system and user turns, images, the generation
prompt: what evaluation sends) and whose generation block is the answer and its end-of-turn token.
:func:`install_training_template` puts it on a processor; a recipe calls it before building the trainer when
``assistant_only_loss`` is on (docs/methods.md, "Every family end to end").
"""

from __future__ import annotations

# llava-hf/llava-1.5-7b-hf (and llava-v1.6-vicuna) chat_template.json: "USER: <image>\nQ ASSISTANT:" to generate; a
# trained answer is "ASSISTANT: A " with no end-of-sequence token.
LLAVA_1_5_STOCK = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

# llava-hf/llava-onevision-qwen2-*-ov-hf chat_template.json: "<|im_start|>user <image>\nQ<|im_end|>
# <|im_start|>assistant\n" to generate; a trained answer is "<|im_start|>assistant \nA<|im_end|>" (the block holds
# "\nA" only).
ONEVISION_STOCK = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + ' '}}{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{% endfor %}"
    "{# Render all video then #}{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}"
    "{{ '<video>' }}{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ '\n' + content['text'] }}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ '\n' + content['text'] }}{% endgeneration %}{% endfor %}{% endif %}{{'<|im_end|>'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Training templates. A message's content may also be a plain string (rendered as its text).
_PARTS = (
    "{%- if message['content'] is string -%}{%- set texts = [message['content']] -%}{%- set n_images = 0 -%}"
    "{%- set n_videos = 0 -%}{%- else -%}"
    "{%- set texts = message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | list -%}"
    "{%- set n_images = message['content'] | selectattr('type', 'equalto', 'image') | list | length -%}"
    "{%- set n_videos = message['content'] | selectattr('type', 'equalto', 'video') | list | length -%}"
    "{%- endif -%}"
)

# "USER: <image>\nQ ASSISTANT: A</s> " (Vicuna v1, as LLaVA-1.5 was trained); the block is " A</s>".
LLAVA_1_5_TRAINING = (
    "{%- for message in messages -%}" + _PARTS
    + "{%- if message['role'] == 'assistant' -%}{{ 'ASSISTANT:' }}"
    "{%- generation -%}{{ ' ' + texts | join(' ') + eos_token }}{%- endgeneration -%}{{ ' ' }}"
    "{%- else -%}{%- if message['role'] != 'system' -%}{{ message['role'].upper() + ': ' }}{%- endif -%}"
    "{{ '<image>\n' * n_images }}{%- for text in texts -%}{{ text + ' ' }}{%- endfor -%}"
    "{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'ASSISTANT:' }}{%- endif -%}"
)

# "<|im_start|>user <image>\nQ<|im_end|><|im_start|>assistant\nA<|im_end|>"; the block is "A<|im_end|>".
ONEVISION_TRAINING = (
    "{%- for message in messages -%}" + _PARTS
    + "{%- if message['role'] == 'assistant' -%}{{ '<|im_start|>assistant\n' }}"
    "{%- generation -%}{{ texts | join('\n') + '<|im_end|>' }}{%- endgeneration -%}"
    "{%- else -%}{{ '<|im_start|>' + message['role'] + ' ' + '<image>' * n_images + '<video>' * n_videos }}"
    "{%- for text in texts -%}{{ '\n' + text }}{%- endfor -%}{{ '<|im_end|>' }}"
    "{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)

# family -> (stock template, forgetbench's training template)
TRAINING_TEMPLATES = {
    "llava-1.5": (LLAVA_1_5_STOCK, LLAVA_1_5_TRAINING),
    "llava-onevision": (ONEVISION_STOCK, ONEVISION_TRAINING),
}


def training_chat_template(chat_template: str | dict | None) -> tuple[str, str] | None:
    """``(family, training template)`` for a known stock template that does not train the end of turn, else None:
    a template TRL patches itself (Qwen2-VL, Qwen2.5-VL), one that already marks answer and end of turn, or an
    unknown one (TRL then uses or refuses it as it would)."""
    if isinstance(chat_template, dict):  # named variants: the default one is what TRL renders
        chat_template = chat_template.get("default")
    if not isinstance(chat_template, str):
        return None
    for family, (stock, training) in TRAINING_TEMPLATES.items():
        if _same_source(chat_template, stock):
            return family, training
    return None


def _same_source(a: str, b: str) -> bool:
    """Byte-equal but for how a newline inside a Jinja string literal is written: the escape or the character
    itself render the same, and a copy of a template may hold either."""
    return a.replace("\\n", "\n") == b.replace("\\n", "\n")


def install_training_template(processor) -> str | None:
    """Replace ``processor``'s chat template (and its tokenizer's) by forgetbench's training template when it is a
    known stock template whose generation block leaves out the end of turn; returns the family, or None when
    nothing was changed. Prompts render as before, so the saved checkpoint evaluates as the stock model would."""
    found = training_chat_template(getattr(processor, "chat_template", None))
    if found is None:
        return None
    family, template = found
    processor.chat_template = template
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is not None and tokenizer is not processor:
        tokenizer.chat_template = template
    return family
