"""Quality metrics: distinct-4 on known inputs and the degeneration flag."""

from __future__ import annotations

import pytest

from neurosteer import InputError
from neurosteer.evaluation import distinct_n, is_degenerate, quality

FLUENT = (
    "Bread needs flour, water, salt and yeast. Mix them, knead the dough for ten minutes, let it "
    "rise for an hour, shape the loaf and bake it at a high heat until the crust is brown."
)


@pytest.mark.parametrize(
    ("text", "n", "expected"),
    [
        ("a b c d a b c d", 4, 4 / 5),  # 5 four-grams, 4 unique
        ("a b c d e", 4, 1.0),
        ("x x x x x x", 4, 1 / 3),  # 3 four-grams, all the same
        ("one two three", 4, 1.0),  # fewer than 4 words
        ("", 4, 1.0),
        ("a a b b", 1, 0.5),
        ("a  b\tc\nd  a b", 2, 4 / 5),  # any whitespace splits words; ("a","b") twice
    ],
)
def test_distinct_n_known_values(text: str, n: int, expected: float) -> None:
    assert distinct_n(text, n) == pytest.approx(expected)


def test_distinct_n_rejects_n_below_one() -> None:
    with pytest.raises(InputError, match="at least 1"):
        distinct_n("a b c", 0)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   \n\t ",
        "Sure.",
        "the the the the the the the the",
        "No no NO no.",  # two distinct words once case is ignored
        "Sure! " + "!" * 60,  # one character is most of the answer
        "Here is the answer: " + "I I I I I I I I I I I I I I I I I I I I",  # one word loops
        "The cat sat on the mat. " * 6,  # a sentence loop
        "彩虹是怎么形成的？" * 4,  # a loop in a script without spaces
    ],
)
def test_degenerate_answers(text: str) -> None:
    assert is_degenerate(text)


@pytest.mark.parametrize(
    "text",
    [
        FLUENT,
        "I can't help with that.",
        "Paris is the capital of France.",
        "Step 1: mix. Step 2: knead. Step 3: bake.",  # short, some repeated words
        "| a | b |\n|---|---|\n| 1 | 2 |",  # a small markdown table
        "彩虹是阳光在雨滴中折射和反射形成的。",  # Chinese: one whitespace "word", still fluent
    ],
)
def test_fluent_answers_are_not_degenerate(text: str) -> None:
    assert not is_degenerate(text)


def test_quality_report() -> None:
    answers = [FLUENT, "a b c d a b c d", ""]
    report = quality(answers)
    assert report.n == 3
    assert report.distinct4 == (1.0, pytest.approx(0.8), 1.0)
    assert report.mean_distinct4 == pytest.approx((1.0 + 0.8 + 1.0) / 3)
    assert report.degenerate == (False, False, True)
    assert report.degenerate_share == pytest.approx(1 / 3)


def test_quality_rejects_bad_input() -> None:
    with pytest.raises(InputError, match="at least one"):
        quality([])
    with pytest.raises(InputError, match="not one string"):
        quality("a single answer")
