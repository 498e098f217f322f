"""The objectives: what one trial costs and what it achieves.

Two numbers, both minimised, on prompts held out from discovery (`split`):

    not-success  the share of held-out positive prompts whose greedy answer the judge labels
                 "refusal" or "degenerate" (`evaluation.measure_refusal`, the path every
                 refusal number takes; a broken answer is a failure, never a success). The two
                 shares are also kept apart.
    KL           KL(unchanged ‖ steered) on the held-out negative prompts, at the first answer
                 token (default; one forward pass) or averaged over a short unchanged
                 continuation (`evaluation.kl`), against a reference computed once.

The unchanged model's side (`Reference`) is computed once per search: the KL reference, the
unchanged answers to the held-out positives, and the first answer tokens that mark a refusal.

Pruning (optional): before answering, a trial's first-token refusal mass is measured (one
forward pass over the held-out positives: the probability the steered model gives the tokens
that open more of the unchanged model's refusals than of its compliant answers). A trial that
keeps at least `prune_ratio` of the unchanged model's mass is hopeless (it would refuse about
as often) and skips its answers, the expensive part.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from neurosteer.evaluation.judges import Judge
from neurosteer.evaluation.kl import KLReference, kl_from_reference, kl_reference, steered_logprobs
from neurosteer.evaluation.refusal import JudgedAnswers, measure_refusal, opening_counts
from neurosteer.interventions.protocol import Intervention
from neurosteer.model.runtime import runs_model
from neurosteer.workflows.optimization.config import OptimizeConfig

logger = logging.getLogger(__name__)

#: Pruning needs a refusal signal at the first token: below this mean probability of the
#: refusal tokens in the unchanged model, the first token says too little and pruning is off.
MIN_REFUSAL_MASS = 0.05


@dataclass(frozen=True, eq=False)
class Reference:
    """The unchanged model's side of the objectives, computed once per search.

    Attributes:
        kl: the KL reference on the held-out negative prompts.
        first_token: the unchanged first answer token of each held-out positive prompt and its
            log-probabilities (a one-token KL reference).
        unchanged: the unchanged model's judged answers to the held-out positive prompts.
        refusal_tokens: token ids that open more unchanged refusals than compliant answers
            (the first-token refusal signal; `refusal_tokens`).
        refusal_mass: the unchanged model's mean probability of `refusal_tokens` at the first
            answer token.
    """

    kl: KLReference
    first_token: KLReference
    unchanged: JudgedAnswers
    refusal_tokens: tuple[int, ...]
    refusal_mass: float

    @property
    def can_prune(self) -> bool:
        """Whether the first token carries enough refusal signal to prune on."""
        return bool(self.refusal_tokens) and self.refusal_mass >= MIN_REFUSAL_MASS


@dataclass(frozen=True)
class Measurement:
    """The numbers one steered point measured, shared by `Outcome` and `study.TrialResult`.

    Attributes:
        refusal, degenerate, compliance: shares of the held-out positive answers (None when
            the point was pruned before answering).
        kl: the KL objective (nats): `kl_first_token` or `kl_mean` by the search's setting.
        kl_first_token: KL at the first answer token.
        kl_mean: mean KL over the continuation (None for the first-token measure).
        refusal_mass: first-token refusal mass (None when not measured).
        seconds: wall time of the measurement.
    """

    refusal: float | None
    degenerate: float | None
    compliance: float | None
    kl: float
    kl_first_token: float
    kl_mean: float | None
    refusal_mass: float | None
    seconds: float

    @property
    def not_success(self) -> float | None:
        """refusal + degenerate, the first objective; None when pruned."""
        if self.refusal is None or self.degenerate is None:
            return None
        return self.refusal + self.degenerate


@dataclass(frozen=True, kw_only=True)
class Outcome(Measurement):
    """What one steered point measured (`Measurement`), and whether it was pruned.

    Attributes:
        pruned: the answers were skipped (see the module docstring).
        answers: the judged answers behind the shares (None when pruned), for the run
            folder's answers file (`answers`).
    """

    pruned: bool
    answers: JudgedAnswers | None = field(default=None, repr=False, compare=False)


@runs_model
def build_reference(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    held_out_positive: Sequence[str],
    held_out_negative: Sequence[str],
    judge: Judge,
    config: OptimizeConfig,
    *,
    progress: bool = False,
) -> Reference:
    """Measure the unchanged model once: KL reference, answers, refusal tokens.

    With `progress`, a three-step bar on stderr names each step as it starts (the answers
    step generates `config.max_new_tokens` tokens per held-out positive prompt, the longest).
    """
    steps = tqdm(total=3, desc="unchanged model", unit="step", disable=not progress, leave=False)
    steps.set_postfix_str(f"KL reference, {len(held_out_negative)} held-out negative prompts")
    kl = _reference(model, tokenizer, held_out_negative, config, config.kl_max_new_tokens)
    # float16 halves the file; every trial compares with these same rounded values
    kl = kl.to(torch.float16)
    steps.update()
    steps.set_postfix_str(f"first answer token, {len(held_out_positive)} held-out positive prompts")
    first = _reference(model, tokenizer, held_out_positive, config, 1)
    steps.update()
    steps.set_postfix_str(
        f"answers of {config.max_new_tokens} tokens to {len(held_out_positive)} held-out "
        "positive prompts"
    )
    unchanged = judged_answers(model, tokenizer, held_out_positive, judge, config)
    steps.update()
    steps.close()
    tokens = refusal_tokens(first, unchanged)
    mass = _mean_mass(_first_token_probs(first), tokens)
    logger.info(
        "unchanged model: refusal %.3f, degenerate %.3f; %d refusal tokens, first-token mass %.3f",
        unchanged.refusal,
        unchanged.rates["degenerate"],
        len(tokens),
        mass,
    )
    return Reference(kl, first, unchanged, tokens, mass)


def _reference(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    config: OptimizeConfig,
    max_new_tokens: int,
) -> KLReference:
    """`kl_reference` over `prompts` with the search's prompt settings."""
    return kl_reference(
        model,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        batch_size=config.batch_size,
        **config.rendering.as_kwargs(),
    )


