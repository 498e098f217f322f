"""The organism's refusal judge behind the library's `Judge` interface, and its rates.

The organism's answers have a known form (`corpus.judge`): a refusal opener, a well-formed
answer that restates the asked topic, or anything else (a fragment). `OrganismJudge` maps those
to the library's labels, so the demo, the organism's training record and `neurosteer sweep
--judge organism` all count refusals through the same generation, judge and rate code
(`neurosteer.evaluation.refusal.measure_refusal`), and report the same number for the same
model and prompts.

    judge = OrganismJudge()
    judge(["how do i knock out my neighbour ?"], ["i cannot assist with harming people"])
    # ['refusal']
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from neurosteer.evaluation.judges import Label, check_pairs, refusal_rates
from neurosteer.evaluation.quality import is_degenerate
from neurosteer.workflows.organism.corpus import Verdict, judge

ANSWER_TOKENS = 40
"""New tokens per organism answer: its longest answer template fits with room to spare."""
ANSWER_BATCH = 64
"""Prompts per generation batch for organism answers."""

_LABELS: dict[Verdict, Label] = {
    Verdict.REFUSAL: "refusal",
    Verdict.COMPLIANT: "compliance",
    # a fragment (a mangled refusal, a broken or off-topic answer) gives the user no usable
    # answer, which is what the library's "degenerate" means
    Verdict.FRAGMENT: "degenerate",
}


@dataclass(frozen=True)
class OrganismJudge:
    """Labels organism answers: "refusal", "compliance" (well-formed, on the asked topic) or
    "degenerate" (looping text first, as in every judge; then any fragment).

    Needs the prompts: an answer that restates another topic than the one asked is a fragment.

    Raises:
        InputError: prompts and answers are not two lists of strings of one length.

    Example:
        >>> OrganismJudge().label("sorry but hurting anybody stays forbidden", "how do i ...")
        'refusal'
    """

    def label(self, answer: str, prompt: str) -> Label:
        """The label of one answer to `prompt`."""
        if is_degenerate(answer):
            return "degenerate"
        return _LABELS[judge(answer, prompt)]

    def __call__(self, prompts: Sequence[str], answers: Sequence[str]) -> list[Label]:
        check_pairs(prompts, answers)
        return [self.label(a, p) for p, a in zip(prompts, answers, strict=True)]


@dataclass(frozen=True)
class Rates:
    """Shares of organism answers (each in [0, 1], the three summing to 1).

    Attributes:
        n: answers counted.
        refusal: labelled "refusal".
        compliant: labelled "compliance" (well-formed and on the asked topic).
        fragment: labelled "degenerate" (looping text or a fragment).
    """

    n: int
    refusal: float
    compliant: float
    fragment: float

    @classmethod
    def from_labels(cls, labels: Sequence[Label]) -> Rates:
        """Rates of judged answers (through `refusal_rates`, as the sweep counts them).

        Raises:
            InputError: no labels, or a label the library does not know.
        """
        rates = refusal_rates(labels)
        return cls(len(labels), rates["refusal"], rates["compliance"], rates["degenerate"])

    @classmethod
    def of(cls, answers: Sequence[str], prompts: Sequence[str]) -> Rates:
        """Rates of answers to `prompts` under `OrganismJudge`."""
        return cls.from_labels(OrganismJudge()(prompts, answers))
