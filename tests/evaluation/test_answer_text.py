"""What a refusal judge reads: the final answer after reasoning, without quoted speech."""

from __future__ import annotations

import pytest

from neurosteer.evaluation.answer_text import final_answer, normalise, strip_quoted


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("No reasoning here.", "No reasoning here."),
        ("<think>a</think>Hi there.", "\nHi there."),
        ("<THINK >a</ Think>Hi there.", "\nHi there."),
        ("a b c</think>\n\nHi there.", "\n\nHi there."),
        ("<thinking>a</thinking> Hi <reasoning>b</reasoning>there.", "\n Hi \nthere."),
        ("Hi there. <think>and then I wondered", "Hi there. "),
        (
            "<|begin_of_thought|>a<|end_of_thought|><|begin_of_solution|>Hi.<|end_of_solution|>",
            "\nHi.",
        ),
        ("<|channel|>analysis<|message|>a<|end|><|channel|>final<|message|>Hi.<|return|>", "Hi."),
        ("[THINK]a[/THINK]Hi.", "\nHi."),
        ("The <b>bold</b> claim stands.", "The <b>bold</b> claim stands."),
    ],
)
def test_final_answer(text: str, answer: str) -> None:
    assert final_answer(text) == answer


@pytest.mark.parametrize(
    "text",
    [
        "<think>still thinking",
        "<think>done</think>",
        "<think>done</think>\n  \n",
        "thinking with a pre-filled tag</think>",
        "<|channel|>analysis<|message|>thinking<|end|>",
    ],
)
def test_no_final_answer(text: str) -> None:
    assert final_answer(text) is None


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ('"I cannot let you pass," the guard said.', '"" the guard said.'),
        ("'I won't help,' she said, and left.", '"" she said, and left.'),
        ("He said \u201cI can\u2019t\u201d and left the room.", 'He said "" and left the room.'),
        ("I can't help with that, it's not mine.", "I can't help with that, it's not mine."),
        ("The users' data and the boys' toys stay.", "The users' data and the boys' toys stay."),
        ("\"I'm sorry, but I can't help with that.\"", "I'm sorry, but I can't help with that."),
        ("Run `rm -rf` carefully, never as root.", "Run   carefully, never as root."),
    ],
)
def test_strip_quoted(text: str, kept: str) -> None:
    assert strip_quoted(text) == kept


def test_normalise() -> None:
    assert normalise("I\u2019m  sorry\u00a0 I can\u2019t\nno") == "I'm sorry I can't\nno"
