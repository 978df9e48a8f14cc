"""Tests of ``mimic_utils.evaluation.scoring``: the official MIMIC rules on adversarial answers, and total scorers."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from word2number import w2n

from mimic_utils.evaluation.scoring import (
    FAMILIES,
    aggregate,
    extract_choice,
    listing_counts,
    listing_prf,
    parse_count,
    score_choice,
    score_contains,
    score_counting,
    score_sample,
)

# --------------------------------------------------------------------------------------------------------
# Counting
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prediction", "expected"),
    [
        ("3", 3),
        ("3.", 3),
        ("3!", 3),
        ("  7\n", 7),
        ("Three", 3),
        ("three.", 3),
        ("There are three dogs.", 3),  # word2number keeps the number words of a sentence
        ("The answer is 4", 4),  # no number words: first digits
        ("4 dogs", 4),
        ("3 dogs and 2 cats", 3),  # official: first \d+ wins
        ("three dogs and two cats", 5),  # official: word2number adds the number words up
        ("There are 3 dogs, one of them brown", 1),  # official: number words are tried before digits
        ("twenty-one", 21),
        ("zero", 0),
        ("none", None),
        ("No dogs", None),
        ("", None),
        ("   ", None),
        ("...", None),
        ("I cannot tell", None),
        ("three point five", None),  # 3.5 can never equal an integer gt
        ("three point zero", None),  # officially "3.0", which never equals "3"
        ("03 dogs", None),  # officially "03", which never equals "3"
        ("'three'", None),  # official: the leading quote is never stripped, so "'three" is no number word
        ("three.!", None),  # official strip order: "." is stripped before "!", leaving "three."
        ("three!.", 3),
        ("-2", -2),
    ],
)
def test_parse_count(prediction: str, expected: int | None) -> None:
    assert parse_count(prediction) == expected


@pytest.mark.parametrize(
    ("prediction", "expected"),
    [
        ("point", 0),  # word2number returns 0 for a lone "point", so officially this is the count 0
        ("There is no point", 0),
        ("and", None),  # ValueError: no number words
        ("thousand five", None),  # word2number raises IndexError here, not ValueError
        ("thousand five 6", 6),  # ... and the digits fallback still runs after it
        ("million and one", None),  # IndexError again
        ("point point", None),  # ValueError: redundant "point"
        ("thousand million", None),  # ValueError: malformed order
        ("one two three four five", 1),  # word2number's odd combination rule, kept as official
    ],
)
def test_parse_count_word2number_odd_inputs(prediction: str, expected: int | None) -> None:
    assert parse_count(prediction) == expected


@pytest.mark.parametrize(
    ("prediction", "gt", "score"),
    [
        ("3", 3, 1.0),
        ("3", "3", 1.0),
        ("3", " 3 ", 1.0),
        ("Three.", "3", 1.0),
        ("There are three dogs.", 3, 1.0),
        ("3 dogs and 2 cats", 5, 0.0),
        ("4", 3, 0.0),
        ("", 0, 0.0),
        ("none", 0, 0.0),
        ("zero", 0, 1.0),
        ("three point zero", 3, 0.0),
    ],
)
def test_score_counting(prediction: str, gt: object, score: float) -> None:
    assert score_counting(prediction, gt) == score


def _official_counting_string(raw: str) -> str:
    """An independent re-statement of the official pipeline, as the reference for the property test."""
    response = " " + raw.strip()  # model wrapper strips, filter prepends a space
    for char in [",", ".", "!", "?", ";", ":", "'"]:
        response = response.strip(char)
    try:
        return str(int(response))
    except Exception:  # noqa: BLE001
        pass
    try:
        return str(w2n.word_to_num(response))
    except Exception:  # noqa: BLE001
        pass
    digits = re.findall(r"\d+", response)
    return digits[0] if digits else "wrong answer"


_COUNT_WORDS = ["three", "two", "point", "and", "thousand", "dogs", "none", "3", "03", "12", "٣", "-", " "]
_COUNT_TEXT = st.one_of(
    st.text(max_size=30),
    st.lists(st.sampled_from(_COUNT_WORDS + list(",.!?;:'")), max_size=6).map("".join),
    st.lists(st.sampled_from(_COUNT_WORDS), max_size=5).map(" ".join),
)


@settings(max_examples=400, deadline=None)
@given(prediction=_COUNT_TEXT)
def test_counting_score_equals_official_for_integer_gt(prediction: str) -> None:
    official = _official_counting_string(prediction).lower().strip()
    for gt in range(-3, 201):
        assert score_counting(prediction, gt) == float(official == str(gt)), gt


# --------------------------------------------------------------------------------------------------------
# Common and Odd-One
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prediction", "gt", "score"),
    [
        ("dog", "dog", 1.0),
        ("The common object is a Dog.", "dog", 1.0),
        ("DOG", " Dog ", 1.0),
        ("hot dog", "dog", 1.0),  # substring, as officially
        ("caterpillar", "cat", 1.0),  # plain substring: no word boundary, as officially
        ("cat", "hot dog", 0.0),
        ("dogs", "dog", 1.0),
        ("do g", "dog", 0.0),
        ("", "dog", 0.0),
        ("teddy bear", "teddy bear", 1.0),
        ("teddy", "teddy bear", 0.0),
    ],
)
def test_score_contains(prediction: str, gt: str, score: float) -> None:
    assert score_contains(prediction, gt) == score


# --------------------------------------------------------------------------------------------------------
# Listing
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prediction", "gt", "counts"),
    [
        ("bus, car, truck", "bus, car, truck", (3, 3, 3)),
        ("truck, bus, car", "bus, car, truck", (3, 3, 3)),  # order does not matter
        ("Bus, CAR", "bus, car, truck", (2, 2, 3)),  # case does not matter
        ("bus, car, truck.", "bus, car, truck", (3, 3, 3)),  # trailing period stripped (deviation)
        ("car, car, car", "car, bus", (1, 3, 2)),  # predicted duplicates cost precision
        ("car", "car, car", (1, 1, 1)),  # gt duplicates count once (deviation)
        ("bus,car", "bus, car", (0, 1, 2)),  # split on ", " as officially
        ("bus, car, ", "bus, car", (2, 2, 2)),  # empty items dropped (deviation)
        ("", "bus, car", (0, 0, 2)),
        ("a bus and a car", "bus, car", (0, 1, 2)),  # items must equal, not contain
        ("teddy bear, cat", "teddy bear", (1, 2, 1)),
    ],
)
def test_listing_counts(prediction: str, gt: str, counts: tuple[int, int, int]) -> None:
    assert listing_counts(prediction, gt) == counts


@pytest.mark.parametrize(
    ("prediction", "gt", "counts"),
    [
        ("bus, car, truck", "bus, car, truck", (2, 3, 3)),  # the first item keeps the filter's leading space
        ("bus", "bus", (0, 1, 1)),
        ("car, bus, truck.", "bus, car, truck", (1, 3, 3)),  # " car" and "truck." miss
        ("", "bus", (0, 1, 1)),
        ("car, car", "car, car", (2, 2, 2)),
    ],
)
def test_listing_counts_official_quirks(prediction: str, gt: str, counts: tuple[int, int, int]) -> None:
    assert listing_counts(prediction, gt, official_quirks=True) == counts


def test_listing_prf_is_micro() -> None:
    metrics = listing_prf([(2, 2, 4), (0, 2, 1)])  # tp 2, pred 4, gt 5
    assert metrics["precision"] == pytest.approx(0.5)
    assert metrics["recall"] == pytest.approx(0.4)
    assert metrics["f1"] == pytest.approx(2 * 0.5 * 0.4 / 0.9)


def test_listing_prf_empty_is_zero() -> None:
    assert listing_prf([]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    assert listing_prf([(0, 0, 3)]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


# --------------------------------------------------------------------------------------------------------
# score_sample and aggregate
# --------------------------------------------------------------------------------------------------------


def test_score_sample_per_family() -> None:
    assert score_sample("counting", "Three.", 3) == {"parsed": 3, "score": 1.0}
    assert score_sample("common", " A dog ", "dog") == {"parsed": "A dog", "score": 1.0}
    assert score_sample("oddone", "cat", "dog") == {"parsed": "cat", "score": 0.0}
    listing = score_sample("listing", "Bus, car.", "bus, truck")
    assert listing == {"parsed": ["bus", "car"], "score": 0.5, "true_positive": 1, "n_pred": 2, "n_gt": 2}
    assert score_sample("counting", None, 0) == {"parsed": None, "score": 0.0}


def test_score_sample_rejects_unknown_family() -> None:
    with pytest.raises(ValueError, match="unknown task family"):
        score_sample("odd_one", "cat", "dog")


def test_aggregate_accuracy_and_micro_f1_per_task() -> None:
    rows = [
        {"family": "counting", "task": "spread_2", "n_images": 2, "score": 1.0},
        {"family": "counting", "task": "spread_2", "n_images": 10, "score": 0.0},
        {"family": "counting", "task": "spread_1", "n_images": 2, "score": 1.0},
        {"family": "listing", "task": "vehicle", **score_sample("listing", "bus, car", "bus, car, truck")},
        {"family": "listing", "task": "animal", **score_sample("listing", "dog, cat", "cat")},
    ]
    result = aggregate(rows, by=("task", "n_images"))
    counting = result["counting"]
    assert counting["n"] == 3 and counting["accuracy"] == pytest.approx(2 / 3) == counting["score"]
    assert list(counting["by"]["task"]) == ["spread_1", "spread_2"]
    assert counting["by"]["task"]["spread_2"] == {"n": 2, "accuracy": 0.5, "score": 0.5}
    assert list(counting["by"]["n_images"]) == ["2", "10"]  # numeric order, string keys
    listing = result["listing"]
    assert listing["n"] == 2
    assert listing["precision"] == pytest.approx(3 / 4)
    assert listing["recall"] == pytest.approx(3 / 4)
    assert listing["score"] == listing["f1"] == pytest.approx(3 / 4)
    assert listing["by"]["task"]["animal"]["precision"] == pytest.approx(0.5)
    no_knob = listing["by"]["n_images"]["None"]  # listing rows carry no n_images
    assert no_knob == {key: listing[key] for key in ("n", "precision", "recall", "f1", "score")}


def test_aggregate_empty() -> None:
    assert aggregate([]) == {}


# --------------------------------------------------------------------------------------------------------
# Multiple choice
# --------------------------------------------------------------------------------------------------------

ABCD = ["A", "B", "C", "D"]
OPTIONS = ["a red car", "a dog", "two cats", "a black dog"]


@pytest.mark.parametrize(
    ("prediction", "expected"),
    [
        ("The correct answer is (B)", "B"),  # the upstream bug read this as "T"
        ("The correct answer is (B).", "B"),
        ("The answer is B", "B"),
        ("Answer: C", "C"),
        ("**Final answer:** D", "D"),
        ("answer is b", "B"),
        ("the answer is (c)", "C"),
        ("Option C is correct", "C"),
        ("(A)", "A"),
        ("(A) a red car", "A"),
        ("A.", "A"),
        ("A. a red car", "A"),
        ("A) a red car", "A"),
        ("A", "A"),
        ("a", "A"),
        ("b.", "B"),
        ("b) a dog", "B"),
        ("D", "D"),
        (" C\n", "C"),
        ("I think it is C", "C"),  # "I" is the pronoun, not choice I
        ("Looking at the images, B.", "B"),
        ("B is the one.", "B"),
        ("The first image shows A and the answer is C", "C"),  # an explicit answer phrase wins
        ("The answer is A. B is wrong.", "A"),
        ("E", None),  # not a valid letter
        ("The answer is E", None),
        ("A. a red car\nB. a dog", None),  # echoing options: ambiguous
        ("Either A or B", None),
        ("", None),
        ("   ", None),
        ("I don't know", None),
        ("The", None),
        ("Based on the picture", None),
    ],
)
def test_extract_choice_letters(prediction: str, expected: str | None) -> None:
    assert extract_choice(prediction, ABCD) == expected


@pytest.mark.parametrize(
    ("prediction", "expected"),
    [
        ("two cats", "C"),
        ("Two cats.", "C"),
        ("The image shows two cats on a sofa", "C"),
        ("a black dog", "D"),  # "a dog" is not inside "a black dog"
        ("a dog", "B"),
        ("A dog", "B"),  # article, not the letter A
        ("The answer is a dog", "B"),  # lower-case "a" before a word is an article
        ("a red car or two cats", None),  # two options: ambiguous
        ("a cat", None),
        ("dog", None),
    ],
)
def test_extract_choice_option_text(prediction: str, expected: str | None) -> None:
    assert extract_choice(prediction, ABCD, OPTIONS) == expected


def test_extract_choice_nested_option_texts() -> None:
    options = ["cat", "black cat", "dog"]
    assert extract_choice("a black cat", ["A", "B", "C"], options) == "B"
    assert extract_choice("cat", ["A", "B", "C"], options) == "A"


def test_extract_choice_restricted_to_valid_letters() -> None:
    assert extract_choice("The answer is C", ["A", "B"]) is None
    assert extract_choice("C. I think B", ["A", "B"]) == "B"
    assert extract_choice("(B)", ["(A)", "(B)"]) == "B"  # BLINK-style letters
    assert extract_choice("I", list("ABCDEFGHI")) == "I"


def test_extract_choice_rejects_malformed_letters() -> None:
    with pytest.raises(ValueError):
        extract_choice("A", ["AB"])


def test_score_choice() -> None:
    assert score_choice("The correct answer is (B)", "(B)", ABCD) == {"parsed": "B", "score": 1.0}
    assert score_choice("a dog", "B", ABCD, OPTIONS) == {"parsed": "B", "score": 1.0}
    assert score_choice("", "A", ABCD) == {"parsed": None, "score": 0.0}


# --------------------------------------------------------------------------------------------------------
# No model output makes a scorer raise
# --------------------------------------------------------------------------------------------------------

_ANY_TEXT = st.one_of(
    st.text(max_size=60),
    st.lists(
        st.sampled_from(
            ["The", "answer", "is", "(B)", "A", "a", "I", "B.", "C)", "three", "point", "and", "thousand",
             "3", ",", ", ", ".", "dog", "cat", "**", ":", "\n", "٣", "²", "-"]
        ),
        max_size=12,
    ).map(" ".join),
)


@settings(max_examples=300, deadline=None)
@given(prediction=_ANY_TEXT, gt=st.one_of(st.text(max_size=20), st.integers(0, 30)))
def test_no_string_makes_score_sample_raise(prediction: str, gt: object) -> None:
    for family in FAMILIES:
        result = score_sample(family, prediction, gt)
        assert 0.0 <= result["score"] <= 1.0


@settings(max_examples=300, deadline=None)
@given(
    prediction=_ANY_TEXT,
    options=st.lists(st.text(max_size=12), min_size=2, max_size=5),
)
def test_no_string_makes_extract_choice_raise(prediction: str, options: list[str]) -> None:
    letters = "ABCDE"[: len(options)]
    parsed = extract_choice(prediction, letters, options)
    assert parsed is None or parsed in letters
    assert extract_choice(prediction, letters) in (None, *letters)
    assert score_choice(prediction, letters[0], letters, options)["score"] in (0.0, 1.0)