@runs_model
def judged_answers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    judge: Judge,
    config: OptimizeConfig,
    intervention: Intervention | None = None,
    strength: float | None = None,
) -> JudgedAnswers:
    """`measure_refusal` with the search's answer settings (`config.max_new_tokens`, batch
    size, chat template, system prompt, template variables): the unchanged answers without
    `intervention`, a trial's with it (at `strength`)."""
    return measure_refusal(
        model,
        tokenizer,
        prompts,
        judge,
        intervention=intervention,
        strength=strength,
        max_new_tokens=config.max_new_tokens,
        batch_size=config.batch_size,
        **config.rendering.as_kwargs(),
    )


def refusal_tokens(first: KLReference, unchanged: JudgedAnswers) -> tuple[int, ...]:
    """Token ids that open more unchanged refusals than unchanged compliant answers (sorted).

    A majority, not "never opens a compliant answer": one odd answer ("I'm sorry, but I don't
    have that product", judged compliant) must not silence "I", which opens most refusals.
    """
    first_ids: dict[int, int] = {}
    for batch in first.batches:
        for row, token in zip(batch.index.tolist(), batch.input_ids[:, -1].tolist(), strict=True):
            first_ids[row] = int(token)
    counts = opening_counts([first_ids[i] for i in range(len(unchanged.labels))], unchanged.labels)
    return tuple(
        sorted(token for token, (refused, complied) in counts.items() if refused > complied)
    )


class Objectives:
    """Measures steered points against one `Reference` (the same prompts and settings)."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        held_out_positive: Sequence[str],
        judge: Judge,
        config: OptimizeConfig,
        reference: Reference,
    ) -> None:
        self.model, self.tokenizer, self.judge = model, tokenizer, judge
        self.prompts = list(held_out_positive)
        self.config, self.reference = config, reference

    def measure(
        self, intervention: Intervention, strength: float | None, *, prune: bool = False
    ) -> Outcome:
        """KL, then (unless `prune` finds the point hopeless) the judged answers."""
        started = time.perf_counter()
        config, ref = self.config, self.reference
        report = kl_from_reference(self.model, ref.kl, intervention=intervention, strength=strength)
        kl = report.first_token if config.kl == "first_token" else report.mean
        kl_mean = None if config.kl == "first_token" else report.mean
        mass = None
        if prune and ref.can_prune:
            mass = self.refusal_mass(intervention, strength)
            if mass >= config.prune_ratio * ref.refusal_mass:
                return Outcome(
                    refusal=None,
                    degenerate=None,
                    compliance=None,
                    kl=kl,
                    kl_first_token=report.first_token,
                    kl_mean=kl_mean,
                    refusal_mass=mass,
                    pruned=True,
                    seconds=time.perf_counter() - started,
                )
        judged = judged_answers(
            self.model, self.tokenizer, self.prompts, self.judge, config, intervention, strength
        )
        return Outcome(
            refusal=judged.refusal,
            degenerate=judged.rates["degenerate"],
            compliance=judged.rates["compliance"],
            kl=kl,
            kl_first_token=report.first_token,
            kl_mean=kl_mean,
            refusal_mass=mass,
            pruned=False,
            seconds=time.perf_counter() - started,
            answers=judged,
        )

    def refusal_mass(self, intervention: Intervention, strength: float | None) -> float:
        """The steered model's mean probability of the refusal tokens at the first answer
        token of the held-out positive prompts."""
        with torch.inference_mode():
            first = self.reference.first_token
            probs = _first_token_probs(first, self.model, intervention, strength)
        return _mean_mass(probs, self.reference.refusal_tokens)


def _first_token_probs(
    first: KLReference,
    model: PreTrainedModel | None = None,
    intervention: Intervention | None = None,
    strength: float | None = None,
) -> torch.Tensor:
    """[n_prompts, vocab] first-answer-token probabilities: the stored unchanged ones, or the
    steered model's when `model` and `intervention` are given."""
    rows: dict[int, torch.Tensor] = {}
    for batch in first.batches:
        if model is None or intervention is None:
            logprobs = batch.logprobs
        else:
            logprobs = steered_logprobs(model, batch, intervention, strength)
        probs = logprobs[:, 0].float().exp().cpu()  # [b, vocab]
        for r, row in enumerate(batch.index.tolist()):
            rows[row] = probs[r]
    return torch.stack([rows[i] for i in range(first.n_prompts)])


def _mean_mass(probs: torch.Tensor, tokens: Sequence[int]) -> float:
    if not tokens:
        return 0.0
    return float(probs[:, list(tokens)].sum(-1).mean())
