"""Prompt/target pairs for RelP attribution and faithfulness: checking, tokenizing, reading.

A target (or contrast) is the next token the model should (or should not) produce after the
rendered prompt. Given as text (" Paris"), it is the **first token of the text as it continues
the rendered prompt**: the prompt and prompt + target are tokenized together and the first token
after the prompt's own tokens is taken, so a leading space, a SentencePiece word marker or a
merge with the template's last characters come out as the model would see them. Where the
prompt's tokens change when the target is appended (a merge across the boundary), the target is
tokenized on its own instead. Given as an int, it is that token id. Only one token is scored: a
longer target is logged with the token used.

Pair files (`load_pairs`): .jsonl / .json records, or .csv / .tsv with a header row, with the
fields `prompt`, `target` and optionally `contrast` (any case). Targets keep their spaces.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from neurosteer._io import read_text
from neurosteer.errors import InputError
from neurosteer.prompts.render import (
    encode_for_model,
    render_prompts,
    tokenize_rendered,
    uses_chat_template,
)
from neurosteer.prompts.template_vars import pin_clock
from neurosteer.prompts.text_check import check_text

logger = logging.getLogger(__name__)

Target = str | int


@dataclass(frozen=True)
class EncodedPairs:
    """Prompts as token ids with the token id of each one's target (and contrast).

    Attributes:
        token_ids: per prompt, its rendered token ids.
        targets: [n] target token ids.
        contrasts: [n] contrast token ids, or None when no contrast was given.
        templated: whether the chat template rendered the prompts.
    """

    token_ids: list[list[int]]
    targets: list[int]
    contrasts: list[int] | None
    templated: bool


def check_pairs(
    prompts: Sequence[str],
    targets: Sequence[Target] | Target,
    contrasts: Sequence[Target] | Target | None = None,
) -> tuple[list[str], list[Target], list[Target] | None]:
    """Prompts, one target per prompt and one contrast per prompt (or None).

    A single str or int target (or contrast) stands for every prompt; a list must hold one per
    prompt.

    Raises:
        InputError: no prompts, empty prompts or targets, or a list of another length.
    """
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise InputError("the prompts must be a list of strings")
    cleaned = [p for p in prompts if isinstance(p, str) and p.strip()]
    if not cleaned:
        raise InputError("no prompts given; give at least one prompt with its target")
    if len(cleaned) != len(prompts):
        raise InputError("the prompts contain empty or non-text entries; remove them")
    return (
        cleaned,
        _per_prompt(targets, len(cleaned), "target"),
        None if contrasts is None else _per_prompt(contrasts, len(cleaned), "contrast"),
    )


def _per_prompt(values: Sequence[Target] | Target, n: int, what: str) -> list[Target]:
    items: list[Target] = [values] * n if isinstance(values, (str, int)) else list(values)
    if len(items) != n:
        raise InputError(
            f"{n} prompt{'s' if n != 1 else ''} but {len(items)} {what}s; give one {what} per "
            "prompt (or a single one for all)"
        )
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (str, int)):
            raise InputError(f"a {what} must be text or a token id, got {type(item).__name__}")
        if isinstance(item, str) and not item:
            raise InputError(f"a {what} is empty; give the text of the next token")
    return items


def encode_pairs(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    targets: Sequence[Target],
    contrasts: Sequence[Target] | None = None,
    *,
    chat_template: bool | None = None,
    system: str | None = None,
    template_vars: Mapping[str, Any] | None = None,
) -> EncodedPairs:
    """Render and tokenize the prompts (context-checked) and resolve every target's token id.

    Raises:
        InputError: as `encode_for_model`; a target that tokenizes to nothing or to the
            unknown token, or a token id outside the vocabulary.
    """
    templated = uses_chat_template(tokenizer, chat_template)
    # one date for both renderings, should the template read the clock
    template_vars = pin_clock(tokenizer, template_vars) if templated else template_vars
    ids = encode_for_model(
        model,
        tokenizer,
        prompts,
        chat_template=templated,
        system=system,
        template_vars=template_vars,
    )
    rendered = render_prompts(
        tokenizer, prompts, templated, system=system, template_vars=template_vars
    )
    vocab = int(model.get_output_embeddings().weight.shape[0])

    def resolve(values: Sequence[Target]) -> list[int]:
        return [
            _token_id(tokenizer, text, prompt_ids, value, templated, vocab)
            for text, prompt_ids, value in zip(rendered, ids, values, strict=True)
        ]

    return EncodedPairs(
        token_ids=ids,
        targets=resolve(targets),
        contrasts=None if contrasts is None else resolve(contrasts),
        templated=templated,
    )


def _token_id(
    tokenizer: PreTrainedTokenizerBase,
    rendered: str,
    prompt_ids: list[int],
    target: Target,
    templated: bool,
    vocab: int,
) -> int:
    if isinstance(target, int):
        if not 0 <= target < vocab:
            raise InputError(f"token id {target} is outside the vocabulary (0..{vocab - 1})")
        return target
    check_text(target, f"the target {target!r}")
    joined = tokenize_rendered(tokenizer, [rendered + target], templated)[0]
    n = len(prompt_ids)
    if joined[:n] == prompt_ids and len(joined) > n:
        continuation = joined[n:]
    else:  # the target merged with the prompt's last characters: tokenize it alone
        continuation = list(tokenizer(target, add_special_tokens=False)["input_ids"])
    if not continuation:
        raise InputError(f"the target {target!r} tokenizes to nothing; give visible text")
    unk = tokenizer.unk_token_id
    if unk is not None and target != tokenizer.unk_token and continuation[0] == unk:
        raise InputError(
            f"the target {target!r} is not in this tokenizer's vocabulary (it encodes to "
            f"{tokenizer.unk_token}); give a token the model knows"
        )
    if len(continuation) > 1:
        logger.info(
            "target %r is %d tokens; its first, %r, is scored",
            target,
            len(continuation),
            tokenizer.decode([continuation[0]]),
        )
    return int(continuation[0])


def load_pairs(path: str | Path) -> tuple[list[str], list[str], list[str] | None]:
    """(prompts, targets, contrasts or None) from a pair file (see the module docstring).

    Raises:
        InputError: a missing or unreadable file, an unknown kind, a record without a prompt
            or target, or contrasts given for some pairs but not others.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise InputError(f"pair file '{file}' does not exist")
    suffix = file.suffix.lower()
    text = read_text(file, "pair file")
    records: list[tuple[str, dict[str, Any]]]
    if suffix in (".csv", ".tsv"):
        reader = csv.DictReader(io.StringIO(text), delimiter="\t" if suffix == ".tsv" else ",")
        records = [(f"{file} row {i}", dict(row)) for i, row in enumerate(reader, 1)]
    elif suffix in (".jsonl", ".json"):
        records = _json_records(text, file, suffix == ".jsonl")
    else:
        raise InputError(f"'{file}': unknown pair file kind '{suffix}'; use .jsonl, .json or .csv")
    prompts, targets, contrasts = [], [], []
    for where, record in records:
        fields = {str(k).strip().lower(): v for k, v in record.items() if k is not None}
        prompt, target = fields.get("prompt"), fields.get("target")
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError(f"'{where}' has no prompt")
        if not isinstance(target, str) or not target:
            raise InputError(f"'{where}' has no target")
        contrast = fields.get("contrast")
        for name, value in (("prompt", prompt), ("target", target), ("contrast", contrast)):
            if isinstance(value, str):
                check_text(value, f"the {name} of '{where}'")
        prompts.append(prompt.strip())
        targets.append(target)
        if isinstance(contrast, str) and contrast:
            contrasts.append(contrast)
    if not prompts:
        raise InputError(f"pair file '{file}' holds no pairs")
    if contrasts and len(contrasts) != len(prompts):
        raise InputError(f"'{file}': give a contrast for every pair or for none")
    return prompts, targets, contrasts or None


def _json_records(text: str, file: Path, lines: bool) -> list[tuple[str, dict[str, Any]]]:
    try:
        if lines:
            items = [
                (f"{file}:{n}", json.loads(line))
                for n, line in enumerate(text.splitlines(), 1)
                if line.strip()
            ]
        else:
            data = json.loads(text)
            if not isinstance(data, list):
                raise InputError(f"'{file}' must hold a JSON list of records")
            items = [(f"{file} item {i}", item) for i, item in enumerate(data, 1)]
    except json.JSONDecodeError as err:
        raise InputError(f"'{file}' is not valid JSON: {err}") from None
    for where, item in items:
        if not isinstance(item, dict):
            raise InputError(f"'{where}' is not a record with prompt and target fields")
    return items
