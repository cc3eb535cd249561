"""OCR-VQA (Mishra et al., 2019): questions about book covers (title, author, genre, edition). lmms-eval 0.7.3 has no
task for it.

Source: the hub copy ``howard-hou/OCR-VQA`` (splits train, validation, test), one row per cover: ``image_id``
(string), ``image`` (Image), ``questions`` and ``answers`` (lists of strings, aligned), and metadata (``title``,
``authorName``, ``genre``, ``image_url``, ``set_name``). :func:`process_docs` makes one document per question.
"""

from __future__ import annotations

from forgetbench.suite import scoring
from forgetbench.suite.common import doc_to_text, doc_to_visual, first, prompt, to_sft_example

__all__ = ["doc_to_text", "doc_to_visual", "process_docs", "process_results", "prompt", "to_sft_example"]


def process_docs(dataset):
    """One row per (cover, question): ``question_id`` ("<image_id>-<k>"), ``image_id``, ``image``, ``question``,
    ``answer``."""
    missing = {"image_id", "image", "questions", "answers"} - set(dataset.column_names)
    if missing:
        raise ValueError(f"OCR-VQA: columns missing: {', '.join(sorted(missing))} "
                         f"(got {', '.join(dataset.column_names)})")

    def explode(batch: dict) -> dict:
        out = {"question_id": [], "image_id": [], "image": [], "question": [], "answer": []}
        for image_id, image, questions, answers in zip(batch["image_id"], batch["image"], batch["questions"],
                                                       batch["answers"], strict=True):
            for k, (question, answer) in enumerate(zip(questions, answers, strict=True)):
                for key, value in (("question_id", f"{image_id}-{k}"), ("image_id", str(image_id)), ("image", image),
                                   ("question", question), ("answer", answer)):
                    out[key].append(value)
        return out

    return dataset.map(explode, batched=True, remove_columns=dataset.column_names)


# lmms-eval hooks (tasks/ocrvqa/): the prompt and images are the shared short-answer ones.


def process_results(doc: dict, results: list) -> dict:
    """Exact match after the suite's normalisation, and the cover's id for clustered intervals.

    >>> process_results({"answer": "Yes", "image_id": "b1"}, ["yes."])
    {'exact_match': 1.0, 'image_id': 'b1'}
    """
    return {"exact_match": float(scoring.answers_match(first(results), doc["answer"])), "image_id": doc["image_id"]}
