"""Pieces every suite task shares: the short-answer instruction, the SFT conversation format, image handling."""

from __future__ import annotations

from PIL import Image

SHORT_ANSWER = "Answer the question using a single word or phrase."


def rgb(image) -> Image.Image:
    """A PIL image in RGB; a path (str) is opened first (the RSVQA converter stores paths, not copies)."""
    if isinstance(image, str):
        with Image.open(image) as opened:
            return opened.convert("RGB")
    return image.convert("RGB")


def conversation(images: list, prompt: str, answer: str) -> dict:
    """One training row in TRL's vision-language format: the images, then the evaluation prompt, then the answer.

    >>> row = conversation([], "Q?", "a")
    >>> row["messages"][0]["content"], row["messages"][1]["content"]
    ([{'type': 'text', 'text': 'Q?'}], [{'type': 'text', 'text': 'a'}])
    """
    return {
        "images": [rgb(image) for image in images],
        "messages": [
            {"role": "user", "content": [{"type": "image"}] * len(images) + [{"type": "text", "text": prompt}]},
            {"role": "assistant", "content": [{"type": "text", "text": answer}]},
        ],
    }


# The hooks of a one-image, short-answer QA task whose documents have ``image``, ``question`` and ``answer``
# (PathVQA, RSVQA, OCR-VQA): its module re-exports them, so the YAMLs and the recipes name the task's module.


def prompt(doc: dict) -> str:
    return f"{doc['question'].strip()}\n{SHORT_ANSWER}"


def to_sft_example(doc: dict) -> dict:
    return conversation([doc["image"]], prompt(doc), doc["answer"])


def doc_to_visual(doc: dict) -> list:
    return [rgb(doc["image"])]


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    return prompt(doc)


def first(results: list) -> str:
    """The model's answer from lmms-eval's ``results`` list (empty string when there is none)."""
    return str(results[0]) if results else ""
