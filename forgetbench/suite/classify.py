"""Classification asked as a question (EMT, arXiv 2309.10313): one implementation that EMT's tasks and the lab share.

A :class:`LabelSet` names a set of labels and how the question about them is put. The prompt lists the label set,
as EMT asked it; :func:`hooks` builds a task family's lmms-eval hooks (image, question, target, choices) from a
mapping ``key -> LabelSet`` and the document column that holds the key, so every family gets the same hooks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import SimpleNamespace

from forgetbench.suite.common import rgb


@dataclass(frozen=True)
class LabelSet:
    key: str
    labels: tuple[str, ...]  # the names the prompt shows and the judge matches against
    noun: str = "object"  # "digit", "object": what the question asks for
    custom_question: str | None = None  # a question of its own instead of EMT's (the lab's colour, shape, count)
    synonyms: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def question(self) -> str:
        """EMT's question, the label set inside it, unless the set has a question of its own.

        >>> LabelSet("d", ("0", "1"), "digit").question
        'What is the digit in the image? Please only answer a single digit in 0, 1.'
        >>> LabelSet("c", ("red",), custom_question="What colour?").question
        'What colour?'
        """
        if self.custom_question is not None:
            return self.custom_question
        return (f"What is the {self.noun} in the image? "
                f"Please only answer a single {self.noun} in {', '.join(self.labels)}.")


def hooks(sets: Mapping[str, LabelSet], key_column: str) -> SimpleNamespace:
    """The lmms-eval hooks of a family of classification tasks whose documents carry ``image``, ``answer`` (the
    shown label) and ``key_column`` (which label set).

    >>> h = hooks({"d": LabelSet("d", ("0", "1"), "digit")}, "set")
    >>> doc = {"set": "d", "answer": "1"}
    >>> h.doc_to_target(doc), h.doc_to_choice(doc), h.doc_to_target_index(doc)
    ('1', ['0', '1'], 1)
    """

    def label_set(doc: dict) -> LabelSet:
        return sets[doc[key_column]]

    def prompt(doc: dict) -> str:
        return label_set(doc).question

    def doc_to_visual(doc: dict) -> list:
        return [rgb(doc["image"])]

    def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
        return prompt(doc)

    def doc_to_target(doc: dict) -> str:
        return doc["answer"]

    def doc_to_choice(doc: dict) -> list[str]:
        """The closed-set variants score every label of the set (lmms-eval prefixes each with a space)."""
        return list(label_set(doc).labels)

    def doc_to_target_index(doc: dict) -> int:
        return label_set(doc).labels.index(doc["answer"])

    return SimpleNamespace(label_set=label_set, prompt=prompt, doc_to_visual=doc_to_visual, doc_to_text=doc_to_text,
                           doc_to_target=doc_to_target, doc_to_choice=doc_to_choice,
                           doc_to_target_index=doc_to_target_index)
