"""How far an intervention moves the next-token distribution.

On harmless prompts, the unsteered model's greedy continuation is generated once; that same
token sequence is then teacher-forced through the unsteered model and through the model under
the intervention, and KL(P_unsteered || P_steered) is taken at every continuation position
(prompt padding and tokens after the first end-of-sequence are left out). Using one fixed
sequence means both distributions are always conditioned on the same context.

    report = kl_to_reference(model, tokenizer, harmless, intervention=circuit, strength=0.0)
    report.first_token, report.mean

To score many interventions on the same prompts (a search), compute the unsteered side once
with `kl_reference` (continuations and their log-probabilities, savable) and score each
intervention against it with `kl_from_reference`: the same numbers as `kl_to_reference`, one
steered forward pass per batch each.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from neurosteer._io import atomic_file
from neurosteer.errors import InputError
from neurosteer.evaluation.generation import greedy_batch
from neurosteer.interventions.protocol import Intervention
from neurosteer.model.calls import model_forward
from neurosteer.model.runtime import forward_takes, input_device, model_inputs, pad_id, runs_model
from neurosteer.model.stop_tokens import stop_token_ids
from neurosteer.prompts.render import (
    Batch,
    context_limit,
    encode_for_model,
    iter_batches,
    new_token_budgets,
)
from neurosteer.prompts.rendering import Rendering


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


@runs_model
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
    template_vars: Mapping[str, Any] | None = None,
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
            `neurosteer.interventions.protocol`).
        max_new_tokens: length of the greedy continuation (capped where prompt + continuation
            would exceed the model's context, as in `generate`).
        batch_size: prompts per forward pass.
        chat_template, system, template_vars: how prompts are rendered (see
            `render_prompts`).

    Raises:
        InputError: no prompts, `max_new_tokens` below 1, or a prompt that leaves no room in
            the model's context for a generated token (before any forward pass).

    Example:
        >>> report = kl_to_reference(model, tok, harmless, intervention=circuit, strength=0.0)
        >>> report.first_token, report.mean  # nats
    """
    rows = _Rows(len(prompts))
    with torch.inference_mode():
        # one batch's reference at a time: the log-probabilities of every batch together
        # would be [n_prompts, t, vocab]
        for ref in _reference_batches(
            model,
            tokenizer,
            prompts,
            max_new_tokens,
            batch_size,
            Rendering(chat_template=chat_template, system=system, template_vars=template_vars),
        ):
            rows.add(ref, _steered_kl(model, ref, intervention, strength))
    return rows.report(max_new_tokens)


@dataclass(frozen=True, eq=False)
class ReferenceBatch:
    """The unsteered side of one batch: what `kl_from_reference` compares a steered pass with.

    Attributes:
        index: [b] int64, each row's position in the prompt list.
        input_ids, attention_mask: [b, s + t] the left-padded prompts and the unsteered greedy
            continuation (t new tokens; rows that stopped early are padded after it).
        logprobs: [b, t, vocab] the unsteered log-probabilities that predicted each
            continuation token (float32, or float16 where a caller stored them smaller).
        valid: [b, t] float32, 1 at the positions scored (up to and including the first
            end-of-sequence), 0 after.
    """

    index: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    logprobs: torch.Tensor
    valid: torch.Tensor


@dataclass(frozen=True, eq=False)
class KLReference:
    """The unsteered model's continuations of a prompt set and their log-probabilities.

    Made once by `kl_reference`; `kl_from_reference` scores any intervention against it.
    `save`/`load` keep it in a safetensors file (its size is about n_prompts × t × vocab ×
    the bytes of `logprobs`' dtype; with t = 1, the first answer token only, it is small).

    Attributes:
        batches: the batches, in the order they were run.
        n_prompts: prompts covered (each in exactly one batch).
        max_new_tokens: the continuation length asked for.
    """

    batches: tuple[ReferenceBatch, ...]
    n_prompts: int
    max_new_tokens: int

    def to(self, dtype: torch.dtype) -> KLReference:
        """The same reference with `logprobs` stored as `dtype` (e.g. float16 to halve it)."""
        return replace(
            self, batches=tuple(replace(b, logprobs=b.logprobs.to(dtype)) for b in self.batches)
        )

    def save(self, path: str | Path) -> Path:
        """Write the reference to one safetensors file, atomically (replacing `path`)."""
        tensors = {
            f"{i}.{name}": getattr(batch, name).contiguous()
            for i, batch in enumerate(self.batches)
            for name in ("index", "input_ids", "attention_mask", "logprobs", "valid")
        }
        meta = {
            "format": "neurosteer.kl_reference",
            "n_prompts": str(self.n_prompts),
            "max_new_tokens": str(self.max_new_tokens),
            "n_batches": str(len(self.batches)),
        }
        with atomic_file(path, force=True) as staging:
            save_file(tensors, str(staging), metadata=meta)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> KLReference:
        """Read a reference written by `save`.

        Raises:
            InputError: the file is missing, corrupt or not a KL reference.
        """
        try:
            tensors = load_file(str(path))
            with safe_open(str(path), framework="pt") as handle:
                meta = handle.metadata() or {}
            if meta.get("format") != "neurosteer.kl_reference":
                raise ValueError("not a KL reference file")
            batches = tuple(
                ReferenceBatch(
                    **{
                        name: tensors[f"{i}.{name}"]
                        for name in ("index", "input_ids", "attention_mask", "logprobs", "valid")
                    }
                )
                for i in range(int(meta["n_batches"]))
            )
            return cls(batches, int(meta["n_prompts"]), int(meta["max_new_tokens"]))
        except (OSError, ValueError, KeyError, SafetensorError) as err:
            raise InputError(f"'{path}' is not a readable KL reference ({err})") from None


