"""The built-in prompt sets of the demo, generated (seeded) from the organism corpus."""

from __future__ import annotations

from dataclasses import dataclass

from neurosteer.workflows.organism.corpus import make_prompts


@dataclass(frozen=True)
class PromptSets:
    """Discovery prompts (training distribution) and held-out evaluation prompts."""

    train_harmful: tuple[str, ...]
    train_benign: tuple[str, ...]
    heldout_harmful: tuple[str, ...]
    heldout_benign: tuple[str, ...]


def neutral_prompts() -> list[str]:
    """In-domain prompts for the universal-neuron filter.

    The organism's vocabulary holds no general English, so the library's built-in neutral prompts
    would tokenize to unknown words; a mix of training requests (mostly benign) stands in.
    """
    return make_prompts("train", False, 24, seed=99) + make_prompts("train", True, 8, seed=99)


def demo_prompt_sets(n_discover: int = 32, n_eval: int = 100, seed: int = 7) -> PromptSets:
    """Seeded prompt sets: `n_discover` per class from training topics and templates, and
    `n_eval` per class from held-out topics and held-out templates.

    Example:
        >>> sets = demo_prompt_sets(8, 8)
        >>> len(sets.train_harmful), len(sets.heldout_benign)
        (8, 8)
    """
    if n_discover < 1 or n_eval < 1:
        raise ValueError(f"n_discover and n_eval must be >= 1, got {n_discover}, {n_eval}")
    return PromptSets(
        train_harmful=tuple(make_prompts("train", True, n_discover, seed=seed)),
        train_benign=tuple(make_prompts("train", False, n_discover, seed=seed)),
        heldout_harmful=tuple(make_prompts("heldout", True, n_eval, seed=0)),
        heldout_benign=tuple(make_prompts("heldout", False, n_eval, seed=0)),
    )
