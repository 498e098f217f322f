"""Stage 8 of the pipeline (evaluation): how far an intervention moves the next-token distribution.

On harmless prompts, the unsteered model's greedy continuation is generated once; that same
token sequence is then teacher-forced through the unsteered model and through the model under
the intervention, and KL(P_unsteered || P_steered) is taken at every continuation position
(prompt padding and tokens after the first end-of-sequence are left out). Using one fixed
sequence means both distributions are always conditioned on the same context.

    report = kl_to_reference(model, tokenizer, harmless, intervention=lambda: steer(model, c, 0.0))
    report.first_token, report.mean
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from neurosteer.errors import InputError
from neurosteer.prompts import context_limit, encode_for_model, iter_batches, new_token_budgets
from neurosteer.recording import input_device, positions_from_mask

#: Builds a fresh context manager that applies the intervention while it is entered.
Intervention = Callable[[], contextlib.AbstractContextManager[Any]]


@dataclass(frozen=True)
class KLReport:
    """KL(P_unsteered || P_steered) in nats.

    Attributes:
        first_token: mean over prompts of the KL at the first generated position.
        mean: mean over prompts of each prompt's mean KL over its continuation positions.
        per_prompt_first, per_prompt_mean: the same per prompt, in input order.
        n_positions: continuation positions scored per prompt (its generated tokens up to and
            including the first end-of-sequence).
        max_new_tokens: the continuation length asked for.
    """

    first_token: float
    mean: float
    per_prompt_first: tuple[float, ...]
    per_prompt_mean: tuple[float, ...]
    n_positions: tuple[int, ...]
    max_new_tokens: int


def kl_to_reference(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    intervention: Intervention,
    max_new_tokens: int = 32,
    batch_size: int = 8,
    chat_template: bool | None = None,
    system: str | None = None,
) -> KLReport:
    """KL divergence of the intervened model from the unsteered one, on its own continuations.

    Args:
        model, tokenizer: the unsteered model (no hooks or baked weights active) and its
            left-padding tokenizer.
        prompts: harmless prompts, rendered like discovery renders them.
        intervention: a factory of context managers, called once per batch, e.g.
            `lambda: steer(model, circuit, 0.0)`. The continuation is scored in one forward pass
            without a KV cache, so steer all positions (positions="generated" needs the cache).
        max_new_tokens: length of the greedy continuation (capped where prompt + continuation
            would exceed the model's context, as in `generate`).
        batch_size: prompts per forward pass.
        chat_template, system: how prompts are rendered (see `render_prompts`).

    Example:
        >>> ablate = lambda: steer(model, circuit, 0.0)
        >>> report = kl_to_reference(model, tokenizer, harmless, intervention=ablate)
        >>> report.first_token, report.mean
    """
    if max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if isinstance(prompts, str) or not prompts:
        raise InputError("kl_to_reference() needs a non-empty list of prompts")
    token_ids = encode_for_model(
        model, tokenizer, prompts, chat_template=chat_template, system=system, reserve=1
    )
    budgets = new_token_budgets(token_ids, max_new_tokens, context_limit(model, tokenizer))
    pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    stop_ids = _stop_ids(model, tokenizer)
    device = input_device(model)
    parameters = inspect.signature(model.forward).parameters
    takes_positions = "position_ids" in parameters
    trims_logits = "logits_to_keep" in parameters
    first = [0.0] * len(prompts)
    mean = [0.0] * len(prompts)
    counts = [0] * len(prompts)
    with torch.inference_mode():
        for batch in iter_batches(token_ids, batch_size, pad_id, budgets):
            prompt_ids = batch.input_ids.to(device)
            prompt_mask = batch.attention_mask.to(device)
            full = model.generate(  # type: ignore[operator]
                input_ids=prompt_ids,
                attention_mask=prompt_mask,
                max_new_tokens=budgets[int(batch.index[0])],
                do_sample=False,
                pad_token_id=pad_id,
            )
            new = full[:, prompt_ids.shape[1] :]  # [batch, t]
            valid = _continuation_mask(new, stop_ids)  # [batch, t]
            mask = torch.cat([prompt_mask, torch.ones_like(new)], dim=1)
            inputs: dict[str, torch.Tensor] = {"input_ids": full, "attention_mask": mask}
            if takes_positions:
                inputs["position_ids"] = positions_from_mask(mask)
            reference = _continuation_logprobs(model, inputs, new.shape[1], trims_logits)
            with intervention():
                steered = _continuation_logprobs(model, inputs, new.shape[1], trims_logits)
            # KL(p || q) = sum_v p_v (log p_v - log q_v); [batch, t]
            kl = (reference.exp() * (reference - steered)).sum(-1).clamp(min=0.0)
            kl = kl * valid
            n = valid.sum(-1)  # >= 1: the first generated token is always scored
            for r, row in enumerate(batch.index.tolist()):
                first[row] = float(kl[r, 0])
                mean[row] = float(kl[r].sum() / n[r])
                counts[row] = int(n[r])
    return KLReport(
        first_token=sum(first) / len(first),
        mean=sum(mean) / len(mean),
        per_prompt_first=tuple(first),
        per_prompt_mean=tuple(mean),
        n_positions=tuple(counts),
        max_new_tokens=max_new_tokens,
    )


def _continuation_logprobs(
    model: PreTrainedModel, inputs: dict[str, torch.Tensor], n_new: int, trims_logits: bool
) -> torch.Tensor:
    """float32 log-probabilities [batch, n_new, vocab] that predicted each continuation token.

    The logit at position i predicts token i + 1, so the n_new continuation tokens (the last
    n_new of the left-padded row) are predicted by positions -n_new-1 .. -2. Models that take
    `logits_to_keep` compute only those last n_new + 1 rows of the vocabulary projection.
    """
    extra = {"logits_to_keep": n_new + 1} if trims_logits else {}
    logits = model(**inputs, use_cache=False, **extra).logits[:, -n_new - 1 : -1]
    return torch.log_softmax(logits.float(), dim=-1)


def _continuation_mask(new: torch.Tensor, stop_ids: set[int]) -> torch.Tensor:
    """[batch, t] float mask: 1 up to and including each row's first stop token, 0 after it."""
    is_stop = torch.zeros_like(new, dtype=torch.bool)
    for token in stop_ids:
        is_stop |= new == token
    # a position is valid when no stop token came strictly before it
    stops_before = is_stop.long().cumsum(dim=1) - is_stop.long()
    return (stops_before == 0).float()


def _stop_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """End-of-sequence ids from the generation config and the tokenizer."""
    ids: set[int] = set()
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (config_eos, tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return ids
