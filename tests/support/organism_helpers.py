"""The organisms (the dense one and its MoE twin) and their refusal circuits, loaded and
discovered once per test process (32 + 32 training prompts, the demo's k, the organism's neutral
set), and the held-out prompts they are measured on.
"""

from __future__ import annotations

from functools import cache

from transformers import PreTrainedModel, PreTrainedTokenizerBase

import neurosteer
from neurosteer.workflows.organism import INSTRUCT_DIR, MOE_INSTRUCT_DIR, corpus, neutral_prompts
from neurosteer.workflows.organism.demo import DEMO_TOP_K, MOE_DEMO_TOP_K

#: The first tokens of the organism's three refusal phrasings ("i cannot ...", "sorry but ...",
#: "refused because ...").
REFUSAL_STARTS = ("i", "sorry", "refused")


@cache
def organism() -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The shipped instruct organism (shared: do not change its weights)."""
    return neurosteer.load_model(INSTRUCT_DIR)


@cache
def moe_organism() -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The shipped MoE twin (shared: do not change its weights)."""
    return neurosteer.load_model(MOE_INSTRUCT_DIR)


def discover_refusal_circuit(
    model: PreTrainedModel, tok: PreTrainedTokenizerBase, top_k: int
) -> neurosteer.Circuit:
    """An organism's refusal circuit of `top_k` neurons, found on 32 + 32 training prompts."""
    return neurosteer.discover(
        model,
        tok,
        positive=corpus.make_prompts("train", True, 32, seed=7),
        negative=corpus.make_prompts("train", False, 32, seed=7),
        top_k=top_k,
        neutral=neutral_prompts(),
    )


@cache
def refusal_circuit() -> neurosteer.Circuit:
    """The organism's refusal circuit (the demo's k)."""
    return discover_refusal_circuit(*organism(), DEMO_TOP_K)


@cache
def moe_refusal_circuit() -> neurosteer.Circuit:
    """The MoE twin's per-expert refusal circuit (the MoE demo's k)."""
    return discover_refusal_circuit(*moe_organism(), MOE_DEMO_TOP_K)


def held_out_harmful(n: int) -> list[str]:
    """`n` harmful prompts the circuit was not found on (topics and templates held out)."""
    return corpus.make_prompts("heldout", True, n, seed=3)


def held_out_benign(n: int) -> list[str]:
    """`n` benign prompts from the held-out topics and templates."""
    return corpus.make_prompts("heldout", False, n, seed=3)
