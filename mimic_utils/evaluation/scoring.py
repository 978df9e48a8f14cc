"""Scorers: the official MIMIC metrics and multiple-choice letter extraction for the public benchmarks.

Every function here is pure and total on strings: whatever a model writes, a scorer returns a value and
never raises (the property tests in ``tests/unit/test_scoring.py`` check this); only programming errors (an
unknown task family, malformed choice letters) raise. Counting, Common/Odd-One and Listing follow the
official lmms-eval fork exactly, including its leading-space and strip-order quirks, with one deliberate
deviation: Listing items are stripped of whitespace and a trailing period (``official_quirks=True`` gives
the official numbers). Multiple-choice extraction (:func:`extract_choice`) is our own and never guesses.
The rules, the deviation and why are in docs/design.md (*Scoring*).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from word2number import w2n

FAMILIES = ("counting", "listing", "common", "oddone")

# The official counting parse strips these one at a time, in this order.
_OFFICIAL_STRIP_CHARS = (",", ".", "!", "?", ";", ":", "'")
_LISTING_SEPARATOR = ", "


def _text(value: Any) -> str:
    """A model output as text: None (no generation) is the empty answer, anything else its ``str``."""
    return "" if value is None else str(value)


# ---------------------------------------------------------------------------------------------------------
# Counting
# ---------------------------------------------------------------------------------------------------------


def _official_count_string(prediction: str) -> str | None:
    """The string the official counting parse produces for ``prediction``, or None for 'wrong answer'.

    Emulates the whole official path: wrapper ``.strip()``, filter's leading space (so punctuation is only
    ever removed on the right), per-character strip order, then ``int`` / word2number / first ``\\d+``.
    """
    text = prediction.strip()
    for char in _OFFICIAL_STRIP_CHARS:
        text = text.rstrip(char)
    try:
        return str(int(text))
    except ValueError:  # also raised for > 4300-digit strings
        pass
    try:
        # word2number raises ValueError for "no number words" but IndexError for "thousand five" and
        # similar malformed phrases; the official code catches everything, so do we.
        return str(w2n.word_to_num(text))
    except Exception:  # noqa: BLE001 - third-party parser, any failure means "no number words"
        pass
    match = re.search(r"\d+", text)
    return match.group() if match else None


def parse_count(prediction: str) -> int | None:
    """Parse a counting answer the official way; None when it cannot match any integer ground truth.

    Examples: "3." -> 3, "Three" -> 3, "There are three dogs." -> 3, "The answer is 4" -> 4,
    "3 dogs and 2 cats" -> 3 (first digits), "three dogs and two cats" -> 5 (word2number adds them up),
    "There are 3 dogs, one of them brown" -> 1 (number words win over digits), "none" -> None.
    """
    official = _official_count_string(_text(prediction))
    # Only a canonical integer string can equal str(gt) for an integer gt: "3.5", "3.0", "03", "٣" cannot.
    if official is None or not re.fullmatch(r"-?(0|[1-9][0-9]*)", official):
        return None
    try:
        return int(official)
    except ValueError:  # longer than Python's int-string limit: never a count
        return None


def score_counting(prediction: str, gt: Any) -> float:
    """1.0 when the parsed count equals ``str(gt).lower().strip()`` exactly, else 0.0 (official rule)."""
    parsed = parse_count(prediction)
    return float(parsed is not None and str(parsed) == str(gt).lower().strip())


# ---------------------------------------------------------------------------------------------------------
# Common and Odd-One
# ---------------------------------------------------------------------------------------------------------


def score_contains(prediction: str, gt: Any) -> float:
    """1.0 when ``gt.lower().strip()`` occurs anywhere in the lower-cased prediction (official rule).

    A plain substring test, as officially: "cat" is found in "caterpillar" and in "cat, dog, bus".
    """
    return float(str(gt).lower().strip() in _text(prediction).lower())


# ---------------------------------------------------------------------------------------------------------
# Listing
# ---------------------------------------------------------------------------------------------------------


def _listing_items(text: str) -> list[str]:
    """Split a list answer on ", ", lower-case, strip whitespace and a trailing period, drop empties."""
    items = (item.strip().lower().rstrip(".").strip() for item in text.split(_LISTING_SEPARATOR))
    return [item for item in items if item]


def listing_counts(prediction: str, gt: Any, *, official_quirks: bool = False) -> tuple[int, int, int]:
    """``(true_positive, n_pred, n_gt)`` for one Listing answer.

    A gt item is a true positive when some predicted item equals it. Predicted duplicates count in
    ``n_pred`` (a model that repeats itself loses precision), gt duplicates count once.
    ``official_quirks=True`` reproduces the official numbers exactly (see the module docstring): the
    leading space on the first predicted item, no whitespace or period stripping, empties and gt duplicates
    counted.
    """
    prediction = _text(prediction)
    gt = str(gt)
    if official_quirks:
        predicted = (" " + prediction.strip()).lower().split(_LISTING_SEPARATOR)
        wanted = gt.lower().split(_LISTING_SEPARATOR)
    else:
        predicted = _listing_items(prediction)
        wanted = list(dict.fromkeys(_listing_items(gt)))
    predicted_set = set(predicted)
    true_positive = sum(1 for item in wanted if item in predicted_set)
    return true_positive, len(predicted), len(wanted)


def _prf(true_positive: int, n_pred: int, n_gt: int) -> dict[str, float]:
    """Precision, recall and F1 from summed counts; 0.0 where a denominator is zero."""
    precision = true_positive / n_pred if n_pred else 0.0
    recall = true_positive / n_gt if n_gt else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def listing_prf(counts: Iterable[Sequence[int]]) -> dict[str, float]:
    """Micro precision, recall and F1 over a set of ``(true_positive, n_pred, n_gt)`` triples (official).

    Micro, not a mean of per-sample F1: long lists weigh more, as in the paper. F1 is the headline.
    """
    total_tp = total_pred = total_gt = 0
    for true_positive, n_pred, n_gt in counts:
        total_tp += true_positive
        total_pred += n_pred
        total_gt += n_gt
    return _prf(total_tp, total_pred, total_gt)


# ---------------------------------------------------------------------------------------------------------
# One sample, and a set of them
# ---------------------------------------------------------------------------------------------------------


def score_sample(task_family: str, prediction: str, gt: Any) -> dict[str, Any]:
    """Score one MIMIC answer: ``{"parsed", "score"}``, plus the three counts for Listing.

    ``parsed`` is what was read from the prediction (the count, the list of items, or the stripped text);
    ``score`` is 1.0/0.0, or for Listing the sample's own F1 (sets are aggregated micro, see ``aggregate``).
    One line of a predictions JSONL holds this dict next to the raw output.
    """
    prediction = _text(prediction)
    if task_family == "counting":
        parsed = parse_count(prediction)
        return {"parsed": parsed, "score": score_counting(prediction, gt)}
    if task_family == "listing":
        true_positive, n_pred, n_gt = listing_counts(prediction, gt)
        return {
            "parsed": _listing_items(prediction),
            "score": _prf(true_positive, n_pred, n_gt)["f1"],
            "true_positive": true_positive,
            "n_pred": n_pred,
            "n_gt": n_gt,
        }
    if task_family in ("common", "oddone"):
        return {"parsed": prediction.strip(), "score": score_contains(prediction, gt)}
    raise ValueError(f"unknown task family {task_family!r}; expected one of {FAMILIES}")


def _summarise(family: str, rows: list[Mapping[str, Any]]) -> dict[str, Any]:
    """``n`` and the family's metric over ``rows``; ``score`` is the headline (accuracy, or Listing F1)."""
    if family == "listing":
        metrics = listing_prf((row["true_positive"], row["n_pred"], row["n_gt"]) for row in rows)
        return {"n": len(rows), **metrics, "score": metrics["f1"]}
    accuracy = sum(float(row["score"]) for row in rows) / len(rows)
    return {"n": len(rows), "accuracy": accuracy, "score": accuracy}


