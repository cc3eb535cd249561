"""Per-unit scores of corpus-level metrics, so that they get paired bootstrap intervals too.

lmms-eval logs, for its captioning tasks, one dict per sample under the metric's name (``coco_CIDEr``,
``flickr_CIDEr``, ``nocaps_CIDEr``, ``textcaps_CIDEr``: ``{"answer": [references], "pred": caption,
"image_id": ...}``) and, for MME, ``{"question_id": image, "category": ..., "score": 0 or 1}`` under
``mme_perception_score`` or ``mme_cognition_score``. From these:

* **CIDEr** is the mean over images of per-image CIDEr-D (pycocoevalcap's ``CiderScorer``, which lmms-eval's
  aggregation calls), with document frequencies taken over the references of all images. Pre and post share the
  references, hence the document frequencies, so the per-image scores pair; images are the resampled units.
* **MME** (as lmms-eval's ``mme_aggregate_results``) is, per category, the mean over images of acc + acc+ (acc:
  percent of the image's two questions right; acc+: 100 if both are), summed over the categories. Image pairs are
  the units, resampled within their category (stratified).

Numbers only, no file I/O; pycocoevalcap is imported lazily (Java's PTB tokenizer, as lmms-eval uses, when
``java`` runs; else :func:`simple_tokenize`).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# What lmms-eval's PTB tokenization drops (pycocoevalcap.tokenizer.ptbtokenizer.PUNCTUATIONS).
PUNCTUATIONS = frozenset({"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-",
                          "--", "...", ";"})
MME_METRICS = frozenset({"mme_perception_score", "mme_cognition_score"})


@dataclass
class Units:
    """Paired per-unit scores of a corpus-level metric: ``pre[i]``/``post[i]`` are unit i's, on the metric's own
    scale; ``strata[i]`` names unit i's stratum (MME's category) or is None; ``pre_value``/``post_value`` are the
    metric recomputed from the units (to check against results.json)."""

    kind: str  # "image" or "image pair"
    pre: np.ndarray
    post: np.ndarray
    strata: list[str] | None
    pre_value: float
    post_value: float


def is_cider(metric: str) -> bool:
    """Whether ``metric`` is a CIDEr score of lmms-eval's captioning tasks.

    >>> is_cider("coco_CIDEr"), is_cider("coco_Bleu_4")
    (True, False)
    """
    return metric.endswith("_CIDEr")


def simple_tokenize(caption: str) -> str:
    """Lower-case PTB-like tokens without punctuation: what pycocoevalcap's Java tokenizer gives for ordinary
    captions (used when Java is not available).

    >>> simple_tokenize("A dog's ball, isn't it?")
    "a dog 's ball is n't it"
    """
    text = caption.replace("\n", " ").lower()
    text = re.sub(r"(\w)n't\b", r"\1 n't", text)
    text = re.sub(r"(\w)'(s|re|ve|ll|d|m)\b", r"\1 '\2", text)
    text = re.sub(r"(\.\.\.|--|[^\w\s'])", r" \1 ", text)
    return " ".join(t for t in text.split() if t not in PUNCTUATIONS)


def _ptb_jar() -> Path | None:
    """pycocoevalcap's Stanford CoreNLP jar, when it and ``java`` are there."""
    try:
        from pycocoevalcap.tokenizer import ptbtokenizer
    except ImportError:
        return None
    jar = Path(ptbtokenizer.__file__).with_name(ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR)
    return jar if jar.is_file() and shutil.which("java") else None


def tokenize(captions: Mapping[object, list[str]]) -> dict[object, list[str]]:
    """Tokenized captions per key: Stanford's PTBTokenizer (``-preserveLines -lowerCase``, then the punctuation
    dropped), as pycocoevalcap runs it for lmms-eval, or :func:`simple_tokenize` where Java or the jar is missing.

    >>> tokenize({1: ["A Red Car."]})
    {1: ['a red car']}
    """
    jar = _ptb_jar()
    keys = [k for k, v in captions.items() for _ in v]
    lines = [c.replace("\n", " ") for v in captions.values() for c in v]
    if jar is None or not lines:
        tokens = [simple_tokenize(c) for c in lines]
    else:
        with tempfile.TemporaryDirectory() as folder:
            file = Path(folder) / "captions.txt"
            file.write_text("\n".join(lines), encoding="utf-8")
            done = subprocess.run(["java", "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer",
                                   "-preserveLines", "-lowerCase", str(file)], capture_output=True, check=True)
        out = done.stdout.decode().split("\n")
        tokens = [" ".join(w for w in line.rstrip().split(" ") if w not in PUNCTUATIONS) for line in out[:len(lines)]]
        if len(tokens) != len(lines):
            raise ValueError("the PTB tokenizer returned fewer lines than it was given")
    result: dict[object, list[str]] = {k: [] for k in captions}
    for key, text in zip(keys, tokens, strict=True):
        result[key].append(text)
    return result


def _cider_scores(hypotheses: Sequence[str], references: Sequence[list[str]]) -> np.ndarray:
    from pycocoevalcap.cider.cider_scorer import CiderScorer

    scorer = CiderScorer(n=4, sigma=6.0)
    for hypothesis, refs in zip(hypotheses, references, strict=True):
        scorer += (hypothesis, refs)
    return np.asarray(scorer.compute_score()[1], dtype=float)


