"""Refusal phrase lists, built in or loaded from JSON.

A `PhraseList` is plain data (phrases, regex or substring, case rule, exceptions);
`judges.PhraseJudge` applies one. The built-in lists are refusal *clauses* in the project's own
wording (`refusal_clauses` explains the grammar), each list a superset of the one before:

    strict    hard declines: "I can't help with", "I'm unable to provide", "I must decline"
    patterns  strict plus "I'm sorry, but <objection>", policy language, "not comfortable"
    sweep     patterns plus soft hedges ("I'd rather not", "I advise against"), for sweeps

User lists are JSON: a list of strings; an object with "strings" (or "phrases" / "patterns"),
optionally "unless" (regexes that void a match they cover); or an object of such named lists
(keys starting with "_" are notes), from which `name` picks one. The literature's lists
(shared/data/refusal_judges/refusal_substrings.json) load the same way, by entry name.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neurosteer._io import read_text
from neurosteer.errors import InputError
from neurosteer.evaluation.refusal_clauses import (
    PATTERN_CLAUSES,
    STRICT_CLAUSES,
    SWEEP_CLAUSES,
    UNLESS,
)

_PHRASE_KEYS = ("strings", "phrases", "patterns")


@dataclass(frozen=True)
class PhraseList:
    """Refusal phrases and how to match them.

    Attributes:
        name: a label for reports ("sweep", or the entry name in a JSON file).
        phrases: substrings, or regular expressions when `regex` is true.
        regex: match `phrases` as Python regular expressions.
        case_sensitive: match case exactly (the built-in lists ignore case).
        source: where the list comes from ("builtin" or a file path).
        unless: regular expressions (always regexes) for text that looks like a refusal but is
            not; a phrase match inside a span one of them matches does not count.
    """

    name: str
    phrases: tuple[str, ...]
    regex: bool = False
    case_sensitive: bool = False
    source: str = "builtin"
    unless: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.phrases:
            raise InputError(f"phrase list '{self.name}' is empty; give at least one phrase")
        for phrase in self.phrases:
            if not isinstance(phrase, str) or not phrase.strip():
                raise InputError(
                    f"phrase list '{self.name}' holds {phrase!r}; phrases must be non-empty strings"
                )
            if self.regex:
                _check_regex(self.name, phrase)
        for pattern in self.unless:
            if not isinstance(pattern, str) or not pattern.strip():
                raise InputError(
                    f"phrase list '{self.name}' has the exception {pattern!r}; "
                    "exceptions must be non-empty regex strings"
                )
            _check_regex(self.name, pattern)


def _check_regex(name: str, pattern: str) -> None:
    try:
        re.compile(pattern)
    except re.error as err:
        raise InputError(
            f"phrase list '{name}': {pattern!r} is not a valid regex ({err})"
        ) from None


BUILTIN_LISTS: dict[str, PhraseList] = {
    "strict": PhraseList("strict", STRICT_CLAUSES, regex=True, unless=UNLESS),
    "sweep": PhraseList("sweep", SWEEP_CLAUSES, regex=True, unless=UNLESS),
    "patterns": PhraseList("patterns", PATTERN_CLAUSES, regex=True, unless=UNLESS),
}

#: The published lists of `refusal_substrings.json` (shared/data/refusal_judges), by entry name,
#: with the characters their original code searched (None: the whole answer). `get_judge`
#: applies them literally, as published, for replication; see docs/evaluation.md for their
#: known false positives.
PUBLISHED_WINDOWS: dict[str, int | None] = {
    "cna_neural_steering_jailbreak_benchmark_regex": 500,
    "cna_neural_steering_steering_comparison_phrases": None,
    "arditi2024_refusal_direction": None,
    "jailbreakbench_StringClassifier": None,
    "llm_attacks_AttackPrompt_default": None,
    "llm_attacks_experiments_evaluate_py": None,
    "llm_attacks_experiments_evaluate_individual_py": None,
    "llm_attacks_demo_ipynb": None,
    "llm_attacks_api_experiments_key_words": None,
}


def builtin_list(name: str) -> PhraseList:
    """A built-in list by name ("strict", "sweep" or "patterns")."""
    if name not in BUILTIN_LISTS:
        raise InputError(
            f"unknown phrase list '{name}'; built-in lists are {', '.join(BUILTIN_LISTS)}"
        )
    return BUILTIN_LISTS[name]


def load_phrase_lists(path: str | Path) -> dict[str, PhraseList]:
    """Every phrase list in a JSON file, by name (a bare list is named after the file).

    Raises:
        InputError: the file is missing, not JSON, or holds no usable phrase list.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise InputError(f"phrase list file '{file}' does not exist")
    try:
        data = json.loads(read_text(file, "phrase list file"))
    except json.JSONDecodeError as err:
        raise InputError(f"'{file}' is not valid JSON (line {err.lineno}): {err.msg}") from None
    if isinstance(data, list) or (isinstance(data, dict) and _has_phrases(data)):
        return {file.stem: _entry(file.stem, data, file)}
    if not isinstance(data, dict):
        raise InputError(f"'{file}' must hold a JSON list of phrases or an object of lists")
    entries = {str(k): v for k, v in data.items() if not str(k).startswith("_")}
    usable = {k: v for k, v in entries.items() if isinstance(v, list) or _has_phrases(v)}
    if not usable:
        raise InputError(
            f"'{file}' holds no phrase lists (entries need {' / '.join(_PHRASE_KEYS)}); "
            "if it holds judge-model prompts, use load_judge_prompt"
        )
    return {name: _entry(name, value, file) for name, value in usable.items()}


def load_phrase_list(path: str | Path, name: str | None = None) -> PhraseList:
    """One phrase list from a JSON file; `name` picks an entry when the file holds several.

    Example:
        >>> lists = "shared/data/refusal_judges/refusal_substrings.json"
        >>> load_phrase_list(lists, "arditi2024_refusal_direction").phrases[0]
        "I'm sorry"
    """
    lists = load_phrase_lists(path)
    if name is None:
        if len(lists) == 1:
            return next(iter(lists.values()))
        raise InputError(
            f"'{path}' holds {len(lists)} phrase lists; choose one by name: {', '.join(lists)}"
        )
    if name not in lists:
        raise InputError(f"'{path}' has no phrase list '{name}'; it has {', '.join(lists)}")
    return lists[name]


def _has_phrases(value: Any) -> bool:
    return isinstance(value, dict) and any(k in value for k in _PHRASE_KEYS)


def _entry(name: str, value: Any, file: Path) -> PhraseList:
    """A list of strings, or an object with phrases plus optional "regex" / "case_sensitive"."""
    if isinstance(value, list):
        return PhraseList(name, tuple(value), source=str(file))
    key = next(k for k in _PHRASE_KEYS if k in value)
    phrases = value[key]
    if not isinstance(phrases, list):
        raise InputError(f"'{file}': '{name}.{key}' must be a list of strings")
    regex = value.get("is_regex", value.get("regex", key == "patterns"))
    case_sensitive = value.get("case_sensitive", False)
    if not isinstance(regex, bool) or not isinstance(case_sensitive, bool):
        raise InputError(f"'{file}': '{name}' has a non-boolean regex or case_sensitive flag")
    unless = value.get("unless", [])
    if not isinstance(unless, list):
        raise InputError(f"'{file}': '{name}.unless' must be a list of regex strings")
    return PhraseList(name, tuple(phrases), regex, case_sensitive, str(file), tuple(unless))
