"""Chat-template variables (`--template-var KEY=VALUE`, `template_vars=`) and the template's clock.

Variables: a template may read variables beyond the messages, e.g. Qwen3's `enable_thinking`.
They are passed to every rendering, recorded where `system` is recorded (circuit settings, sweep
and search configs), and a resume with other values is refused like a changed system turn.
Values from the command line are parsed: true/false → bool, whole numbers → int, other numbers
→ float, anything else stays text. A name the template never mentions is refused (a typo would
otherwise be ignored silently).

The clock: templates that call `strftime_now` (Llama 3.x puts "Today Date: 26 Jul 2024" in the
system header) render differently on another day. The variable `strftime_now` (`CLOCK_VAR`),
an ISO date, fixes the date such a template reads: `pin_clock` adds today's date once per run
(a resumed run reuses the stored one), so a circuit, sweep or search is rendered the same way
on every day and records the date it used. Templates that do not read the clock are untouched.
Transformers' sandbox only passes plain data to a template, so the date is given as a table of
strftime codes and a macro named `strftime_now`, prepended to the template, formats with it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any

from transformers import PreTrainedTokenizerBase

from neurosteer.errors import InputError
from neurosteer.prompts.text_check import check_text

__all__ = [
    "CLOCK_VAR",
    "check_template_vars",
    "parse_template_vars",
    "pin_clock",
    "reads_clock",
    "template_kwargs",
]

#: The template variable that fixes the date a template's `strftime_now` reads (YYYY-MM-DD).
CLOCK_VAR = "strftime_now"
#: Names `apply_chat_template` or the messages take themselves; not template variables.
_RESERVED = frozenset(
    {
        "messages",
        "conversation",
        "tools",
        "documents",
        "chat_template",
        "add_generation_prompt",
        "continue_final_message",
        "tokenize",
        "padding",
        "truncation",
        "max_length",
        "return_tensors",
        "return_dict",
        "return_assistant_tokens_mask",
        "tokenizer_kwargs",
        "sanitize_control_tokens",
    }
)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\Z")
#: The table the clock macro formats with (see `_clock_table`).
_TABLE_VAR = "neurosteer_clock"
_CLOCK_MACRO = (
    "{%- macro strftime_now(fmt) -%}{%- set ns = namespace(text=fmt) -%}"
    "{%- for code, value in " + _TABLE_VAR + " -%}"
    "{%- set ns.text = ns.text.replace(code, value) -%}"
    "{%- endfor -%}{{- ns.text -}}{%- endmacro %}"
)
_PERCENT = "\x00"  # stands for a literal "%%" while the codes are replaced


def parse_template_vars(items: tuple[str, ...] | list[str]) -> dict[str, Any] | None:
    """`KEY=VALUE` strings (the CLI's `--template-var`) → {key: parsed value}, None if none.

    Raises:
        InputError: an item without "=", a bad or reserved name, a name given twice, a bad date.
    """
    parsed: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InputError(
                f"--template-var takes KEY=VALUE, e.g. enable_thinking=false; got {item!r}"
            )
        if key in parsed:
            raise InputError(f"--template-var {key} is given twice; give it once")
        parsed[key] = _parse_value(text.strip())
    return check_template_vars(parsed)


def _parse_value(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if _NUMBER.match(text):
        number = float(text)
        if number.is_integer() and re.fullmatch(r"[+-]?\d+", text):
            return int(text)
        return number
    return text


def check_template_vars(template_vars: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Validate template variables: names are identifiers and not `apply_chat_template`'s
    own arguments, values are plain JSON scalars (text, number, bool, None), the clock a date.

    Returns:
        A plain dict (None when there are none).

    Raises:
        InputError: one line naming the variable and what is allowed.
    """
    if not template_vars:
        return None
    checked: dict[str, Any] = {}
    for key, value in template_vars.items():
        if not isinstance(key, str) or not _NAME.match(key):
            raise InputError(
                f"template variable name {key!r} is not a name (letters, digits, _); "
                "e.g. enable_thinking=false"
            )
        if key in _RESERVED:
            raise InputError(
                f"{key!r} is set by neurosteer itself, not a template variable; drop it"
            )
        if not (value is None or isinstance(value, (str, bool, int, float))):
            raise InputError(
                f"template variable {key} must be text, a number, true/false or None, got "
                f"{type(value).__name__}"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise InputError(f"template variable {key} must be a finite number, got {value}")
        if isinstance(value, str):
            check_text(value, f"template variable {key}")
        checked[key] = value
    if CLOCK_VAR in checked:
        _clock_date(checked[CLOCK_VAR])
    return checked


def _clock_date(value: Any) -> date:
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        raise InputError(
            f"template variable {CLOCK_VAR} fixes the date the template reads; give it as "
            f"YYYY-MM-DD, got {value!r}"
        ) from None


def template_source(tokenizer: PreTrainedTokenizerBase) -> str:
    """The tokenizer's default chat template text ("" when it has none)."""
    if not getattr(tokenizer, "chat_template", None):
        return ""
    try:
        return str(tokenizer.get_chat_template())
    except ValueError:  # named templates without a default
        return ""


def reads_clock(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer's chat template calls `strftime_now` (renders today's date)."""
    return CLOCK_VAR in template_source(tokenizer)


def today() -> str:
    """Today's date, YYYY-MM-DD (the local date, as transformers' `strftime_now` reads it)."""
    return datetime.now().date().isoformat()


def pin_clock(
    tokenizer: PreTrainedTokenizerBase | None,
    template_vars: Mapping[str, Any] | None,
    stored: Mapping[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Template variables with the clock fixed, when the template reads it and the caller did
    not fix it: the date of `stored` (the template variables a resumed run recorded), else
    today. Unchanged for templates that do not read the clock. Without a tokenizer (a check
    before the model is loaded) only a stored date is taken over.

    Raises:
        InputError: as `check_template_vars`.
    """
    checked = check_template_vars(template_vars) or {}
    previous = (stored or {}).get(CLOCK_VAR)
    if CLOCK_VAR in checked:
        return checked
    if tokenizer is None or reads_clock(tokenizer):
        if previous is not None:
            checked[CLOCK_VAR] = str(previous)
        elif tokenizer is not None:
            checked[CLOCK_VAR] = today()
    return checked or None


def template_kwargs(
    tokenizer: PreTrainedTokenizerBase, template_vars: Mapping[str, Any] | None
) -> dict[str, Any]:
    """Keyword arguments for `apply_chat_template` that render with `template_vars` (see the
    module docstring for the clock).

    Raises:
        InputError: a variable the template never mentions (a typo?), or a bad variable.
    """
    checked = check_template_vars(template_vars)
    if not checked:
        return {}
    source = template_source(tokenizer)
    unread = [key for key in checked if key not in source]
    if unread:
        raise InputError(
            f"the chat template does not read {', '.join(unread)} (template variables it "
            "never mentions would change nothing); check the name or drop it"
        )
    kwargs = {k: v for k, v in checked.items() if k != CLOCK_VAR}
    if CLOCK_VAR in checked:
        kwargs["chat_template"] = _CLOCK_MACRO + source
        kwargs[_TABLE_VAR] = _clock_table(_clock_date(checked[CLOCK_VAR]))
    return kwargs


def _clock_table(day: date) -> list[list[str]]:
    """[[code, text], ...] for every strftime code at midnight of `day`, longest codes first,
    "%%" kept apart so that "%%d" stays a literal "%d"."""
    moment = datetime(day.year, day.month, day.day)
    codes = "aAwdbBmyYHIpMSfzZjUWcxXGuV"
    table = [["%%", _PERCENT]]
    for code in "dmHIMSjy":  # glibc's "%-d": no leading zero
        table.append([f"%-{code}", str(int(moment.strftime(f"%{code}")))])
    table += [[f"%{c}", moment.strftime(f"%{c}")] for c in codes]
    table.append([_PERCENT, "%"])
    return table
