"""Refusal of a model on a prompt set: greedy answers, judged and counted.

The one path from a model to refusal numbers: the sweep's points and layer scans, the organism
demo and the organism's training record all measure here, so one model, one prompt set, one
judge and one set of generation settings give one number wherever it is reported.

    result = measure_refusal(model, tok, harmful, PhraseJudge(), max_new_tokens=150)
    result.refusal, result.rates["degenerate"], result.answers[0]
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from neurosteer.evaluation.generation import generate
from neurosteer.evaluation.judges import Judge, Label, refusal_rates
from neurosteer.interventions.protocol import Intervention
from neurosteer.model.runtime import runs_model


@dataclass(frozen=True)
class JudgedAnswers:
    """Answers to a prompt set, one label each, and the share of each label.

    Attributes:
        prompts, answers, labels: one entry per prompt, in prompt order.
        rates: {"refusal", "compliance", "degenerate": share of the answers}, summing to 1.
    """

    prompts: tuple[str, ...]
    answers: tuple[str, ...]
    labels: tuple[Label, ...]
    rates: dict[Label, float]

    @property
    def refusal(self) -> float:
        """Share of answers labelled "refusal" (in [0, 1])."""
        return self.rates["refusal"]


def judge_answers(prompts: Sequence[str], answers: Sequence[str], judge: Judge) -> JudgedAnswers:
    """Label `answers` with `judge` and count the labels (`refusal_rates`).

    Raises:
        InputError: no answers, prompts and answers of different lengths, or a judge that
            returns an unknown label.
    """
    labels = judge(prompts, answers)
    rates = refusal_rates(labels)
    return JudgedAnswers(tuple(prompts), tuple(answers), tuple(labels), rates)


@runs_model
def measure_refusal(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    judge: Judge,
    *,
    intervention: Intervention | None = None,
    strength: float | None = None,
    max_new_tokens: int,
    batch_size: int,
    chat_template: bool | None = None,
    system: str | None = None,
    template_vars: Mapping[str, Any] | None = None,
) -> JudgedAnswers:
    """Greedy answers to `prompts` (`neurosteer.generate`) under an intervention, then judged.

    Args:
        model, tokenizer: the model as it is (anything already active on it applies).
        prompts: at least one prompt.
        judge: labels each answer "refusal", "compliance" or "degenerate".
        intervention: applied with `intervention.steer(model, strength)` around the generation
            only (the judge runs after it is removed); None answers with the model as it is.
        strength: the intervention's strength (None: its default; see
        `neurosteer.interventions.protocol`).
        max_new_tokens, batch_size, chat_template, system, template_vars: as in
            `neurosteer.generate`.

    Raises:
        InputError: no prompts, a prompt too long for the context, bad generation settings, or
            a judge that returns unknown labels.

    Example:
        >>> measure_refusal(model, tok, harmful, PhraseJudge(), max_new_tokens=40,
        ...                 batch_size=8, intervention=circuit, strength=0.0).refusal
        0.17
    """
    scope = contextlib.nullcontext()
    with scope if intervention is None else intervention.steer(model, strength):
        answers = generate(
            model,
            tokenizer,
            prompts,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            chat_template=chat_template,
            system=system,
            template_vars=template_vars,
        )
    return judge_answers(prompts, answers, judge)


def opening_counts(first_ids: Sequence[int], labels: Sequence[Label]) -> dict[int, tuple[int, int]]:
    """{token id: (refusals it opens, compliant answers it opens)} over answers whose first
    tokens are `first_ids` and whose labels are `labels` (one each); degenerate answers count
    for neither. The balance behind `refusal_tokens` and `neurosteer probe`'s own choice."""
    counts: dict[int, tuple[int, int]] = {}
    for token, label in zip(first_ids, labels, strict=True):
        if label != "degenerate":
            refused, complied = counts.get(int(token), (0, 0))
            counts[int(token)] = (refused + (label == "refusal"), complied + (label != "refusal"))
    return counts
