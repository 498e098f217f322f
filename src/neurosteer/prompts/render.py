"""Prompts in, rendered, checked and tokenized batches out.

Reading: `neurosteer.prompts.files` (re-exported here: `load_prompts`).
Rendering: instruct models get their chat template (one user turn, generation prompt appended,
the template's default system text kept, or `system=` as a system turn); models without a
template get the raw text. A template that fails (one that needs a system turn, one that
refuses it) is an `InputError` that says which option fixes it.
Context: `encode_for_model` refuses, before any forward pass, a prompt whose rendered tokens
(plus the one position a generated token needs) exceed the model's context (see
`neurosteer.prompts.context`).
Generation keeps prompt + answer inside the context by capping the new tokens of the prompts
that would overflow it (`new_token_budgets`, with a logged warning) rather than refusing them.
Batching: prompts sorted by token length so that padding is small, padded on the left.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from neurosteer.errors import InputError
from neurosteer.prompts.context import (
    check_context,
    context_limit,
    describe_prompt,
    new_token_budgets,
)
from neurosteer.prompts.files import PROMPT_FIELDS, SourcedPrompt, load_prompts
from neurosteer.prompts.template_vars import pin_clock, template_kwargs
from neurosteer.prompts.text_check import check_prompts, check_text

__all__ = [
    "PROMPT_FIELDS",
    "Batch",
    "SourcedPrompt",
    "context_limit",
    "describe_prompt",
    "encode_for_model",
    "encode_prompts",
    "iter_batches",
    "load_prompts",
    "new_token_budgets",
    "prompt_hash",
    "render_prompts",
]

#: A stand-in system text, used only to tell why a template failed.
_PROBE_SYSTEM = "You are a helpful assistant."


def prompt_hash(prompts: Sequence[str]) -> str:
    """A stable SHA-256 of a prompt list (order matters), for provenance.

    Raises:
        InputError: a prompt holds text that cannot be encoded (see `check_prompts`).
    """
    check_prompts(prompts)
    return hashlib.sha256(json.dumps(list(prompts), ensure_ascii=False).encode()).hexdigest()


def uses_chat_template(tokenizer: PreTrainedTokenizerBase, chat_template: bool | None) -> bool:
    """Resolve the template mode: None means "if the tokenizer has one"."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if chat_template and not has_template:
        raise InputError(
            "the chat template was asked for but this tokenizer has none; use raw prompts"
        )
    return has_template if chat_template is None else chat_template


def render_prompts(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    chat_template: bool | None = None,
    *,
    system: str | None = None,
    template_vars: Mapping[str, Any] | None = None,
) -> list[str]:
    """Render prompts as the model sees them: one chat user turn, or the raw text.

    Args:
        tokenizer: its chat template renders the turns.
        prompts: the user messages.
        chat_template: True/False forces the template on/off; None uses it when there is one.
        system: a system turn before each user turn (needs a chat template); None keeps the
            template's own default, if it has one.
        template_vars: variables the chat template reads, e.g. {"enable_thinking": False}
            (see `neurosteer.prompts.template_vars`); a template that reads the clock gets one date
            for the whole call (today, unless `template_vars` fixes it).

    Raises:
        InputError: `system` or `template_vars` without a template, a variable the template
            does not read; a template that needs a system turn (pass
            `system`), refuses or drops one (leave `system` out), or fails on a prompt.
    """
    if not uses_chat_template(tokenizer, chat_template):
        if system is not None:
            raise InputError(
                "a system text needs a chat template, and these prompts are rendered raw "
                "(--raw, or a tokenizer without a template); drop --system"
            )
        if template_vars:
            raise InputError(
                "template variables need a chat template, and these prompts are rendered raw "
                "(--raw, or a tokenizer without a template); drop --template-var"
            )
        check_prompts(prompts)
        return list(prompts)
    check_prompts(prompts)
    if system is not None:
        check_text(system, "the system text (--system, system=)")
    from jinja2 import TemplateError  # the engine of transformers' chat templates

    kwargs = template_kwargs(tokenizer, pin_clock(tokenizer, template_vars))
    rendered = []
    for i, prompt in enumerate(prompts):
        try:
            rendered.append(_render(tokenizer, prompt, system, kwargs))
        except TemplateError as err:
            raise _template_error(tokenizer, prompts, i, system, err, kwargs) from None
    if system is not None and system.strip() and rendered and system.strip() not in rendered[0]:
        raise InputError(
            "this chat template drops the system turn (the system text is not in the rendered "
            "prompt); drop --system (system=)"
        )
    return rendered


def _render(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    system: str | None,
    kwargs: Mapping[str, Any],
) -> str:
    """One prompt as a user turn; `kwargs` from `template_kwargs`."""
    messages = [{"role": "user", "content": str(prompt)}]
    if system is not None:
        messages.insert(0, {"role": "system", "content": system})
    return str(
        tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, **kwargs
        )
    )