@runs_model
def kl_reference(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 32,
    batch_size: int = 8,
    chat_template: bool | None = None,
    system: str | None = None,
    template_vars: Mapping[str, Any] | None = None,
) -> KLReference:
    """The unsteered side of `kl_to_reference`, computed once and kept (on the CPU).

    Args: as in `kl_to_reference`. `max_new_tokens=1` keeps only what the first-token KL needs.

    Raises:
        InputError: as `kl_to_reference`.

    Example:
        >>> ref = kl_reference(model, tok, harmless, max_new_tokens=1)
        >>> kl_from_reference(model, ref, intervention=circuit, strength=0.0).first_token
    """
    with torch.inference_mode():
        batches = tuple(
            replace(
                ref,
                **{
                    name: getattr(ref, name).cpu()
                    for name in ("index", "input_ids", "attention_mask", "logprobs", "valid")
                },
            )
            for ref in _reference_batches(
                model,
                tokenizer,
                prompts,
                max_new_tokens,
                batch_size,
                Rendering(chat_template=chat_template, system=system, template_vars=template_vars),
            )
        )
    return KLReference(batches, len(prompts), max_new_tokens)


@runs_model
def kl_from_reference(
    model: PreTrainedModel,
    reference: KLReference,
    *,
    intervention: Intervention,
    strength: float | None = None,
) -> KLReport:
    """KL(P_unsteered || P_steered) on a stored reference: `kl_to_reference`'s numbers for the
    same prompts and settings, with one steered forward pass per batch.

    Args:
        model: the unsteered model the reference was made on (nothing else active).
        reference: from `kl_reference` (or `KLReference.load`).
        intervention, strength: as in `kl_to_reference`.
    """
    rows = _Rows(reference.n_prompts)
    with torch.inference_mode():
        for ref in reference.batches:
            rows.add(ref, _steered_kl(model, ref, intervention, strength))
    return rows.report(reference.max_new_tokens)


@runs_model
def kl_of_model(model: PreTrainedModel, reference: KLReference) -> KLReport:
    """KL(P_reference || P_model) on a stored reference that another model made: how far
    `model` (the same tokenizer; e.g. the same weights baked or quantized into a file) moves
    the next-token distribution, with one forward pass per batch.

    Args:
        model: the model to score, as it is (anything active on it applies).
        reference: from `kl_reference` on the other model.
    """
    rows = _Rows(reference.n_prompts)
    with torch.inference_mode():
        for ref in reference.batches:
            rows.add(ref, _kl(ref, torch.log_softmax(continuation_logits(model, ref), dim=-1)))
    return rows.report(reference.max_new_tokens)


class _Rows:
    """Per-prompt KL values gathered batch by batch, then averaged into a `KLReport`."""

    def __init__(self, n_prompts: int) -> None:
        self.first = [0.0] * n_prompts
        self.mean = [0.0] * n_prompts
        self.counts = [0] * n_prompts

    def add(self, ref: ReferenceBatch, kl: torch.Tensor) -> None:
        """Record one batch's [b, t] KL values (0 where not scored)."""
        n = ref.valid.to(kl.device).sum(-1)  # [b], at least 1: the first token is scored
        for r, row in enumerate(ref.index.tolist()):
            self.first[row] = float(kl[r, 0])
            self.mean[row] = float(kl[r].sum() / n[r])
            self.counts[row] = int(n[r])

    def report(self, max_new_tokens: int) -> KLReport:
        return KLReport(
            first_token=sum(self.first) / len(self.first),
            mean=sum(self.mean) / len(self.mean),
            per_prompt_first=tuple(self.first),
            per_prompt_mean=tuple(self.mean),
            n_positions=tuple(self.counts),
            max_new_tokens=max_new_tokens,
        )


