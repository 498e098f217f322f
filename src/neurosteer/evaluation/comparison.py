"""Beside sweeps: analyses of circuits alone (no model): overlap, layers, sparsity.

compare_circuits(a, b)    overlap count, share of each, Jaccard, per-layer counts (the
                          paper's base-vs-instruct comparison: 8-29% shared)
localisation(c)           share of neurons in the last three layers and the last quarter
sparsity_sweep(c, ks)     re-select k neurons from the kept δ table for each k: how much
                          |δ| mass the circuit holds and where its neurons sit

cmp = compare_circuits(Circuit.load("base.circuit"), Circuit.load("instruct.circuit"))
cmp.overlap, cmp.jaccard
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from neurosteer.errors import CircuitMismatchError, InputError
from neurosteer.methods.circuit import Circuit


@dataclass(frozen=True)
class Comparison:
    """How two circuits of one model shape overlap.

    Attributes:
        n_a, n_b: neurons in each circuit.
        overlap: neurons in both.
        share_a, share_b: overlap / n_a and overlap / n_b.
        jaccard: overlap / |a ∪ b|.
        per_layer: {layer: (in a, in b, in both)}, layers where either has a neuron.
    """

    n_a: int
    n_b: int
    overlap: int
    share_a: float
    share_b: float
    jaccard: float
    per_layer: dict[int, tuple[int, int, int]]


def compare_circuits(a: Circuit, b: Circuit) -> Comparison:
    """Overlap of two circuits found on models of the same shape (e.g. base vs instruct).

    Raises:
        CircuitMismatchError: the circuits come from models with different layer counts or
            MLP widths, so neuron indices cannot be compared.

    Example:
        >>> compare_circuits(base_circuit, instruct_circuit).share_b   # paper: 0.08-0.29
    """
    shape_a = (a.model.n_layers, a.model.d_mlp)
    shape_b = (b.model.n_layers, b.model.d_mlp)
    if shape_a != shape_b:
        raise CircuitMismatchError(
            f"the circuits come from models of different shape ({shape_a[0]} layers x "
            f"{shape_a[1]} neurons vs {shape_b[0]} x {shape_b[1]}); only circuits of one "
            "architecture and size can be compared"
        )
    set_a, set_b = _neuron_set(a), _neuron_set(b)
    both = set_a & set_b
    union = set_a | set_b
    layers = sorted({layer for layer, _ in union})
    per_layer = {
        layer: (
            sum(1 for x in set_a if x[0] == layer),
            sum(1 for x in set_b if x[0] == layer),
            sum(1 for x in both if x[0] == layer),
        )
        for layer in layers
    }
    return Comparison(
        n_a=len(set_a),
        n_b=len(set_b),
        overlap=len(both),
        share_a=len(both) / len(set_a) if set_a else 0.0,
        share_b=len(both) / len(set_b) if set_b else 0.0,
        jaccard=len(both) / len(union) if union else 0.0,
        per_layer=per_layer,
    )


def last_layers(n_layers: int) -> tuple[int, int]:
    """(first of the last three layers, first of the last quarter of layers)."""
    return max(0, n_layers - 3), n_layers - math.ceil(n_layers / 4)


def localisation(circuit: Circuit) -> dict[str, float | int]:
    """Where a circuit's neurons sit in depth.

    Returns:
        {"n": neurons, "n_layers": layers of the model, "last_three": share of neurons in the
        last three layers, "last_quarter": share in the last ceil(n_layers / 4) layers,
        "mean_depth": mean layer index / (n_layers − 1)}.

    Example:
        >>> localisation(circuit)["last_three"]   # the paper: most neurons sit there
    """
    if len(circuit) == 0:
        raise InputError("the circuit is empty; localisation needs at least one neuron")
    n_layers = circuit.model.n_layers
    first_three, first_quarter = last_layers(n_layers)
    layers = circuit.layers
    return {
        "n": len(circuit),
        "n_layers": n_layers,
        "last_three": float((layers >= first_three).float().mean()),
        "last_quarter": float((layers >= first_quarter).float().mean()),
        "mean_depth": float(layers.float().mean() / max(1, n_layers - 1)),
    }


@dataclass(frozen=True)
class SparsityPoint:
    """One k of a sparsity sweep.

    Attributes:
        k: neurons selected.
        delta_mass: Σ|δ| of the selected neurons / Σ|δ| of all candidate neurons.
        min_abs_delta: the smallest |δ| kept (the selection threshold at this k).
        last_three, last_quarter: shares of the selected neurons in those layers.
        neurons_per_layer: {layer: count}.
    """

    k: int
    delta_mass: float
    min_abs_delta: float
    last_three: float
    last_quarter: float
    neurons_per_layer: dict[int, int]


def sparsity_sweep(circuit: Circuit, ks: Sequence[int]) -> list[SparsityPoint]:
    """Re-select the circuit at each k from its kept table (no re-recording), in the order given.

    Args:
        circuit: a circuit discovered with `keep_table=True`.
        ks: circuit sizes, each at least 1 and at most the number of candidate neurons.

    Example:
        >>> [p.delta_mass for p in sparsity_sweep(circuit, [50, 100, 200])]
    """
    if circuit.table is None:
        raise InputError(
            "the sparsity sweep needs the full δ table; discover the circuit with keep_table=True "
            "(--keep-table)"
        )
    if isinstance(ks, (str, bytes)) or not ks:
        raise InputError("give at least one k for the sparsity sweep")
    bad = [k for k in ks if not isinstance(k, int) or isinstance(k, bool) or k < 1]
    if bad:
        raise InputError(f"every k must be a whole number >= 1, got {bad}")
    candidates = circuit.candidates()
    magnitude = circuit.table.delta.abs()
    if circuit.settings.positive_only:
        candidates &= circuit.table.delta > 0
    total = float(torch.where(candidates, magnitude, torch.zeros_like(magnitude)).sum())
    points = []
    for k in ks:
        chosen = circuit.reselect(top_k=k)
        kept = chosen.delta.abs()
        where = localisation(chosen)
        points.append(
            SparsityPoint(
                k=k,
                delta_mass=float(kept.sum()) / total if total > 0 else 0.0,
                min_abs_delta=float(kept.min()),
                last_three=float(where["last_three"]),
                last_quarter=float(where["last_quarter"]),
                neurons_per_layer=chosen.neurons_per_layer(),
            )
        )
    return points


def _neuron_set(circuit: Circuit) -> set[tuple[int, int]]:
    return set(zip(circuit.layers.tolist(), circuit.neurons.tolist(), strict=True))
