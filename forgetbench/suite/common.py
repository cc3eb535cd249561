"""Pieces every suite task shares: the short-answer instruction, the SFT conversation format, image handling."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from PIL import Image

from forgetbench.errors import ForgetbenchError, one_line

T = TypeVar("T")

SHORT_ANSWER = "Answer the question using a single word or phrase."


ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
SIXTEEN_BIT_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")


def rgb(image) -> Image.Image:
    """A PIL image in RGB: the one conversion training rows and evaluation documents go through.

    ``image`` is a PIL image, a path (the RSVQA converter stores paths, not copies), datasets' undecoded
    ``{"bytes", "path"}`` or bytes (:func:`forgetbench.suite.images.open_image`, which raises
    :class:`~forgetbench.suite.images.UnreadableImage` for what cannot be read). The rules (docs/faults.md):
    16-bit (and 32-bit integer) grayscale keeps its top 8 bits of the 16-bit range; transparency (alpha, or a
    palette's transparent colour) is composited on white, where ``convert("RGB")`` would show whatever colour the
    transparent pixels hold; CMYK, palette, grayscale and the rest convert as PIL does; any size from 1x1 is kept
    (the processor resizes).

    >>> rgb(Image.new("I;16", (1, 1), 65535)).getpixel((0, 0)), rgb(Image.new("LA", (1, 1), (0, 0))).getpixel((0, 0))
    ((255, 255, 255), (255, 255, 255))
    """
    from forgetbench.suite.images import open_image

    image = open_image(image)
    if image.mode in SIXTEEN_BIT_MODES:
        import numpy as np

        top = (np.clip(np.asarray(image, dtype=np.int64), 0, 65535) >> 8).astype(np.uint8)
        return Image.fromarray(top).convert("RGB")
    if image.mode in ALPHA_MODES or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", image.size, (255, 255, 255, 255)), image).convert("RGB")
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


def convert_or_refuse(release: Path, convert: Callable[[], T]) -> T:
    """A dataset converter's work (``forgetbench convert ...``), with a release that cannot be read refused in one
    line naming it."""
    try:
        return convert()
    except (ValueError, OSError, KeyError) as exc:
        raise ForgetbenchError(f"--release {release}: {one_line(exc)}") from None