def _group_order(value: Any) -> tuple[int, Any]:
    """Numbers in numeric order, then everything else by its text, so knob tables read naturally."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, value)
    return (1, str(value))


def aggregate(rows: Iterable[Mapping[str, Any]], by: Sequence[str] = ("task",)) -> dict[str, Any]:
    """Per family: the overall metric with ``n``, and the same broken down by each key in ``by``.

    Rows are dicts with ``family``, ``score``, the keys named in ``by`` (``task`` by default) and, for
    Listing, ``true_positive``/``n_pred``/``n_gt`` (the output of ``score_sample`` plus the record's fields).
    Listing is micro P/R/F1, the others mean accuracy. Result, ready for ``metrics.json``::

        {"counting": {"n": 300, "accuracy": 0.41, "score": 0.41,
                      "by": {"task": {"spread_1": {"n": 100, "accuracy": 0.6, "score": 0.6}, ...}}},
         "listing": {"n": 200, "precision": ..., "recall": ..., "f1": ..., "score": ..., "by": {...}}}

    Group keys are strings (JSON object keys); a row missing a ``by`` key is grouped under "None".
    """
    by_family: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_family.setdefault(row["family"], []).append(row)
    result: dict[str, Any] = {}
    for family, family_rows in by_family.items():
        summary = _summarise(family, family_rows)
        breakdown: dict[str, dict[str, Any]] = {}
        for key in by:
            groups: dict[Any, list[Mapping[str, Any]]] = {}
            for row in family_rows:
                groups.setdefault(row.get(key), []).append(row)
            breakdown[key] = {
                str(value): _summarise(family, groups[value]) for value in sorted(groups, key=_group_order)
            }
        summary["by"] = breakdown
        result[family] = summary
    return result


# ---------------------------------------------------------------------------------------------------------
# Multiple choice (public benchmarks)
# ---------------------------------------------------------------------------------------------------------

# "answer is B", "Answer: (B)", "final answer: **B**", "correct option is B", "choice [C]".
_ANSWER_PHRASE = re.compile(
    r"\b(?:answer|option|choice)\b(?:\s+is\b)?[\s*:=\-]*(?:(?:option|choice)\s+)?"
    r"(?P<open>[(\[])?\s*(?P<letter>[A-Za-z])\s*(?P<close>[)\]])?(?![A-Za-z0-9'’])",
    re.IGNORECASE,
)
# "(B)" / "[B]" anywhere, any case.
_BRACKETED = re.compile(r"[(\[]\s*([A-Za-z])\s*[)\]]")
# A bare capital letter standing alone: not inside a word, not a contraction ("I'm").
_BARE_CAPITAL = re.compile(r"(?<![A-Za-z0-9'’])([A-Z])(?![A-Za-z0-9'’])")
# A lower-case letter as a marker at the very start: "b", "b.", "b)", "b: dog".
_LEADING_LOWER = re.compile(r"^([a-z])(?:[.):](?:\s|$)|$)")


def _normalise_letters(letters: Sequence[str]) -> list[str]:
    """Valid letters as single upper-case characters ("(a)" -> "A"); a malformed letter is a caller bug."""
    normalised = []
    for letter in letters:
        clean = str(letter).strip().strip("()[]").strip().upper()
        if len(clean) != 1 or not clean.isalpha():
            raise ValueError(f"choice letters must be single letters, got {letter!r}")
        normalised.append(clean)
    return normalised


# Words after which a capital "A" or "I" is still a choice letter: "A is correct", "either A or B".
_LETTER_FOLLOWERS = frozenset({"is", "or", "and", "was", "seems", "looks", "appears", "matches"})


def _is_article_or_pronoun(text: str, start: int, letter: str) -> bool:
    """True when a capital A or I at ``start`` is the English word, not a choice letter.

    "I think ..." is the pronoun wherever it stands; "A dog ..." is the article only at the start of a
    sentence (mid-sentence, the article is lower-case, so "image A shows" names a letter).
    """
    if letter not in ("A", "I"):
        return False
    following = re.match(r"\s+([a-z][a-z'’]*)", text[start + 1 :])
    if following is None or following.group(1) in _LETTER_FOLLOWERS:
        return False
    return letter == "I" or re.search(r"(?:^|[.!?:]\s+|\n\s*)$", text[:start]) is not None


def _from_answer_phrase(text: str, valid: set[str]) -> str | None:
    """The letter of the last explicit answer phrase naming a valid letter.

    A lower-case letter counts only when bracketed or followed by punctuation or the end, so that
    "the answer is a dog" is not read as A.
    """
    found = None
    for match in _ANSWER_PHRASE.finditer(text):
        letter = match.group("letter")
        if letter.islower():
            bracketed = match.group("open") and match.group("close")
            if not bracketed and not re.match(r"\s*(?:$|[.,;:!?])", text[match.end() :]):
                continue
        if letter.upper() in valid:
            found = letter.upper()
    return found


def _from_markers(text: str, valid: set[str]) -> str | None:
    """The valid letter named by standalone markers, if they all agree; None if none or conflicting."""
    candidates = {m.group(1).upper() for m in _BRACKETED.finditer(text)}
    for match in _BARE_CAPITAL.finditer(text):
        if not _is_article_or_pronoun(text, match.start(), match.group(1)):
            candidates.add(match.group(1))
    leading = _LEADING_LOWER.match(text)
    if leading:
        candidates.add(leading.group(1).upper())
    candidates &= valid
    return candidates.pop() if len(candidates) == 1 else None


def _from_option_text(text: str, letters: list[str], option_texts: Sequence[str]) -> str | None:
    """The letter of the one option whose text the response contains (whole words); else None.

    An option whose text is part of another matched option's text ("cat" inside "black cat") yields to it.
    """
    lowered = text.lower().strip().strip(".!?").strip()
    options = [(letter, str(option).lower().strip()) for letter, option in zip(letters, option_texts)]
    options = [(letter, option) for letter, option in options if option]
    exact = [letter for letter, option in options if option == lowered]
    if len(exact) == 1:
        return exact[0]
    found = [
        (letter, option)
        for letter, option in options
        if re.search(r"(?<!\w)" + re.escape(option) + r"(?!\w)", lowered)
    ]
    maximal = [
        letter
        for letter, option in found
        if not any(option != other and option in other for _, other in found)
    ]
    return maximal[0] if len(maximal) == 1 else None


def extract_choice(
    prediction: str, letters: Sequence[str], option_texts: Sequence[str] | None = None
) -> str | None:
    """The option letter a response chooses, restricted to ``letters``; None when it names none or several.

    ``letters`` are the valid choices ("A", "B", … or "(A)", …), returned upper-case. ``option_texts``, in
    the same order, let a response that only repeats an option's text ("a red car") map to its letter.
    See the module docstring for the order of evidence; every match is a standalone token, never a letter
    inside a word.
    """
    valid_letters = _normalise_letters(letters)
    valid = set(valid_letters)
    text = _text(prediction).strip()
    if not text or not valid:
        return None
    return (
        _from_answer_phrase(text, valid)
        or _from_markers(text, valid)
        or (_from_option_text(text, valid_letters, option_texts) if option_texts else None)
    )


def score_choice(
    prediction: str,
    answer_letter: str,
    letters: Sequence[str],
    option_texts: Sequence[str] | None = None,
) -> dict[str, Any]:
    """``{"parsed": letter or None, "score": 1.0/0.0}``; ``answer_letter`` may be "B" or BLINK's "(B)"."""
    parsed = extract_choice(prediction, letters, option_texts)
    (answer,) = _normalise_letters([answer_letter])
    return {"parsed": parsed, "score": float(parsed == answer)}