def _template_error(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    i: int,
    system: str | None,
    err: Exception,
    kwargs: Mapping[str, Any],
) -> InputError:
    """Why a template failed, found by rendering the prompt once with the other choice."""
    from jinja2 import TemplateError

    other = _PROBE_SYSTEM if system is None else None
    try:
        _render(tokenizer, prompts[i], other, kwargs)
    except TemplateError:
        return InputError(
            f"the chat template fails on {describe_prompt(prompts, i)}: {err}; fix the prompt "
            "or render it raw (--raw)"
        )
    if system is None:
        return InputError(
            f"this chat template needs a system turn ({err}); pass --system TEXT (system= in "
            "the API)"
        )
    return InputError(
        f"this chat template does not take a system turn ({err}); drop --system (system=)"
    )


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    chat_template: bool | None = None,
    *,
    system: str | None = None,
    template_vars: Mapping[str, Any] | None = None,
) -> list[list[int]]:
    """Render and tokenize prompts as the model sees them (see `render_prompts`); no context
    check (`encode_for_model` adds it)."""
    templated = uses_chat_template(tokenizer, chat_template)
    rendered = render_prompts(
        tokenizer, prompts, templated, system=system, template_vars=template_vars
    )
    return tokenize_rendered(tokenizer, rendered, templated)


def encode_for_model(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    chat_template: bool | None = None,
    system: str | None = None,
    template_vars: Mapping[str, Any] | None = None,
    reserve: int = 0,
    what: str = "prompt",
    hint: str = "shorten or remove it",
) -> list[list[int]]:
    """Render and tokenize prompts for `model`, refusing any that do not fit its context.

    The one gate every prompt passes before a forward pass (discovery, generation, baselines,
    KL, model judges, sweeps).

    Args:
        model: the model the tokens are for (its config gives `context_limit`).
        tokenizer, prompts, chat_template, system, template_vars: as in `render_prompts`.
        reserve: positions that must stay free after the prompt (1 when generating: the first
            new token; longer answers are capped, see `new_token_budgets`).
        what, hint: how the error names a prompt and what it suggests.

    Returns:
        Token ids per prompt, in input order.

    Raises:
        InputError: as `render_prompts`; or a prompt is too long: one line naming it (FILE:LINE
            when it was read from a file, else its index and first words), its token count,
            and the model's limit.
    """
    templated = uses_chat_template(tokenizer, chat_template)
    token_ids = encode_prompts(
        tokenizer, prompts, templated, system=system, template_vars=template_vars
    )
    check_context(
        token_ids,
        prompts,
        context_limit(model, tokenizer),
        reserve=reserve,
        what=what,
        hint=hint,
        templated=templated,
    )
    return token_ids


@dataclass(frozen=True)
class Batch:
    """One left-padded batch and where its rows come from.

    Attributes:
        input_ids: [batch, seq] token ids, padded on the left.
        attention_mask: [batch, seq], 0 on padding.
        index: [batch] position of each row in the original prompt list.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    index: torch.Tensor

    @property
    def n_tokens(self) -> int:
        return int(self.attention_mask.sum())


def tokenize_rendered(
    tokenizer: PreTrainedTokenizerBase, rendered: Sequence[str], templated: bool
) -> list[list[int]]:
    """Token ids of each rendered prompt (templates carry their own BOS text).

    Raises:
        InputError: a rendered prompt holds text no tokenizer encodes (see `check_prompts`),
            or renders to zero tokens.
    """
    check_prompts(rendered, "rendered prompt")
    encoded = tokenizer(list(rendered), add_special_tokens=not templated)["input_ids"]
    ids = [list(map(int, row)) for row in encoded]
    if any(len(row) == 0 for row in ids):
        raise InputError("a prompt rendered to zero tokens; remove empty prompts")
    return ids


def length_order(token_ids: Sequence[Sequence[int]]) -> list[int]:
    """Prompt indices, longest first (memory peaks early; ties keep the input order)."""
    return sorted(range(len(token_ids)), key=lambda i: (-len(token_ids[i]), i))


def make_batch(token_ids: Sequence[Sequence[int]], rows: Sequence[int], pad_id: int) -> Batch:
    """Left-pad the prompts `rows` of `token_ids` into one batch."""
    width = max(len(token_ids[i]) for i in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, i in enumerate(rows):
        seq = token_ids[i]
        ids[r, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
        mask[r, width - len(seq) :] = 1
    return Batch(ids, mask, torch.tensor(list(rows), dtype=torch.long))


def batch_rows(
    order: Sequence[int], start: int, batch_size: int, budgets: Sequence[int] | None = None
) -> list[int]:
    """The next batch: up to `batch_size` prompts of `order` from `start`, all with the same
    new-token budget when `budgets` are given (capped prompts are batched only with prompts of
    their own length, so an answer never depends on its batch mates)."""
    rows = list(order[start : start + batch_size])
    if budgets is not None:
        first = budgets[rows[0]]
        rows = rows[: next((r for r, i in enumerate(rows) if budgets[i] != first), len(rows))]
    return rows


def iter_batches(
    token_ids: Sequence[Sequence[int]],
    batch_size: int,
    pad_id: int,
    budgets: Sequence[int] | None = None,
) -> Generator[Batch, int | None, None]:
    """Left-padded batches of prompts sorted by length (see `batch_rows` for `budgets`).

    Sending a smaller batch size (`batches.send(n)`) instead of asking for the next batch gives
    the prompts of the batch just yielded again, from then on at that size (how
    `runtime.run_batches` retries a batch that ran out of memory).
    """
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}")
    order = length_order(token_ids)
    start = 0
    while start < len(order):
        rows = batch_rows(order, start, batch_size, budgets)
        smaller = yield make_batch(token_ids, rows, pad_id)
        if smaller is None:
            start += len(rows)
        else:
            batch_size = smaller
