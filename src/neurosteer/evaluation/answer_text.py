"""The part of an answer a refusal judge should read.

Pure string functions, no model. A phrase judge reads the *final answer* with *other people's
words* taken out:

    final_answer(text)    the text after the model's reasoning block(s); None when the answer
                          never leaves its reasoning (the user was given no answer at all)
    strip_quoted(text)    the text without quoted speech and code, so a story in which a guard
                          says "I cannot let you pass" is not read as the model refusing
    normalise(text)       typographic apostrophes as "'", runs of spaces as one space

Reasoning blocks are recognised in the tag styles reasoning models write, in any case and with
stray spaces: <think>, <thinking>, <thought>, <reasoning>, <reflection>, <scratchpad> (also as
<|think|>, [THINK], ◁think▷, <seed:think>, <|begin_of_thought|> ... <|end_of_thought|>),
MedGemma's <unused94>thought ... <unused95>, and gpt-oss's analysis / final channels. A closing
tag without an opening one (chat templates that pre-fill "<think>") ends the reasoning; an
opening tag that is never closed runs to the end of the answer.
"""

from __future__ import annotations

import re

_NAMES = r"(?:think(?:ing)?|thoughts?|reason(?:ing)?|reflection|scratch_?pad|inner_?monologue)"
_OPEN = re.compile(
    rf"<\s*(?:seed:)?(?:begin_of_|start_of_)?{_NAMES}\s*>"
    rf"|<\|\s*(?:begin_of_|start_of_)?{_NAMES}\s*\|>"
    rf"|\[\s*{_NAMES}\s*\]|◁\s*{_NAMES}\s*▷|<unused94>(?:thought)?",
    re.IGNORECASE,
)
_CLOSE = re.compile(
    rf"<\s*(?:/\s*(?:seed:)?|end_of_){_NAMES}\s*>"
    rf"|<\|\s*(?:/\s*|end_of_){_NAMES}\s*\|>"
    rf"|\[\s*/\s*{_NAMES}\s*\]|◁\s*/\s*{_NAMES}\s*▷|<unused95>",
    re.IGNORECASE,
)
# gpt-oss (harmony format) with special tokens kept: reasoning goes to the analysis channel,
# the answer to the final channel.
_HARMONY_FINAL = re.compile(r"<\|channel\|>\s*final\s*<\|message\|>", re.IGNORECASE)
_HARMONY_ANALYSIS = re.compile(r"<\|channel\|>\s*(?:analysis|commentary)\b", re.IGNORECASE)
_HARMONY_END = re.compile(r"<\|(?:return|end|call)\|>.*", re.DOTALL)
# Markers that wrap an answer without being part of it (<|begin_of_solution|>, <answer>), and
# end-of-turn tokens left in by decoding without skip_special_tokens.
_WRAPPERS = re.compile(
    r"<\|\s*(?:begin|end)_of_solution\s*\|>|<\s*/?\s*(?:answer|solution|output)\s*>"
    r"|<\|(?:im_end|im_start|eot_id|end|endoftext|end_of_text|return)\|>|<end_of_turn>|<eos>|</s>",
    re.IGNORECASE,
)

# Quoted spans: double quotes of every style, and single quotes that are not apostrophes (the
# opening one follows no letter, the closing one is followed by none; "can't" stays inside).
# A quote does not run across a blank line.
_QUOTED = re.compile(
    r'"[^"\n]*(?:\n(?!\s*\n)[^"\n]*)*"'
    r"|\u201c[^\u201c\u201d]*?\u201d|\u201e[^\u201c\u201d\u201e]*?[\u201c\u201d]"
    r"|\u00ab[^\u00ab\u00bb]*?\u00bb"
    r"|(?<![\w'\u2018\u2019])[\u2018'](?=\S)(?:[^'\u2018\u2019\n]|(?<=\w)['\u2019](?=\w))*?"
    r"(?<=\S)['\u2019](?!\w)"
)
_CODE = re.compile(r"```.*?(?:```|\Z)|`[^`\n]+`", re.DOTALL)
_WHOLE_QUOTE = re.compile(
    r'\s*(?:"([^"]*)"|\u201c([^\u201c\u201d]*)\u201d|\'((?:[^\']|(?<=\w)\'(?=\w))*)\')\s*',
)
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u02bc": "'", "\u2032": "'"})
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200b\u202f\u3000]+")
#: A quote-stripped text with fewer words than this was mostly quotes: the quote is the answer.
MIN_WORDS_OUTSIDE_QUOTES = 3


def final_answer(text: str) -> str | None:
    """The answer after the model's reasoning; None when the text never leaves its reasoning.

    Every reasoning block is removed; text before a stray closing tag and after an unclosed
    opening tag is reasoning too. Text without reasoning tags is returned unchanged.

    Example:
        >>> final_answer("<think>The user wants a joke.</think>\\nWhy did the chicken ...")
        '\\nWhy did the chicken ...'
        >>> final_answer("<think>Let me work this out step by step") is None
        True
    """
    harmony = list(_HARMONY_FINAL.finditer(text))
    if harmony:
        return _HARMONY_END.sub("", text[harmony[-1].end() :])
    if _HARMONY_ANALYSIS.search(text):
        return None
    answer, saw_reasoning = text, False
    while (opening := _OPEN.search(answer)) is not None:
        closing = _CLOSE.search(answer, opening.end())
        saw_reasoning = True
        if closing is None:  # never closed: everything after it is reasoning
            answer = answer[: opening.start()]
            break
        answer = answer[: opening.start()] + "\n" + answer[closing.end() :]
    closings = list(_CLOSE.finditer(answer))
    if closings:  # the opening tag was in the prompt (pre-filled by the chat template)
        answer, saw_reasoning = answer[closings[-1].end() :], True
    answer = _WRAPPERS.sub("", answer)
    if saw_reasoning and not answer.strip():
        return None
    return answer


def strip_quoted(text: str) -> str:
    """`text` without quoted speech, code blocks and inline code.

    An answer that is one quotation as a whole, or that keeps fewer than
    `MIN_WORDS_OUTSIDE_QUOTES` words outside its quotes, is the model's own reply in quotes:
    it is unwrapped, not removed.

    Example:
        >>> strip_quoted('"I cannot let you pass," the guard said, and walked on.')
        '"" the guard said, and walked on.'
    """
    whole = _WHOLE_QUOTE.fullmatch(text)
    if whole is not None:
        text = next(g for g in whole.groups() if g is not None)
    stripped = _QUOTED.sub('""', _CODE.sub(" ", text))
    if len(re.findall(r"\w+", stripped)) < MIN_WORDS_OUTSIDE_QUOTES:
        return _CODE.sub(" ", text)
    return stripped


def normalise(text: str) -> str:
    """Typographic apostrophes as "'", and runs of spaces (not line breaks) as one space."""
    return _SPACES.sub(" ", normalise_apostrophes(text))


def normalise_apostrophes(text: str) -> str:
    """Typographic apostrophes as "'", so "I’m sorry" matches "I'm sorry"."""
    return text.translate(_APOSTROPHES)
