"""Stage 8 of the pipeline (evaluation): how far an intervention moves the next-token distribution.

On harmless prompts, the unsteered model's greedy continuation is generated once; that same
token sequence is then teacher-forced through the unsteered model and through the model under
the intervention, and KL(P_unsteered || P_steered) is taken at every continuation position
(prompt padding and tokens after the first end-of-sequence are left out). Using one fixed
sequence means both distributions are always conditioned on the same context.

    report = kl_to_reference(model, tokenizer, harmless, intervention=circuit, strength=0.0)
    report.first_token, report.mean
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from neurosteer.errors import InputError
from neurosteer.generation import greedy_batch
from neurosteer.intervention import Intervention
from neurosteer.prompts import (
    Batch,
    context_limit,
    encode_for_model,
    iter_batches,
    new_token_budgets,
)
from neurosteer.runtime import forward_takes, model_inputs, pad_id


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
    strength: float | None = None,
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
        intervention: what steers, applied with `intervention.steer(model, strength)` around
            each batch's steered pass. The continuation is scored in one forward pass without a
            KV cache, at all positions.
        strength: the intervention's own strength (None: its `default_strength`; see
            `neurosteer.intervention`).
        max_new_tokens: length of the greedy continuation (capped where prompt + continuation
            would exceed the model's context, as in `generate`).
        batch_size: prompts per forward pass.
        chat_template, system: how prompts are rendered (see `render_prompts`).

    Raises:
        InputError: no prompts, `max_new_tokens` below 1, or a prompt that leaves no room in
            the model's context for a generated token (before any forward pass).

    Example:
        >>> report = kl_to_reference(model, tok, harmless, intervention=circuit, strength=0.0)
        >>> report.first_token, report.mean  # nats
    """
    if max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if isinstance(prompts, str) or not prompts:
        raise InputError("kl_to_reference() needs a non-empty list of prompts")
    token_ids = encode_for_model(
        model, tokenizer, prompts, chat_template=chat_template, system=system, reserve=1
    )
    budgets = new_token_budgets(token_ids, max_new_tokens, context_limit(model, tokenizer))
    pad, stop_ids = pad_id(tokenizer), _stop_ids(model, tokenizer)
    first, mean, counts = [0.0] * len(prompts), [0.0] * len(prompts), [0] * len(prompts)
    with torch.inference_mode():
        for batch in iter_batches(token_ids, batch_size, pad, budgets):
            new, inputs = _greedy_continuation(model, batch, budgets[int(batch.index[0])], pad)
            kl, n = _batch_kl(model, intervention, strength, inputs, new, stop_ids)
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


def _batch_kl(
    model: PreTrainedModel,
    intervention: Intervention,
    strength: float | None,
    inputs: dict[str, torch.Tensor],
    new: torch.Tensor,
    stop_ids: set[int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """KL(P_unsteered || P_steered) [batch, t] at each of the t continuation positions `new`
    (0 where not scored), and [batch] the number of positions scored (at least 1)."""
    reference = _continuation_logprobs(model, inputs, new.shape[1])
    with intervention.steer(model, strength):
        steered = _continuation_logprobs(model, inputs, new.shape[1])
    # KL(p || q) = sum_v p_v (log p_v - log q_v); [batch, t]
    valid = _continuation_mask(new, stop_ids)  # [batch, t]
    kl = (reference.exp() * (reference - steered)).sum(-1).clamp(min=0.0) * valid
    return kl, valid.sum(-1)  # the first generated token is always scored


def _greedy_continuation(
    model: PreTrainedModel, batch: Batch, max_new_tokens: int, pad: int
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The unsteered model's greedy continuation of a left-padded batch: the new tokens
    [batch, t], and the forward inputs that teacher-force prompt + continuation [batch, s + t]
    (on the input device)."""
    full = greedy_batch(model, batch, max_new_tokens, pad)
    new = full[:, batch.input_ids.shape[1] :]  # [batch, t]
    mask = torch.cat([batch.attention_mask.to(full.device), torch.ones_like(new)], dim=1)
    return new, model_inputs(model, full, mask)


def _continuation_logprobs(
    model: PreTrainedModel, inputs: dict[str, torch.Tensor], n_new: int
) -> torch.Tensor:
    """float32 log-probabilities [batch, n_new, vocab] that predicted each continuation token.

    The logit at position i predicts token i + 1, so the n_new continuation tokens (the last
    n_new of the left-padded row) are predicted by positions -n_new-1 .. -2. Models that take
    `logits_to_keep` compute only those last n_new + 1 rows of the vocabulary projection.
    """
    extra = {"logits_to_keep": n_new + 1} if forward_takes(model, "logits_to_keep") else {}
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
