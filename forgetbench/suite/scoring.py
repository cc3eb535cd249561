"""The one answer parser of the task suite: normalisation, numbers, yes/no, option letters, token F1, the EMT judge,
and the aggregations that turn per-question records into per-type accuracies.

Every task module scores through these functions; none keeps a private copy.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Callable, Iterable, Mapping, Sequence

ARTICLES = frozenset({"a", "an", "the"})
_PUNCTUATION = re.compile(f"[{re.escape(string.punctuation)}]")

_UNITS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
    "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16,
    "seventeen": 17, "eighteen": 18, "nineteen": 19, "none": 0,
}
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90}
_SCALES = {"hundred": 100, "thousand": 1000, "million": 1_000_000}
NUMBER_WORDS = {word: value for word, value in (_UNITS | _TENS).items() if word != "none"}

# Irregular plurals that the suffix rules of `singular` cannot undo.
_IRREGULAR = {"mice": "mouse", "men": "man", "women": "woman", "geese": "goose", "children": "child",
              "people": "person", "teeth": "tooth", "feet": "foot", "knives": "knife", "wolves": "wolf",
              "leaves": "leaf", "shelves": "shelf", "cacti": "cactus", "fungi": "fungus", "oxen": "ox"}


def normalize(text: str) -> str:
    """Lower-case, punctuation to spaces (a decimal point inside a number stays), articles dropped, spaces squeezed.

    >>> normalize("  The Cat. ")
    'cat'
    >>> normalize("3.5 km")
    '3.5 km'
    >>> normalize("3.")
    '3'
    >>> normalize("Yes, it is!")
    'yes it is'
    """
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", str(text).lower())  # 1,000 is a thousand
    text = re.sub(r"(?<=\d)\.(?=\d)", "\0", text)  # protect the point of 3.5 from the punctuation rule
    text = _PUNCTUATION.sub(" ", text).replace("\0", ".")
    return " ".join(word for word in text.split() if word not in ARTICLES)


def first_word(text: str) -> str:
    """The first word of the normalised answer, or ``""``: a tiny model's answer is one word.

    >>> first_word(" Red."), first_word("3 dots"), first_word("")
    ('red', '3', '')
    """
    words = normalize(text).split()
    return words[0] if words else ""


def singular(word: str) -> str:
    """A word without its plural ending, by suffix rules; both sides of a comparison go through it.

    >>> [singular(w) for w in ["cats", "buses", "bus", "glass", "butterflies", "mice", "trucks", "ss"]]
    ['cat', 'bus', 'bus', 'glass', 'butterfly', 'mouse', 'truck', 'ss']
    """
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith(("ses", "xes", "ches", "shes", "zes")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def words_to_number(words: Sequence[str]) -> float | None:
    """The number spelled by ``words`` ("twenty", "one"), or None when they are not a number.

    >>> words_to_number(["twenty", "one"]), words_to_number(["three", "hundred"]), words_to_number(["cat"])
    (21.0, 300.0, None)
    """
    total, current, seen = 0, 0, False
    for word in words:
        if word in _UNITS or word in _TENS:
            current += _UNITS.get(word, _TENS.get(word, 0))
        elif word in _SCALES:
            scale = _SCALES[word]
            if scale == 100:
                current = max(current, 1) * 100
            else:
                total, current = total + max(current, 1) * scale, 0
        elif word != "and":
            return None
        seen = True
    return float(total + current) if seen else None


def to_number(text: str) -> float | None:
    """The number an answer states, if the whole (normalised) answer is one: "3", "3.", "three", "3.0", "1,000".

    >>> [to_number(t) for t in ["3", "3.", "Three", "3.0", "1,000", "twenty-one", "3 cats", "", "no"]]
    [3.0, 3.0, 3.0, 3.0, 1000.0, 21.0, None, None, None]
    """
    norm = normalize(text).replace("-", " ")
    if not norm:
        return None
    try:
        return float(norm.replace(",", ""))
    except ValueError:
        return words_to_number(norm.split())


def yes_no(text: str) -> str | None:
    """"yes" or "no" when the answer says one of them: first word, or the only yes/no word in it.

    >>> [yes_no(t) for t in ["Yes.", "no, there is none", "I think yes", "yes and no", "maybe", ""]]
    ['yes', 'no', 'yes', 'yes', None, None]
    """
    words = normalize(text).split()
    if words and words[0] in ("yes", "no"):
        return words[0]
    found = {word for word in words if word in ("yes", "no")}
    return found.pop() if len(found) == 1 else None


def answers_match(prediction: str, gold: str) -> bool:
    """Short-answer match: equal after normalisation, equal as numbers, or the same yes/no.

    >>> answers_match("Yes.", "yes"), answers_match("2", "two"), answers_match("a cat", "cat")
    (True, True, True)
    >>> answers_match("3 dogs", "3"), answers_match("", "no"), answers_match("No", "yes")
    (False, False, False)
    """
    if normalize(prediction) == normalize(gold):
        return True
    gold_number = to_number(gold)
    if gold_number is not None:
        predicted = to_number(prediction)
        return predicted is not None and math.isclose(predicted, gold_number)
    if normalize(gold) in ("yes", "no"):
        return yes_no(prediction) == normalize(gold)
    return False


def token_f1(prediction: str, gold: str) -> float:
    """SQuAD-style token F1 after normalisation (number words become digits first).

    >>> token_f1("lung tissue", "tissue of lung"), token_f1("", ""), token_f1("", "x")
    (0.8, 1.0, 0.0)
    """
    pred, ref = _number_tokens(prediction), _number_tokens(gold)
    if not pred or not ref:
        return float(pred == ref)
    common = sum(min(pred.count(word), ref.count(word)) for word in set(pred) & set(ref))
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def _number_tokens(text: str) -> list[str]:
    return [str(NUMBER_WORDS[w]) if w in NUMBER_WORDS else w for w in normalize(text).split()]


OPTION_LETTERS = "ABCDEFGHIJ"


def option_letters(n: int) -> str:
    return OPTION_LETTERS[:n]


def parse_option(answer: str, choices: Sequence[str]) -> int | None:
    """Index of the option an answer picks: a letter ("B", "(B)", "B.", "Option B", "The answer is B.") or the
    text of exactly one choice. None when it picks nothing or several.

    >>> parse_option("B", ["x", "y"]), parse_option("(A) cat", ["cat", "dog"]), parse_option("dog", ["cat", "dog"])
    (1, 0, 1)
    >>> parse_option("The answer is B.", ["x", "y"]), parse_option("cat or dog", ["cat", "dog"])
    (1, None)
    """
    letters = option_letters(len(choices))
    raw = str(answer).strip()
    match = re.match(r"^\(?([A-J])\)?(?:[.:)\s]|$)", raw) or re.search(
        r"\b(?:answer|option|choice)(?: is)?:?\s*\(?([A-J])\)?(?![\w])", raw, re.IGNORECASE)
    if match and match.group(1).upper() in letters:
        return letters.index(match.group(1).upper())
    norm = normalize(raw)
    exact = [i for i, choice in enumerate(choices) if normalize(choice) == norm]
    if len(exact) == 1:
        return exact[0]
    inside = [i for i, choice in enumerate(choices) if normalize(choice) and _contains(norm, normalize(choice))]
    return inside[0] if len(inside) == 1 else None


def _contains(text: str, phrase: str) -> bool:
    return re.search(rf"(?<!\S){re.escape(phrase)}(?!\S)", text) is not None


# -- EMT judge ------------------------------------------------------------------------------------------------------

CORRECT, WRONG_LABEL, MULTIPLE_LABELS, HALLUCINATION = "correct", "wrong_label", "multiple_labels", "hallucination"
JUDGEMENTS = (CORRECT, WRONG_LABEL, MULTIPLE_LABELS, HALLUCINATION)


def label_tokens(text: str) -> tuple[str, ...]:
    """Tokens compared by the judge: normalised, hyphens and underscores split, plural endings dropped."""
    return tuple(singular(word) for word in normalize(str(text).replace("_", " ").replace("-", " ")).split())


Synonyms = Mapping[str, Sequence[str]]


def labels_mentioned(answer: str, labels: Sequence[str], synonyms: Synonyms | None = None) -> list[str]:
    """The labels an answer names, longest phrase first, each span of the answer used once ("maple tree" is one
    label, not also "tree"). A synonym counts for its label.

    >>> labels_mentioned("It is a pickup truck.", ["truck", "pickup truck"])
    ['pickup truck']
    >>> labels_mentioned("cats and dogs", ["dog", "cat", "bird"])
    ['cat', 'dog']
    >>> labels_mentioned("a car", ["automobile", "truck"], {"automobile": ["car"]})
    ['automobile']
    """
    synonyms = synonyms or {}
    phrases = [(label_tokens(name), label) for label in labels for name in (label, *synonyms.get(label, ()))]
    phrases = sorted({p for p in phrases if p[0]}, key=lambda p: -len(p[0]))
    words = list(label_tokens(answer))
    used = [False] * len(words)
    found: dict[int, str] = {}
    for tokens, label in phrases:
        n = len(tokens)
        for start in range(len(words) - n + 1):
            if tuple(words[start : start + n]) == tokens and not any(used[start : start + n]):
                used[start : start + n] = [True] * n
                found.setdefault(start, label)
    ordered = [found[start] for start in sorted(found)]
    return list(dict.fromkeys(ordered))


def judge_label(answer: str, gold: str, labels: Sequence[str], synonyms: Synonyms | None = None) -> str:
    """EMT's sorting of a classification answer: ``correct``, ``wrong_label`` (one label of the set, not the gold
    one), ``multiple_labels`` (several labels of the set) or ``hallucination`` (no label of the set; an empty answer
    too). Matching ignores case, articles, plural endings and punctuation and knows the task's synonyms.

    >>> labels = ["airplane", "automobile", "cat", "dog"]
    >>> [judge_label(a, "cat", labels) for a in ["Cats.", "dog", "cat, dog", "a tiger", ""]]
    ['correct', 'wrong_label', 'multiple_labels', 'hallucination', 'hallucination']
    >>> judge_label("This is a picture of a car.", "automobile", labels, {"automobile": ["car"]})
    'correct'
    """
    found = labels_mentioned(answer, labels, synonyms)
    if not found:
        return HALLUCINATION
    if len(found) > 1:
        return MULTIPLE_LABELS
    return CORRECT if found[0] == gold else WRONG_LABEL


# -- aggregation by question type ------------------------------------------------------------------------------------
# process_results returns {"type": T, "value": score} under every per-type metric; these turn the list lmms-eval
# collects into per-type means. A type with no question among the evaluated documents (e.g. under --limit) gives NaN.


def typed(kind: str, value: float) -> dict:
    return {"type": kind, "value": float(value)}


def type_mean(kind: str) -> Callable[[Iterable[dict]], float]:
    """Aggregation: mean of ``value`` over the records of one type.

    >>> type_mean("count")([typed("count", 1), typed("count", 0), typed("presence", 1)])
    0.5
    """

    def aggregate(records: Iterable[dict]) -> float:
        values = [r["value"] for r in records if r["type"] == kind]
        return sum(values) / len(values) if values else float("nan")

    aggregate.__name__ = f"mean_{kind}"
    return aggregate


def average_accuracy(records: Iterable[dict]) -> float:
    """AA: the mean of the per-type accuracies over the types present (each type counts the same).

    >>> average_accuracy([typed("a", 1), typed("a", 1), typed("a", 1), typed("b", 0)])
    0.5
    """
    by_type: dict[str, list[float]] = {}
    for record in records:
        by_type.setdefault(record["type"], []).append(record["value"])
    if not by_type:
        return float("nan")
    return sum(sum(v) / len(v) for v in by_type.values()) / len(by_type)