def cider_units(pre: Sequence[object], post: Sequence[object]) -> Units | None:
    """Per-image CIDEr-D of the logged caption dicts of the same documents (in the same order), or None when the
    logs do not allow it (not caption dicts, one image twice, references that differ between the runs, or
    pycocoevalcap missing).

    >>> pre = [{"answer": ["a red car"], "pred": "a red car", "image_id": 1},
    ...        {"answer": ["a blue bus"], "pred": "a green tree", "image_id": 2}]
    >>> post = [{**pre[0], "pred": "a car"}, {**pre[1], "pred": "a blue bus"}]
    >>> units = cider_units(pre, post)
    >>> units.pre.round(6).tolist(), round(units.pre_value, 6)
    ([7.5, 0.0], 3.75)
    """
    def usable(record) -> bool:
        refs = record.get("answer") if isinstance(record, dict) else None
        return (isinstance(refs, list) and bool(refs) and all(isinstance(r, str) for r in refs)
                and isinstance(record.get("pred"), str) and isinstance(record.get("image_id"), (str, int)))

    if not pre or len(pre) != len(post) or not all(usable(r) for r in (*pre, *post)):
        return None
    if any(a["image_id"] != b["image_id"] or a["answer"] != b["answer"] for a, b in zip(pre, post, strict=True)):
        return None
    if len({str(r["image_id"]) for r in pre}) != len(pre):  # lmms-eval's own aggregation needs one caption per image
        return None
    captions = {}
    for i, (a, b) in enumerate(zip(pre, post, strict=True)):
        captions[("ref", i)], captions[("pre", i)], captions[("post", i)] = a["answer"], [a["pred"]], [b["pred"]]
    try:
        tokens = tokenize(captions)
        refs = [tokens[("ref", i)] for i in range(len(pre))]
        scores = [_cider_scores([tokens[(side, i)][0] for i in range(len(pre))], refs) for side in ("pre", "post")]
    except (ImportError, OSError, ValueError, subprocess.CalledProcessError):
        return None
    return Units("image", scores[0], scores[1], None, float(scores[0].mean()), float(scores[1].mean()))


def mme_pair_score(scores: Sequence[float]) -> float:
    """acc + acc+ of one MME image (its two yes/no questions), as ``mme_aggregate_results`` computes it.

    >>> mme_pair_score([1, 1]), mme_pair_score([1, 0]), mme_pair_score([0, 0])
    (200.0, 50.0, 0.0)
    """
    return sum(scores) / len(scores) * 100.0 + (sum(scores) == 2) * 100.0


def mme_units(pre: Sequence[object], post: Sequence[object]) -> Units | None:
    """Per-image MME scores (acc + acc+) of the logged dicts of the same documents, with their categories; the
    documents without this metric's dict (the other MME metric's) are skipped. None when the logs do not allow
    it (not MME dicts, an image without exactly two questions, images or categories that differ between runs).

    >>> q = lambda image, cat, s: {"question_id": image, "category": cat, "score": s}
    >>> pre = [q("a", "OCR", 1), q("a", "OCR", 1), q("b", "OCR", 1), q("b", "OCR", 0), q("c", "color", 0),
    ...        q("c", "color", 0)]
    >>> post = [q("a", "OCR", 1), q("a", "OCR", 0), q("b", "OCR", 1), q("b", "OCR", 1), q("c", "color", 1),
    ...         q("c", "color", 1)]
    >>> units = mme_units(pre, post)
    >>> units.pre.tolist(), units.strata, units.pre_value, units.post_value
    ([200.0, 50.0, 0.0], ['OCR', 'OCR', 'color'], 125.0, 325.0)
    """
    pairs: dict[tuple[str, str], list[list[float]]] = {}
    for a, b in zip(pre, post, strict=True):
        if a is None and b is None:
            continue
        if not all(isinstance(r, dict) and isinstance(r.get("score"), (int, float)) for r in (a, b)):
            return None
        key = (str(a.get("category")), str(a.get("question_id")))
        if (str(b.get("category")), str(b.get("question_id"))) != key:
            return None
        pairs.setdefault(key, [[], []])
        pairs[key][0].append(float(a["score"]))
        pairs[key][1].append(float(b["score"]))
    if not pairs or any(len(s[0]) != 2 for s in pairs.values()):  # MME only supports pairwise evaluation
        return None
    keys = list(pairs)
    strata = [category for category, _ in keys]
    scores = [np.array([mme_pair_score(pairs[k][side]) for k in keys]) for side in (0, 1)]
    values = [sum(float(s[[i for i, c in enumerate(strata) if c == cat]].mean()) for cat in dict.fromkeys(strata))
              for s in scores]
    return Units("image pair", scores[0], scores[1], strata, values[0], values[1])


def units_of(metric: str, pre: Sequence[object], post: Sequence[object]) -> Units | None:
    """The per-unit scores of ``metric`` (bare name) from the logged per-sample values, if it is a corpus-level
    metric this module knows (CIDEr, MME); else None."""
    if is_cider(metric):
        return cider_units(pre, post)
    if metric in MME_METRICS:
        return mme_units(pre, post)
    return None
