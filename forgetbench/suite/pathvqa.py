"""PathVQA (He et al., 2020): pathology VQA, half yes/no and half open-ended.

Source: the hub copy ``flaviagiammarino/path-vqa`` (splits train, validation, test; columns ``image`` (Image),
``question`` (string), ``answer`` (string)). The images belong to their publishers (textbooks and PEIR); see
docs/tasks.md.
"""

from __future__ import annotations

from forgetbench.suite import scoring
from forgetbench.suite.common import doc_to_text, doc_to_visual, first, prompt, to_sft_example

__all__ = ["doc_to_text", "doc_to_visual", "prompt", "process_results", "to_sft_example"]

YES_NO, OPEN = "yes_no", "open"


def question_kind(doc: dict) -> str:
    """Closed (yes/no) when the reference answer is yes or no, as the PathVQA paper splits them.

    >>> question_kind({"answer": "Yes"}), question_kind({"answer": "necrosis"})
    ('yes_no', 'open')
    """
    return YES_NO if scoring.normalize(doc["answer"]) in ("yes", "no") else OPEN


# lmms-eval hooks (tasks/pathvqa/): the prompt and images are the shared short-answer ones.


def process_results(doc: dict, results: list) -> dict:
    """Overall accuracy; yes/no accuracy; open-ended exact match and token F1 (each over its own questions).

    >>> out = process_results({"answer": "lung tissue"}, ["tissue"])
    >>> out["accuracy"], out["open_token_f1"]["value"]
    (0.0, 0.6666666666666666)
    """
    answer, kind = first(results), question_kind(doc)
    correct = float(scoring.answers_match(answer, doc["answer"]))
    f1 = scoring.token_f1(answer, doc["answer"]) if kind == OPEN else correct
    return {"accuracy": correct, "yes_no_accuracy": scoring.typed(kind, correct),
            "open_exact_match": scoring.typed(kind, correct), "open_token_f1": scoring.typed(kind, f1)}


yes_no_accuracy = scoring.type_mean(YES_NO)
open_mean = scoring.type_mean(OPEN)
