"""Shared pieces of the `neurosteer optimize` tests: the organism, its prompts, a quick config.

The organism (the project's tiny refusing model) answers in ~0.1 s per batch, so a search of a
dozen trials takes seconds; its answers need up to 40 tokens (`ANSWER_TOKENS`) to be judged
well-formed, so the quick config keeps that length.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from functools import cache
from typing import Any

import pytest
import torch
from transformers import PreTrainedModel

import neurosteer
from neurosteer.workflows.optimization import OptimizeConfig, TrialResult
from neurosteer.workflows.organism import INSTRUCT_DIR, corpus, neutral_prompts
from neurosteer.workflows.organism.evaluate import ANSWER_TOKENS

#: held-out prompts per side in the quick searches
HELD_OUT = 16


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread while these modules run: on a busy shared machine two threads that
    wait on each other made a 12-trial organism search 60x slower (0.2 s vs 12 s a trial)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@cache
def organism() -> tuple[PreTrainedModel, Any]:
    return neurosteer.load_model(INSTRUCT_DIR)


@cache
def prompts() -> tuple[list[str], list[str]]:
    """(harmful, benign): 40 training-distribution prompts each (16 are held out per search)."""
    return (
        corpus.make_prompts("train", True, 40, seed=7),
        corpus.make_prompts("train", False, 40, seed=7),
    )


def neutral() -> list[str]:
    return neutral_prompts()


def quick(**overrides: Any) -> OptimizeConfig:
    """A small organism search: the organism judge, 40 answer tokens, no baselines."""
    base = OptimizeConfig(
        trials=8,
        held_out_positive=HELD_OUT,
        held_out_negative=HELD_OUT,
        judge="organism",
        max_new_tokens=ANSWER_TOKENS,
        batch_size=32,
        startup_trials=4,
        baselines=False,
    )
    return replace(base, **overrides)


def trial_result(
    number: int, refusal: float | None, kl: float, degenerate: float = 0.0
) -> TrialResult:
    return TrialResult(
        number=number,
        state="complete" if refusal is not None else "pruned",
        k=10,
        k_asked=10,
        multiplier=0.0,
        sign="both",
        score="diff",
        first_layer=2,
        first_layer_share=0.4,
        refusal=refusal,
        degenerate=None if refusal is None else degenerate,
        compliance=None if refusal is None else 1 - refusal - degenerate,
        kl=kl,
        kl_first_token=kl,
        kl_mean=None,
        refusal_mass=None,
        seconds=0.1,
    )
