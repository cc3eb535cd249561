"""The lab's tasks: one definition of each task's prompt and label set.

lmms-eval reads these through the task YAMLs (``!function forgetbench.lab.tasks.doc_to_text``) and the
recipes read them through :func:`to_sft_example`, so training and evaluation cannot drift apart.

Every lab document has the columns ``id`` (str), ``task`` (str), ``image`` (PIL image) and ``answer`` (str).
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class LabTask:
    name: str
    role: str  # "upstream" (what the base model knows) or "downstream" (what the fine-tune should learn)
    question: str
    labels: tuple[str, ...]

    @property
    def lmms_eval_name(self) -> str:
        return f"forgetbench_lab_{self.name}"


COLORS = ("red", "green", "blue", "yellow", "purple", "orange")
SHAPES = ("circle", "square", "triangle", "cross")
COUNTS = ("1", "2", "3", "4")
DIGITS = tuple(str(d) for d in range(10))

LAB_TASKS: dict[str, LabTask] = {
    task.name: task
    for task in (
        LabTask("color", "upstream", "What colour is the shape? Answer with one word.", COLORS),
        LabTask("shape", "upstream", "What shape is in the image? Answer with one word.", SHAPES),
        LabTask("count", "upstream", "How many dots are in the image? Answer with a number.", COUNTS),
        # EMT's classification-as-QA prompt: the label set is part of the question.
        LabTask(
            "digits",
            "downstream",
            "What is the digit in the image? Please only answer a single digit in " + ", ".join(DIGITS) + ".",
            DIGITS,
        ),
    )
}
UPSTREAM = tuple(name for name, task in LAB_TASKS.items() if task.role == "upstream")
DOWNSTREAM = tuple(name for name, task in LAB_TASKS.items() if task.role == "downstream")


def prompt(doc: dict) -> str:
    """The question asked for ``doc``, identical in training and evaluation.

    >>> prompt({"task": "color"})
    'What colour is the shape? Answer with one word.'
    """
    return LAB_TASKS[doc["task"]].question


def normalize_answer(text: str) -> str:
    """Lower-case, keep the first word, drop punctuation: a tiny model's answer is one word.

    >>> normalize_answer(" Red.")
    'red'
    >>> normalize_answer("3 dots")
    '3'
    >>> normalize_answer("")
    ''
    """
    words = re.sub(r"[^\w\s]", " ", text.lower()).split()
    return words[0] if words else ""


def to_sft_example(doc: dict) -> dict:
    """One document as TRL's vision-language SFT format (``images`` + ``messages``)."""
    return {
        "images": [doc["image"].convert("RGB")],
        "messages": [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt(doc)}]},
            {"role": "assistant", "content": [{"type": "text", "text": doc["answer"]}]},
        ],
    }


# lmms-eval hooks, referenced from tasks/lab/_base_yaml and the templates that include it.


def doc_to_visual(doc: dict) -> list:
    return [doc["image"].convert("RGB")]


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    return prompt(doc)


def doc_to_target(doc: dict) -> str:
    return doc["answer"]


def doc_to_choice(doc: dict) -> list[str]:
    """The closed-set variants score every label of the task (lmms-eval prefixes each with a space)."""
    return list(LAB_TASKS[doc["task"]].labels)


def process_results(doc: dict, results: list[str]) -> dict:
    """Exact match after normalisation (lmms-eval averages it into an accuracy fraction)."""
    correct = normalize_answer(results[0]) == doc["answer"]
    return {"exact_match": float(correct)}
