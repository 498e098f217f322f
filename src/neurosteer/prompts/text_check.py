"""Text a tokenizer can encode: the check every user string passes before it is tokenized.

A Python string can hold what no tokenizer encodes: a lone surrogate (U+D800..U+DFFF), from a
JSON escape such as "\\ud83d" without its partner, or from bytes that were not UTF-8 (command-
line arguments and terminal input are decoded with `surrogateescape`, so a pasted Latin-1 byte
arrives as U+DCxx). The Rust tokenizers then fail with a bare `TypeError` that names nothing.
`check_text` turns that into an `InputError` that names the place (FILE:LINE, the prompt, the
option) and says what to do.
"""

from __future__ import annotations

from collections.abc import Sequence

from neurosteer.errors import InputError

__all__ = ["check_prompts", "check_text", "first_unencodable"]


def first_unencodable(text: str) -> int | None:
    """Index of the first character of `text` that UTF-8 cannot encode (a lone surrogate),
    None when the whole text encodes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        return int(err.start)
    return None


def check_text(text: str, where: str) -> None:
    """Raise `InputError` if `text` holds a character no tokenizer can encode.

    Args:
        text: the string.
        where: how the message names it, e.g. "prompt data.jsonl:3" or "--system".

    Raises:
        InputError: one line naming `where`, the character (escaped) and its position.
    """
    if not isinstance(text, str):
        return
    i = first_unencodable(text)
    if i is None:
        return
    raise InputError(
        f"{where} is not valid text: character {i + 1} is {text[i]!a}, a lone surrogate "
        "(a broken \\u escape, or bytes that are not UTF-8, e.g. Latin-1); fix or remove it"
    )


def check_prompts(prompts: Sequence[str], what: str = "prompt") -> None:
    """`check_text` for each prompt, naming it as the context check does (FILE:LINE when it
    was read from a file, else its number and first words, escaped)."""
    from neurosteer.prompts.context import describe_prompt

    for i, prompt in enumerate(prompts):
        if first_unencodable(str(prompt)) is not None:
            check_text(str(prompt), describe_prompt(prompts, i, what))
