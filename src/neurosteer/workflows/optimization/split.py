"""The prompt split: discovery prompts and disjoint held-out prompts.

The objectives are measured on prompts the circuit was not found on. Each set is de-duplicated
(a repeated prompt could otherwise sit on both sides), shuffled with a seed, and its first n
prompts are held out; the rest, in their given order, are for discovery.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass

from neurosteer.errors import InputError

logger = logging.getLogger(__name__)

MIN_DISCOVERY = 2
"""Prompts each set must keep for discovery (a variance needs two)."""


@dataclass(frozen=True)
class Split:
    """The four prompt sets of a search, disjoint per side.

    Attributes:
        positive, negative: the discovery prompts (the table's statistics).
        held_out_positive: the refusal objective's prompts.
        held_out_negative: the KL objective's prompts.
    """

    positive: tuple[str, ...]
    negative: tuple[str, ...]
    held_out_positive: tuple[str, ...]
    held_out_negative: tuple[str, ...]


def split_prompts(
    positive: Sequence[str],
    negative: Sequence[str],
    *,
    held_out_positive: int,
    held_out_negative: int,
    seed: int = 0,
) -> Split:
    """Hold out `held_out_positive` / `held_out_negative` prompts of each set, by a seeded draw.

    Raises:
        InputError: a set that is not a list of non-empty strings, or too few (distinct)
            prompts to hold out that many and keep `MIN_DISCOVERY` for discovery.

    Example:
        >>> split = split_prompts(harmful, benign, held_out_positive=16, held_out_negative=16)
        >>> len(split.held_out_positive)
        16
    """
    pos_discovery, pos_held = _split(positive, held_out_positive, seed, "positive")
    neg_discovery, neg_held = _split(negative, held_out_negative, seed + 1, "negative")
    return Split(pos_discovery, neg_discovery, pos_held, neg_held)


def _split(
    prompts: Sequence[str], n_held: int, seed: int, name: str
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    if isinstance(prompts, str) or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise InputError(f"the {name} prompts must be a list of non-empty strings")
    distinct = list(dict.fromkeys(prompts))
    if len(distinct) < len(prompts):
        logger.warning(
            "%d repeated %s prompts dropped before the split", len(prompts) - len(distinct), name
        )
    need = n_held + MIN_DISCOVERY
    if len(distinct) < need:
        option = "--held-out-positive" if name == "positive" else "--held-out-negative"
        raise InputError(
            f"too few {name} prompts to split: {len(distinct)} distinct given, {n_held} are held "
            f"out for the objectives and {MIN_DISCOVERY} must stay for discovery (need {need}); "
            f"give more prompts or lower {option}"
        )
    order = list(range(len(distinct)))
    random.Random(seed).shuffle(order)
    held = sorted(order[:n_held])
    held_set = set(held)
    return (
        tuple(p for i, p in enumerate(distinct) if i not in held_set),
        tuple(distinct[i] for i in held),
    )