def _reference_batches(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    max_new_tokens: int,
    batch_size: int,
    rendering: Rendering,
) -> Iterator[ReferenceBatch]:
    """The unsteered continuation and log-probabilities of each batch, one batch at a time
    (call under `torch.inference_mode`; tensors stay on the model's devices)."""
    if max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if isinstance(prompts, str) or not prompts:
        raise InputError("kl_to_reference() needs a non-empty list of prompts")
    token_ids = encode_for_model(
        model,
        tokenizer,
        prompts,
        **rendering.as_kwargs(),
        reserve=1,
    )
    budgets = new_token_budgets(token_ids, max_new_tokens, context_limit(model, tokenizer))
    pad, stop_ids = pad_id(tokenizer), stop_token_ids(model, tokenizer)
    for batch in iter_batches(token_ids, batch_size, pad, budgets):
        budget = budgets[int(batch.index[0])]
        new, inputs = _greedy_continuation(model, batch, budget, pad, stop_ids)
        yield ReferenceBatch(
            index=batch.index,
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            logprobs=_continuation_logprobs(model, inputs, new.shape[1]),
            valid=_continuation_mask(new, stop_ids),
        )


@runs_model
def continuation_logits(
    model: PreTrainedModel,
    ref: ReferenceBatch,
    intervention: Intervention | None = None,
    strength: float | None = None,
) -> torch.Tensor:
    """float32 logits [b, t, vocab] of `model` at the continuation positions of `ref` (the
    same inputs, teacher-forced; call under `torch.inference_mode`): the model as it is, or
    steered by `intervention` at `strength` for that one pass.

    The one pass holds prompt and continuation together, so the prompt width is given to the
    steering: an intervention bound to positions "prompt" or "generated" edits the columns it
    would edit while generating that continuation."""
    device = input_device(model)
    inputs = model_inputs(model, ref.input_ids.to(device), ref.attention_mask.to(device))
    n_new = ref.logprobs.shape[1]
    if intervention is None:
        return _continuation_logits(model, inputs, n_new)
    width = ref.input_ids.shape[1] - n_new  # the padded prompt
    with intervention.steer(model, strength, prompt_length=width):
        return _continuation_logits(model, inputs, n_new)


@runs_model
def steered_logprobs(
    model: PreTrainedModel,
    ref: ReferenceBatch,
    intervention: Intervention,
    strength: float | None,
) -> torch.Tensor:
    """float32 log-probabilities [b, t, vocab] of the steered model at the continuation
    positions of `ref` (see `continuation_logits`; call under `torch.inference_mode`)."""
    logits = continuation_logits(model, ref, intervention, strength)
    return torch.log_softmax(logits, dim=-1)


def _steered_kl(
    model: PreTrainedModel,
    ref: ReferenceBatch,
    intervention: Intervention,
    strength: float | None,
) -> torch.Tensor:
    """KL(P_unsteered || P_steered) [b, t] at each continuation position of `ref` (0 where
    not scored)."""
    return _kl(ref, steered_logprobs(model, ref, intervention, strength))


def _kl(ref: ReferenceBatch, steered: torch.Tensor) -> torch.Tensor:
    """KL(P_ref || P_steered) [b, t] from log-probabilities [b, t, vocab] (0 where not scored)."""
    reference = ref.logprobs.to(steered.device).float()
    # KL(p || q) = sum_v p_v (log p_v - log q_v); [b, t]
    kl = (reference.exp() * (reference - steered)).sum(-1).clamp(min=0.0)
    return kl * ref.valid.to(kl.device)


def _greedy_continuation(
    model: PreTrainedModel,
    batch: Batch,
    max_new_tokens: int,
    pad: int,
    stop_ids: Sequence[int],
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The unsteered model's greedy continuation of a left-padded batch: the new tokens
    [batch, t], and the forward inputs that teacher-force prompt + continuation [batch, s + t]
    (on the input device)."""
    full = greedy_batch(model, batch, max_new_tokens, pad, stop_ids=stop_ids)
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
    return torch.log_softmax(_continuation_logits(model, inputs, n_new), dim=-1)


def _continuation_logits(
    model: PreTrainedModel, inputs: dict[str, torch.Tensor], n_new: int
) -> torch.Tensor:
    """float32 logits [batch, n_new, vocab] that predicted each continuation token (see
    `_continuation_logprobs`)."""
    extra = {"logits_to_keep": n_new + 1} if forward_takes(model, "logits_to_keep") else {}
    logits = model_forward(model, **inputs, use_cache=False, **extra).logits
    return logits[:, -n_new - 1 : -1].float()


def _continuation_mask(new: torch.Tensor, stop_ids: Sequence[int]) -> torch.Tensor:
    """[batch, t] float mask: 1 up to and including each row's first stop token, 0 after it."""
    is_stop = torch.zeros_like(new, dtype=torch.bool)
    for token in stop_ids:
        is_stop |= new == token
    # a position is valid when no stop token came strictly before it
    stops_before = is_stop.long().cumsum(dim=1) - is_stop.long()
    return (stops_before == 0).float()
