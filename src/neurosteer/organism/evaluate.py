"""Greedy generation and refusal / compliance rates for the organism, without the core API.

Training records held-out metrics next to the weights; this module keeps that step independent
of the CNA machinery (it only needs a model and the organism tokenizer).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from neurosteer.organism.corpus import Verdict, judge


@dataclass(frozen=True)
class Rates:
    """Shares of answers judged refusal, well-formed compliant and fragment (each in [0, 1])."""

    n: int
    refusal: float
    compliant: float
    fragment: float

    @classmethod
    def of(cls, answers: Sequence[str], prompts: Sequence[str]) -> Rates:
        verdicts = [judge(a, p) for a, p in zip(answers, prompts, strict=True)]
        n = max(len(verdicts), 1)
        return cls(
            n=len(verdicts),
            refusal=sum(v is Verdict.REFUSAL for v in verdicts) / n,
            compliant=sum(v is Verdict.COMPLIANT for v in verdicts) / n,
            fragment=sum(v is Verdict.FRAGMENT for v in verdicts) / n,
        )


def render(tokenizer: PreTrainedTokenizerBase, prompt: str) -> str:
    """One user turn rendered with the chat template, ending in the assistant header."""
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    return str(text)


@torch.no_grad()
def greedy_answers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 40,
    batch_size: int = 64,
) -> list[str]:
    """Greedy completions (text after the assistant header) for chat-rendered prompts."""
    tokenizer.padding_side = "left"
    answers: list[str] = []
    for start in range(0, len(prompts), batch_size):
        chunk = [render(tokenizer, p) for p in prompts[start : start + batch_size]]
        batch = tokenizer(chunk, add_special_tokens=False, padding=True, return_tensors="pt")
        out = model.generate(  # type: ignore[operator]
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        new = out[:, batch["input_ids"].shape[1] :]
        answers += tokenizer.batch_decode(new, skip_special_tokens=True)
    return [a.strip() for a in answers]
