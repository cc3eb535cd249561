"""The lab's tasks as rows of the task registry: one definition of each task's prompt and label set.

lmms-eval reads these through the task YAMLs in ``tasks/lab`` (``!function forgetbench.suite.lab.doc_to_text``)
and the recipes read them through :func:`forgetbench.suite.train_conversations`, so training and evaluation cannot
drift apart. The lab's data and model (``forgetbench.lab``) are generated from these label sets.

Every lab document has the columns ``id`` (str), ``task`` (str), ``image`` (PIL image) and ``answer`` (str).
"""

from __future__ import annotations

from forgetbench.suite import scoring
from forgetbench.suite.classify import LabelSet, hooks
from forgetbench.suite.common import conversation, first

PREFIX = "forgetbench_lab_"
DIGITS = tuple(str(d) for d in range(10))
COLORS = ("red", "green", "blue", "yellow", "purple", "orange")
SHAPES = ("circle", "square", "triangle", "cross")
COUNTS = ("one", "two", "three", "four")  # words: no answer token shared with the digits

LAB_TASKS: dict[str, LabelSet] = {
    task.key: task
    for task in (
        LabelSet("color", COLORS, custom_question="What colour is the shape? Answer with one word."),
        LabelSet("shape", SHAPES, custom_question="What shape is in the image? Answer with one word."),
        LabelSet("count", COUNTS, custom_question="How many dots are in the image? Answer with one word."),
        LabelSet("printed", DIGITS, custom_question="Which number is printed in the image? Answer with a number."),
        # EMT's classification-as-QA prompt: the label set is part of the question.
        LabelSet("digits", DIGITS, noun="digit"),
    )
}

_hooks = hooks(LAB_TASKS, "task")
doc_to_visual, doc_to_text, doc_to_target = _hooks.doc_to_visual, _hooks.doc_to_text, _hooks.doc_to_target
doc_to_choice = _hooks.doc_to_choice


def __getattr__(name: str):
    """``ROLES``: each lab task's role, ``{key: "upstream" | "downstream"}`` (what the base model learned in
    pre-training, F, and what the fine-tune should learn, E), as the lab's group YAMLs in ``tasks/lab`` declare them
    and the registry reads them (computed on use: the registry imports this module first)."""
    if name == "ROLES":
        from forgetbench import suite

        return {key: suite.TASKS[task_name(key)].role for key in LAB_TASKS}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def task_name(key: str) -> str:
    """The lmms-eval name of a lab task.

    >>> task_name("digits")
    'forgetbench_lab_digits'
    """
    return PREFIX + key


def prompt(doc: dict) -> str:
    """The question asked for ``doc``, identical in training and evaluation.

    >>> prompt({"task": "color"})
    'What colour is the shape? Answer with one word.'
    """
    return _hooks.prompt(doc)


def to_sft_example(doc: dict) -> dict:
    """One document as TRL's vision-language SFT format (``images`` + ``messages``)."""
    return conversation([doc["image"]], prompt(doc), doc["answer"])


def process_results(doc: dict, results: list) -> dict:
    """Exact match of the answer's first word, normalised (lmms-eval averages it into an accuracy fraction).

    >>> process_results({"answer": "red"}, [" Red."]), process_results({"answer": "3"}, ["3 dots"])
    ({'exact_match': 1.0}, {'exact_match': 1.0})
    """
    return {"exact_match": float(scoring.first_word(first(results)) == doc["answer"])}
