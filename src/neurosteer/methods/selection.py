"""Score neurons, filter candidates, select the circuit.

Pure tensor functions over [n_layers, d_mlp] tables: no model, no hooks. The score is the
plain difference of means (method.md §1.4), or, as an option, that difference over the pooled
standard deviation of the two sets (`neuron_scores`); selection is one global top-k by |score|
over the candidate layers, with ties broken by (layer, neuron) order so that equal inputs
always give the same circuit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from neurosteer.errors import InputError

UNIVERSAL_THRESHOLD = 0.8
"""A neuron in the top 0.1% on at least this share of neutral prompts is "universal" (§1.6)."""


def neurons_for_fraction(fraction: float, n_neurons: int) -> int:
    """k for a fraction of all MLP neurons: round(fraction * n), halves up, at least 1.

    Example:
        >>> neurons_for_fraction(0.001, 16 * 8192)   # Llama-3.2-1B
        131
    """
    if not 0.0 < fraction <= 1.0:
        raise InputError(f"fraction must be in (0, 1], got {fraction}")
    return max(1, math.floor(fraction * n_neurons + 0.5))


def difference_of_means(positive_mean: torch.Tensor, negative_mean: torch.Tensor) -> torch.Tensor:
    """δ [n_layers, d_mlp] = mean over positives − mean over negatives."""
    return positive_mean.float() - negative_mean.float()


SCORES = ("diff", "standardized")
"""Neuron scores `neuron_scores` knows: δ itself, and δ over the pooled standard deviation."""

#: The standardized score divides by max(pooled std, this share of the median pooled std), so
#: a neuron that is nearly constant on both sets cannot win on rounding noise alone.
STD_FLOOR_SHARE = 0.01


def neuron_scores(
    positive_mean: torch.Tensor,
    negative_mean: torch.Tensor,
    positive_var: torch.Tensor,
    negative_var: torch.Tensor,
    *,
    kind: str = "diff",
    counts: tuple[int, int] | None = None,
) -> torch.Tensor:
    """[n_layers, d_mlp] float32 scores whose sign is δ's and whose size ranks neurons.

    Args:
        positive_mean, negative_mean, positive_var, negative_var: [n_layers, d_mlp] statistics
            of the two sets (sample variances, as recorded).
        kind: "diff": δ = mean(positive) − mean(negative). "standardized": δ / s, where s is
            the pooled standard deviation, sqrt(((n₊ − 1) var₊ + (n₋ − 1) var₋) / (n₊ + n₋ − 2))
            (the plain mean of the variances without `counts`), floored at
            `STD_FLOOR_SHARE` of its median: a neuron that moves little between the sets but
            is steady within each scores high.
        counts: (n₊, n₋), the number of prompts behind each set's statistics.

    Raises:
        InputError: an unknown `kind`.

    Example:
        >>> neuron_scores(mean_p, mean_n, var_p, var_n, kind="standardized", counts=(32, 32))
    """
    delta = difference_of_means(positive_mean, negative_mean)
    if kind == "diff":
        return delta
    if kind != "standardized":
        raise InputError(f"unknown neuron score {kind!r}; known: {', '.join(SCORES)}")
    var_p, var_n = positive_var.float(), negative_var.float()
    if counts is not None and counts[0] + counts[1] > 2:
        n_p, n_n = counts
        pooled = (max(n_p - 1, 0) * var_p + max(n_n - 1, 0) * var_n) / (n_p + n_n - 2)
    else:
        pooled = (var_p + var_n) / 2
    std = pooled.clamp(min=0).sqrt()
    floor = max(float(std.median()) * STD_FLOOR_SHARE, 1e-6)
    return delta / std.clamp(min=floor)


def universal_mask(frequency: torch.Tensor, threshold: float = UNIVERSAL_THRESHOLD) -> torch.Tensor:
    """[n_layers, d_mlp] bool: neurons in the top set on at least `threshold` of neutral prompts."""
    return frequency >= threshold


def layer_mask(n_layers: int, d_mlp: int, skip_layers: Sequence[int]) -> torch.Tensor:
    """[n_layers, d_mlp] bool: True on every neuron of a candidate layer."""
    bad = [i for i in skip_layers if not -n_layers <= i < n_layers]
    if bad:
        raise InputError(
            f"skip_layers {bad} out of range for a model with {n_layers} layers (0..{n_layers - 1})"
        )
    keep = torch.ones(n_layers, dtype=torch.bool)
    keep[[i % n_layers for i in skip_layers]] = False
    if not keep.any():
        raise InputError("skip_layers leaves no candidate layer; skip fewer layers")
    return keep[:, None].expand(n_layers, d_mlp).clone()


def candidate_mask(
    n_layers: int, d_mlp: int, skip_layers: Sequence[int], universal: torch.Tensor | None = None
) -> torch.Tensor:
    """[n_layers, d_mlp] bool: the neurons a circuit is selected from, every neuron of a layer
    not in `skip_layers` that is not marked in `universal` ([n_layers, d_mlp] bool, or None
    when no universal neurons are known).

    Raises:
        InputError: as `layer_mask`.
    """
    candidates = layer_mask(n_layers, d_mlp, skip_layers)
    if universal is not None:
        candidates &= ~universal.to(torch.bool)
    return candidates


@dataclass(frozen=True)
class Selection:
    """The chosen neurons in rank order (largest |δ| first)."""

    layers: torch.Tensor  # [k] int64
    neurons: torch.Tensor  # [k] int64
    n_candidates: int


def select_top_k(
    delta: torch.Tensor,
    candidates: torch.Tensor,
    k: int,
    *,
    positive_only: bool = False,
) -> Selection:
    """Global top-k of |δ| among candidate neurons.

    Args:
        delta: [n_layers, d_mlp] scores.
        candidates: [n_layers, d_mlp] bool, False for skipped layers and universal neurons.
        k: number of neurons to keep.
        positive_only: keep only neurons with δ > 0 (more active on the positive set).
    """
    if k < 1:
        raise InputError(f"top_k must be at least 1, got {k}")
    allowed = candidates & (delta > 0) if positive_only else candidates.clone()
    allowed &= torch.isfinite(delta)
    n_candidates = int(allowed.sum())
    if k > n_candidates:
        kind = "positive-δ candidate" if positive_only else "candidate"
        raise InputError(
            f"asked for {k} neurons but there are only {n_candidates} {kind} neurons; "
            "lower top_k/fraction or skip fewer layers"
        )
    d_mlp = delta.shape[1]
    score = torch.where(allowed, delta.abs(), torch.full_like(delta, -1.0)).flatten()
    # A stable sort on −score keeps ties in flat (layer, neuron) order: deterministic output.
    order = torch.sort(-score, stable=True).indices[:k]
    return Selection(layers=order // d_mlp, neurons=order % d_mlp, n_candidates=n_candidates)
