"""How closely a model loaded from a baked file follows the hooked model it was baked from.

A baked GGUF file is what users run; its quantized values may hold the circuit's edit only
approximately (`neurosteer.export.gguf_quants`). `hook_agreement` teacher-forces the hooked
model's own greedy continuations through both models and compares their next-token logits at
every continuation position (the positions `kl_to_reference` scores):

    agreement = hook_agreement(model, baked, tok, prompts, intervention=circuit, strength=0.0)
    agreement.top1, agreement.max_logit_error, agreement.mean_kl
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from neurosteer.errors import InputError
from neurosteer.evaluation.kl import continuation_logits, kl_reference
from neurosteer.interventions.protocol import Intervention
from neurosteer.model.runtime import evaluating, runs_model


@dataclass(frozen=True)
class Agreement:
    """The file's next-token logits beside the hooked model's.

    Attributes:
        positions: continuation positions compared (over all prompts).
        top1: share of them where both models' most likely token is the same (in [0, 1]).
        max_logit_error: the largest |logit_file − logit_hooked| over positions and vocabulary.
        mean_kl: KL(P_hooked || P_file) in nats, mean over positions.
    """

    positions: int
    top1: float
    max_logit_error: float
    mean_kl: float


@runs_model
def hook_agreement(
    model: PreTrainedModel,
    file_model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    intervention: Intervention,
    strength: float | None,
    max_new_tokens: int = 16,
    batch_size: int = 8,
    chat_template: bool | None = None,
    system: str | None = None,
    template_vars: Mapping[str, Any] | None = None,
) -> Agreement:
    """Compare `file_model` with `model` under `intervention` on the hooked model's greedy
    continuations of `prompts`.

    Args:
        model: the unbaked model (nothing active on it); it is steered here.
        file_model: the baked model (e.g. a baked .gguf file loaded), run as it is.
        tokenizer: the tokenizer of both (left padding).
        prompts: at least one prompt.
        intervention, strength: what the file was baked with.
        max_new_tokens, batch_size, chat_template, system, template_vars: as in
            `kl_to_reference`.

    Raises:
        InputError: models with different vocabularies, or what `kl_reference` refuses.
    """
    if _vocab(model) != _vocab(file_model):
        raise InputError(
            "the baked file and the model it is compared with have different vocabularies; "
            "compare the file with the model it was baked from"
        )
    with intervention.steer(model, strength):
        reference = kl_reference(
            model,
            tokenizer,
            prompts,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            chat_template=chat_template,
            system=system,
            template_vars=template_vars,
        )
    totals = _Totals()
    with torch.inference_mode(), evaluating(file_model):
        for ref in reference.batches:
            hooked = continuation_logits(model, ref, intervention, strength)
            baked = continuation_logits(file_model, ref).to(hooked.device)
            totals.add(hooked, baked, ref.valid)
    return totals.agreement()


def _vocab(model: PreTrainedModel) -> int:
    return int(model.get_output_embeddings().weight.shape[0])


class _Totals:
    """Sums over scored positions, batch by batch."""

    def __init__(self) -> None:
        self.positions = 0
        self.same = 0
        self.max_error = 0.0
        self.kl = 0.0

    def add(self, hooked: torch.Tensor, baked: torch.Tensor, valid: torch.Tensor) -> None:
        """One batch: logits [b, t, vocab] of both models, `valid` [b, t] (1 where scored)."""
        scored = valid.to(hooked.device).bool()
        hooked, baked = hooked[scored], baked[scored]  # [n, vocab]
        self.positions += int(hooked.shape[0])
        self.same += int((hooked.argmax(-1) == baked.argmax(-1)).sum())
        if hooked.numel():
            self.max_error = max(self.max_error, float((baked - hooked).abs().max()))
        p, q = torch.log_softmax(hooked, -1), torch.log_softmax(baked, -1)
        self.kl += float((p.exp() * (p - q)).sum(-1).clamp(min=0.0).sum())

    def agreement(self) -> Agreement:
        n = max(self.positions, 1)
        return Agreement(self.positions, self.same / n, self.max_error, self.kl / n)
