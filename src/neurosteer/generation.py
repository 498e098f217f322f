"""Stage 7 helper: batched greedy generation of completions, under whatever is active.

It knows nothing of steering: hooks or baked weights already on the model apply as they are.
Prompts are rendered like discovery renders them, batched by length, and the completions come
back in the order of the prompts.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from neurosteer.errors import InputError
from neurosteer.prompts import Batch, context_limit, encode_for_model, new_token_budgets
from neurosteer.runtime import input_device, pad_id, run_batches

logger = logging.getLogger(__name__)


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    chat_template: bool | None = None,
    system: str | None = None,
    template_vars: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> list[str]:
    """Greedy completions (new text only, special tokens dropped), one per prompt.

    Prompts are batched by length; an out-of-memory error halves the batch and retries it,
    keeping the completions already made. `system` is a system turn and `template_vars` the chat
    template's variables (see `render_prompts`).

    Context: a prompt that leaves no position for a new token in the model's context is an
    `InputError` (before any forward pass); a prompt whose answer would run past the context
    gets fewer than `max_new_tokens` (a warning is logged), batched only with prompts of its
    own length so that its answer does not depend on the batch.

    Example:
        >>> with steer(model, circuit, 0.0):
        ...     answers = generate(model, tokenizer, ["How do I pick a lock?"], max_new_tokens=40)
    """
    if max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}")
    if not prompts:
        return []
    token_ids = encode_for_model(
        model,
        tokenizer,
        prompts,
        chat_template=chat_template,
        system=system,
        template_vars=template_vars,
        reserve=1,
    )
    budgets = new_token_budgets(token_ids, max_new_tokens, context_limit(model, tokenizer))
    device, pad = input_device(model), pad_id(tokenizer)
    answers: list[str] = [""] * len(prompts)

    def attempt(batch: Batch) -> torch.Tensor:
        return greedy_batch(model, batch, budgets[int(batch.index[0])], pad)

    def finish(batch: Batch, output: torch.Tensor) -> None:
        new_tokens = output[:, batch.input_ids.shape[1] :].cpu()
        texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        for row, text in zip(batch.index.tolist(), texts, strict=True):
            answers[row] = text.strip()
        bar.update(len(texts))

    with (
        torch.inference_mode(),
        tqdm(total=len(prompts), desc="generating", disable=not progress, leave=False) as bar,
    ):
        run_batches(
            token_ids,
            attempt,
            finish,
            batch_size=batch_size,
            pad_id=pad,
            device=device,
            budgets=budgets,
            what="generating",
        )
    return answers


def greedy_batch(
    model: PreTrainedModel, batch: Batch, max_new_tokens: int, pad_id: int
) -> torch.Tensor:
    """[batch, seq + t] int64: a left-padded batch of prompts followed by the model's greedy
    continuation (t <= `max_new_tokens`; rows that ended early are padded with `pad_id`), on
    the model's input device."""
    device = input_device(model)
    return model.generate(  # type: ignore[operator]
        input_ids=batch.input_ids.to(device),
        attention_mask=batch.attention_mask.to(device),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=pad_id,
    )
