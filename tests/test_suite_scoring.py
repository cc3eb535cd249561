"""The suite's one answer parser, against hand-computed cases (the hard ones included); its doctests run in
test_doctests.py."""

from __future__ import annotations

import math

import pytest

from forgetbench.suite import scoring
from forgetbench.suite.labels import SYNONYMS


@pytest.mark.parametrize(("prediction", "gold", "expected"), [
    ("Yes.", "yes", True),
    ("yes", "Yes", True),
    ("2", "two", True),
    ("two", "2", True),
    ("3.", "3", True),
    ("3.0", "three", True),
    ("a cat", "cat", True),
    ("The lung.", "lung", True),
    ("", "no", False),
    ("", "cat", False),
    ("No", "yes", False),
    ("no, there is none", "no", True),
    ("3 dogs", "3", False),
    ("twenty-one", "21", True),
    ("1,000", "1000", True),
    ("between 10m2 and 100m2", "between 10m2 and 100m2", True),
    ("rural", "urban", False),
    ("none", "0", True),
])
def test_answers_match(prediction, gold, expected):
    assert scoring.answers_match(prediction, gold) is expected


@pytest.mark.parametrize(("text", "expected"), [
    ("3", 3.0), ("3.", 3.0), ("three", 3.0), ("Three.", 3.0), ("3.5", 3.5), ("twenty one", 21.0),
    ("one hundred and five", 105.0), ("2 thousand", None), ("", None), ("cat", None), ("0", 0.0), ("zero", 0.0),
])
def test_to_number(text, expected):
    assert scoring.to_number(text) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("Yes.", "yes"), ("YES", "yes"), ("no", "no"), ("No, it is not.", "no"), ("I think yes", "yes"),
    ("yes and no", "yes"), ("maybe", None), ("", None), ("nothing", None), ("It is not there, no.", "no"),
    ("no yes", "no"), ("Absolutely yes!", "yes"),
])
def test_yes_no(text, expected):
    assert scoring.yes_no(text) == expected


@pytest.mark.parametrize(("prediction", "gold", "expected"), [
    ("lung", "lung", 1.0),
    ("the lung", "lung", 1.0),
    ("lung tissue", "tissue of lung", 0.8),  # P = 2/2, R = 2/3
    ("chronic inflammation", "inflammation", 2 / 3),  # P = 1/2, R = 1
    ("two cells", "2 cells", 1.0),  # number words become digits
    ("", "", 1.0),
    ("", "lung", 0.0),
    ("lung", "", 0.0),
    ("heart", "lung", 0.0),
    ("a b c d", "a b", 0.5),  # the article "a" drops: "b c d" vs "b", P = 1/3, R = 1
])
def test_token_f1(prediction, gold, expected):
    assert scoring.token_f1(prediction, gold) == pytest.approx(expected)


@pytest.mark.parametrize(("answer", "choices", "expected"), [
    ("B", ["x", "y", "z"], 1),
    ("b", ["x", "y", "z"], None),  # a lower-case letter alone is a word, not an option
    ("(C)", ["x", "y", "z"], 2),
    ("A.", ["x", "y"], 0),
    ("The answer is B.", ["x", "y"], 1),
    ("Option C", ["x", "y", "z"], 2),
    ("D", ["x", "y"], None),  # no such option
    ("square", ["circle", "square"], 1),
    ("It is a square.", ["circle", "square"], 1),
    ("circle or square", ["circle", "square"], None),
    ("", ["x"], None),
    ("4:00", ["3:00", "4:00"], 1),
])
def test_parse_option(answer, choices, expected):
    assert scoring.parse_option(answer, choices) == expected


CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.mark.parametrize(("answer", "gold", "expected"), [
    ("cat", "cat", "correct"),
    ("Cat.", "cat", "correct"),
    ("a cat", "cat", "correct"),
    ("cats", "cat", "correct"),
    ("The object in the image is a cat.", "cat", "correct"),  # a label inside a longer sentence
    ("car", "automobile", "correct"),  # documented synonym
    ("dog", "cat", "wrong_label"),
    ("It looks like a horse to me", "cat", "wrong_label"),
    ("cat, dog", "cat", "multiple_labels"),  # a list of labels
    ("cat or dog or bird", "cat", "multiple_labels"),
    ("tiger", "cat", "hallucination"),
    ("", "cat", "hallucination"),  # an empty answer is outside the label set
    ("catalogue", "cat", "hallucination"),  # whole words only
    ("A ship and a boat", "ship", "correct"),  # a synonym of the same label is one label
])
def test_judge_label_cifar10(answer, gold, expected):
    assert scoring.judge_label(answer, gold, CIFAR10, SYNONYMS["cifar10"]) == expected


@pytest.mark.parametrize(("answer", "gold", "expected"), [
    ("7", "7", "correct"), ("seven", "7", "correct"), ("The digit is 7.", "7", "correct"), ("1", "7", "wrong_label"),
    ("1, 7", "7", "multiple_labels"), ("digit", "7", "hallucination"), ("17", "7", "hallucination"),
])
def test_judge_label_digits(answer, gold, expected):
    assert scoring.judge_label(answer, gold, [str(d) for d in range(10)], SYNONYMS["mnist"]) == expected


def test_judge_label_prefers_the_longest_label():
    labels = ["maple tree", "oak tree", "pickup truck", "tractor"]
    assert scoring.judge_label("It is a maple tree.", "maple tree", labels) == "correct"
    assert scoring.judge_label("Maple trees", "maple tree", labels) == "correct"
    assert scoring.judge_label("pickup truck", "tractor", labels) == "wrong_label"


def test_per_type_aggregations_by_hand():
    records = [scoring.typed("presence", 1), scoring.typed("presence", 0), scoring.typed("presence", 1),
               scoring.typed("presence", 1), scoring.typed("count", 0), scoring.typed("count", 1)]
    assert scoring.type_mean("presence")(records) == 0.75
    assert scoring.type_mean("count")(records) == 0.5
    assert scoring.average_accuracy(records) == pytest.approx((0.75 + 0.5) / 2)  # AA: each type counts the same
    assert math.isnan(scoring.type_mean("area")(records))  # no such question among the evaluated ones
    assert math.isnan(scoring.average_accuracy([]))
