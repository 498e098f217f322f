"""Hand-made circuits for tests that need a circuit without a model (comparison, reports, demo)."""

from __future__ import annotations

import torch

from neurosteer.methods.circuit import Circuit, CircuitRecipe, DeltaTable, ModelInfo


def make_circuit(
    neurons: list[tuple[int, int]],
    *,
    n_layers: int = 8,
    d_mlp: int = 10,
    delta: torch.Tensor | None = None,
) -> Circuit:
    """A circuit of the given (layer, neuron) pairs; with `delta` [n_layers, d_mlp], a table."""
    layers = torch.tensor([layer for layer, _ in neurons], dtype=torch.long)
    index = torch.tensor([n for _, n in neurons], dtype=torch.long)
    table = None
    if delta is not None:
        zeros = torch.zeros(n_layers, d_mlp)
        table = DeltaTable(delta.clone(), zeros, zeros.clone(), zeros.clone(),
                           torch.zeros(n_layers, d_mlp, dtype=torch.bool))  # fmt: skip
    scores = delta[layers, index] if delta is not None else torch.ones(len(neurons))
    info = ModelInfo("toy", "llama", "LlamaForCausalLM", n_layers, d_mlp, 16, "model.layers",
                     "mlp.down_proj", "0" * 64)  # fmt: skip
    return Circuit(
        layers=layers,
        neurons=index,
        delta=scores.float().clone(),
        positive_mean=scores.float().clone(),
        negative_mean=torch.zeros(len(neurons)),
        model=info,
        settings=CircuitRecipe(k=len(neurons), skip_layers=(0, 1)),
        table=table,
    )
