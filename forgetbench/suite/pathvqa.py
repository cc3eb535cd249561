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


def process_docs(dataset):
    """Adds ``image_hash``: a content hash of each image's bytes. The hub copy has ~33 k questions on ~5 k images
    and no image id, and the questions about one image must resample together (clustered intervals). The bytes
    are hashed undecoded, so a broken image still gets an id and is refused or counted where it is read.

    >>> import datasets, io
    >>> from PIL import Image
    >>> png = io.BytesIO(); Image.new("RGB", (2, 2), "red").save(png, format="PNG")
    >>> rows = datasets.Dataset.from_dict({"image": [{"bytes": png.getvalue(), "path": None}] * 2 + [
    ...     {"bytes": b"not an image", "path": None}], "question": ["q"] * 3, "answer": ["yes"] * 3},
    ...     features=datasets.Features({"image": datasets.Image(), "question": datasets.Value("string"),
    ...                                 "answer": datasets.Value("string")}))
    >>> ids = process_docs(rows)["image_hash"]
    >>> ids[0] == ids[1] != ids[2], len(ids[0])
    (True, 16)
    """
    import hashlib

    import datasets

    def content_hash(image) -> str:  # a missing image hashes like empty bytes: it is refused where it is read
        data = (image or {}).get("bytes") or ((image or {}).get("path") or "").encode()
        return hashlib.sha1(data).hexdigest()[:16]

    raw = dataset.cast_column("image", datasets.Image(decode=False)).select_columns(["image"])
    hashes = [content_hash(image) for batch in raw.iter(batch_size=1000) for image in batch["image"]]
    return dataset.add_column("image_hash", hashes)


def question_kind(doc: dict) -> str:
    """Closed (yes/no) when the reference answer is yes or no, as the PathVQA paper splits them.

    >>> question_kind({"answer": "Yes"}), question_kind({"answer": "necrosis"})
    ('yes_no', 'open')
    """
    return YES_NO if scoring.normalize(doc["answer"]) in ("yes", "no") else OPEN


# lmms-eval hooks (tasks/pathvqa/): the prompt and images are the shared short-answer ones.


def process_results(doc: dict, results: list) -> dict:
    """Overall accuracy; yes/no accuracy; open-ended exact match and token F1 (each over its own questions).

    >>> out = process_results({"answer": "lung tissue", "image_hash": "3f2a"}, ["tissue"])
    >>> out["accuracy"], out["open_token_f1"]["value"]
    (0.0, 0.6666666666666666)
    """
    answer, kind = first(results), question_kind(doc)
    correct = float(scoring.answers_match(answer, doc["answer"]))
    f1 = scoring.token_f1(answer, doc["answer"]) if kind == OPEN else correct
    return {"accuracy": correct, "yes_no_accuracy": scoring.typed(kind, correct),
            "open_exact_match": scoring.typed(kind, correct), "open_token_f1": scoring.typed(kind, f1),
            "image_hash": doc["image_hash"]}


yes_no_accuracy = scoring.type_mean(YES_NO)
open_mean = scoring.type_mean(OPEN)
