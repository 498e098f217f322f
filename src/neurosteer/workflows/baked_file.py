"""A baked file evaluated as users run it, beside the hooked model it was baked from.

The baked file is loaded as it is stored (transformers dequantizes a GGUF file's own quantized
values on load), so any error of the stored edit shows. On the same prompts, the hooked model
and the file give: refusal on harmful prompts (greedy answers, judged), KL from the unbaked
model on harmless ones (on the unbaked model's own continuations), and how often the file's
next token is the hooked model's (`neurosteer.evaluation.file_fidelity`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from neurosteer.errors import InputError
from neurosteer.evaluation.file_fidelity import Agreement, hook_agreement
from neurosteer.evaluation.judges import Judge
from neurosteer.evaluation.kl import kl_from_reference, kl_of_model, kl_reference
from neurosteer.evaluation.refusal import measure_refusal
from neurosteer.methods.circuit import Circuit, baked_neurons
from neurosteer.model.fingerprint import baked_record
from neurosteer.model.runtime import runs_model


@dataclass(frozen=True)
class Side:
    """One model's numbers: refusal (share of harmful prompts, None without a judge) and KL
    from the unbaked model (mean over harmless prompts of each one's mean KL, nats)."""

    refusal: float | None
    kl: float


@dataclass(frozen=True)
class BakedFileCheck:
    """The hooked model and the baked file, side by side.

    Attributes:
        multiplier: the multiplier the file records (and the hooks use).
        hooked, baked: each side's refusal and KL.
        agreement: the file's next-token logits against the hooked model's.
    """

    multiplier: float
    hooked: Side
    baked: Side
    agreement: Agreement


def baked_multiplier(path: Path, circuit: Circuit) -> float:
    """The multiplier a baked file (GGUF or folder) records for `circuit`.

    Raises:
        InputError: the file records no bake, or one of other neurons than the circuit's.
    """
    record = baked_record(path)
    if record is None:
        raise InputError(f"'{path}' records no baked circuit; give a file written by bake")
    mine = set(zip(circuit.layers.tolist(), circuit.neurons.tolist(), strict=True))
    if baked_neurons(record) != mine:
        raise InputError(
            f"'{path}' was baked with other neurons than this circuit's; give the circuit it "
            "was baked with"
        )
    multiplier = record.get("multiplier", record.get("strength"))
    if not isinstance(multiplier, (int, float)):
        raise InputError(f"'{path}' records no multiplier; bake it again with this version")
    return float(multiplier)


@runs_model
def check_baked_file(
    model: PreTrainedModel,
    file_model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    circuit: Circuit,
    multiplier: float,
    *,
    harmful: Sequence[str],
    harmless: Sequence[str],
    judge: Judge | None,
    max_new_tokens: int,
    kl_tokens: int,
    batch_size: int,
    template: dict[str, Any],
) -> BakedFileCheck:
    """Evaluate `file_model` (the baked file, loaded) beside `model` hooked with `circuit`.

    Args:
        model: the unbaked model (nothing active on it).
        file_model: the baked file, loaded as stored.
        tokenizer: the tokenizer of both.
        circuit, multiplier: what the file was baked with (`baked_multiplier`).
        harmful: prompts for refusal (answers of `max_new_tokens`, judged by `judge`; skipped
            when `judge` is None) and for the logit comparison.
        harmless: prompts for KL (continuations of `kl_tokens`) and the logit comparison.
        batch_size: prompts per forward pass.
        template: chat_template, system and template_vars, as in `generate`.

    Raises:
        InputError: empty prompt sets, prompts too long, models with other vocabularies.
    """
    reference = kl_reference(
        model, tokenizer, harmless, max_new_tokens=kl_tokens, batch_size=batch_size, **template
    )
    hooked_kl = kl_from_reference(model, reference, intervention=circuit, strength=multiplier)
    baked_kl = kl_of_model(file_model, reference)
    refusals: list[float | None] = [None, None]
    if judge is not None:
        answering = {"max_new_tokens": max_new_tokens, "batch_size": batch_size, **template}
        refusals = _refusals(
            (model, file_model), tokenizer, circuit, multiplier, harmful, judge, answering
        )
    agreement = hook_agreement(
        model,
        file_model,
        tokenizer,
        [*harmful, *harmless],
        intervention=circuit,
        strength=multiplier,
        max_new_tokens=kl_tokens,
        batch_size=batch_size,
        **template,
    )
    return BakedFileCheck(
        multiplier=multiplier,
        hooked=Side(refusals[0], hooked_kl.mean),
        baked=Side(refusals[1], baked_kl.mean),
        agreement=agreement,
    )


def _refusals(
    models: tuple[PreTrainedModel, PreTrainedModel],
    tokenizer: PreTrainedTokenizerBase,
    circuit: Circuit,
    multiplier: float,
    harmful: Sequence[str],
    judge: Judge,
    answering: dict[str, Any],
) -> list[float | None]:
    """The refusal rates on `harmful` of the model hooked with `circuit` and of the file
    (`models`: the unbaked model, the file's), with `measure_refusal`'s keywords `answering`."""
    model, file_model = models
    return [
        measure_refusal(
            subject,
            tokenizer,
            harmful,
            judge,
            intervention=steering,
            strength=multiplier,
            **answering,
        ).refusal
        for subject, steering in ((model, circuit), (file_model, None))
    ]
