"""Context: does a rendered prompt fit the model it is for?

`context_limit` reads the model's context length from its config (the first of
`CONTEXT_FIELDS` that is set; the text config of a multimodal model first), else the
tokenizer's `model_max_length` when that is really set. `check_context` refuses prompts over
it with one line naming the prompt (FILE:LINE when read from a file), its token count and the
limit. `new_token_budgets` caps generation so that prompt + answer stay inside the context.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from neurosteer.errors import InputError

logger = logging.getLogger(__name__)

#: Config fields that hold a model's context length, by family (the first one set wins).
CONTEXT_FIELDS = ("max_position_embeddings", "n_positions", "n_ctx", "seq_length", "max_seq_len")
#: tokenizer.model_max_length at or above this means "not set" (transformers stores 1e30).
_UNSET_LENGTH = 10**9
#: (limit, max_new_tokens) pairs whose capping was already a warning in this process.
_WARNED: set[tuple[int, int]] = set()


def context_limit(model: Any, tokenizer: Any = None) -> int | None:
    """Positions the model can attend over: its config's context length (`CONTEXT_FIELDS`),
    else the tokenizer's `model_max_length` when that is set; None when neither says."""
    config = getattr(model, "config", None)
    text_config = getattr(config, "get_text_config", None)
    for source in (text_config() if callable(text_config) else None, config):
        for name in CONTEXT_FIELDS:
            value = getattr(source, name, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    length = getattr(tokenizer, "model_max_length", None)
    if isinstance(length, int) and 0 < length < _UNSET_LENGTH:
        return length
    return None


def describe_prompt(prompts: Sequence[str], i: int, what: str = "prompt") -> str:
    """How errors name a prompt: "prompt FILE:LINE" when it was read from a file, else
    "prompt N ('its first words...')"."""
    origin = getattr(prompts[i], "origin", "")
    if origin:
        return f"{what} {origin}"
    text = " ".join(str(prompts[i]).split())
    return f"{what} {i + 1} ({text[:40] + '...' if len(text) > 40 else text!r})"


def check_context(
    token_ids: Sequence[Sequence[int]],
    prompts: Sequence[str],
    limit: int | None,
    *,
    reserve: int = 0,
    what: str = "prompt",
    hint: str = "shorten or remove it",
    templated: bool = False,
) -> None:
    """Raise `InputError` for the first prompt with len + reserve > limit (see
    `encode_for_model`); nothing when the limit is unknown."""
    if limit is None:
        return
    over = [i for i, ids in enumerate(token_ids) if len(ids) + reserve > limit]
    if not over:
        return
    i, n = over[0], len(token_ids[over[0]])
    name = describe_prompt(prompts, i, what)
    rendered = " with the chat template" if templated else ""
    room = "" if n > limit else ", leaving no room for a generated token"
    extra = len(over) - 1
    verb = "does" if extra == 1 else "do"
    more = f" ({extra} more of this set {verb} not fit either)" if extra else ""
    raise InputError(
        f"{name} is {n} tokens long{rendered} and the model's context holds {limit} "
        f"positions{room}; {hint}{more}"
    )


def new_token_budgets(
    token_ids: Sequence[Sequence[int]], max_new_tokens: int, limit: int | None
) -> list[int]:
    """New tokens each prompt may generate: `max_new_tokens`, capped so that prompt + answer
    stay inside the context. The first capping for a (limit, max_new_tokens) pair is a
    warning, later ones are debug notes (a sweep generates the same sets many times)."""
    if limit is None:
        return [max_new_tokens] * len(token_ids)
    budgets = [max(0, min(max_new_tokens, limit - len(ids))) for ids in token_ids]
    capped = sum(b < max_new_tokens for b in budgets)
    if capped:
        key = (limit, max_new_tokens)
        level = logging.DEBUG if key in _WARNED else logging.WARNING
        _WARNED.add(key)
        logger.log(
            level,
            "%d of %d prompts leave fewer than %d positions for new tokens in the model's "
            "%d-token context; their answers stop at the context limit",
            capped,
            len(budgets),
            max_new_tokens,
            limit,
        )
    return budgets
