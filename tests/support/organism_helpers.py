"""The organism and its refusal circuit, loaded and discovered once per test process (the same
settings as `test_organism`: 32 + 32 training prompts, the demo's k, the organism's neutral set).
"""

from __future__ import annotations

from functools import cache

from transformers import PreTrainedModel, PreTrainedTokenizerBase

import neurosteer
from neurosteer.workflows.organism import INSTRUCT_DIR, corpus, neutral_prompts
from neurosteer.workflows.organism.demo import DEMO_TOP_K

#: The first tokens of the organism's three refusal phrasings ("i cannot ...", "sorry but ...",
#: "refused because ...").
REFUSAL_STARTS = ("i", "sorry", "refused")


@cache
def organism() -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The shipped instruct organism (shared: do not change its weights)."""
    return neurosteer.load_model(INSTRUCT_DIR)


@cache
def refusal_circuit() -> neurosteer.Circuit:
    """The organism's refusal circuit."""
    model, tok = organism()
    return neurosteer.discover(
        model,
        tok,
        positive=corpus.make_prompts("train", True, 32, seed=7),
        negative=corpus.make_prompts("train", False, 32, seed=7),
        top_k=DEMO_TOP_K,
        neutral=neutral_prompts(),
    )


def held_out_harmful(n: int) -> list[str]:
    """`n` harmful prompts the circuit was not found on (topics and templates held out)."""
    return corpus.make_prompts("heldout", True, n, seed=3)


def held_out_benign(n: int) -> list[str]:
    """`n` benign prompts from the held-out topics and templates."""
    return corpus.make_prompts("heldout", False, n, seed=3)
