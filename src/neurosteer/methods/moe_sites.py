"""Circuits on mixture-of-experts models: where each flat neuron is hooked, recorded, baked.

A circuit keeps (layer, flat neuron); `neurosteer.model.moe_layout` says which block (routed
experts, shared experts, a dense MLP) and which expert each flat index belongs to. This module
turns {layer: flat indices} into hooks (`neurosteer.hooks.expert_edits`) and weight edits:
scaling neuron j of expert e by m is scaling row j of that expert's down-projection slice
(`down_proj[e, :, j]` for [E, H, I] storage, `down_proj[e, j, :]` for gpt-oss's [E, I, H];
column j of a shared or dense `down_proj`). Biases are added after the product and stay.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from neurosteer.errors import UnsupportedModelError
from neurosteer.hooks import EditState, HookSet
from neurosteer.hooks.edits import scale_values
from neurosteer.hooks.expert_edits import (
    LastRows,
    RecordedBlock,
    RoutingRule,
    add_expert_scalers,
    add_module_expert_scalers,
    add_moe_last_token_recorder,
    add_row_scalers,
)
from neurosteer.hooks.expert_means import add_expert_setters, add_routed_sums, add_row_setters
from neurosteer.hooks.experts import TokenGrid
from neurosteer.interventions.handles import BakeHandle
from neurosteer.interventions.protocol import Installer
from neurosteer.model.layout import ModelLayout
from neurosteer.model.moe_layout import MoeLayout, NeuronBlock

DEFAULT_RULE: RoutingRule = "weighted"
"""The routing rule discovery records with (docs/moe.md gives the evidence)."""


@dataclass(frozen=True, eq=False)
class _Target:
    """The neurons of one block of one layer that a circuit touches."""

    layer: int
    block: nn.Module  # the MoE block (MLP) of the layer
    part: NeuronBlock
    module: nn.Module  # the experts module, or the down projection
    by_expert: dict[int, torch.Tensor]  # {expert: [n] indices within the expert}


def _moe(layout: ModelLayout) -> MoeLayout:
    assert layout.moe is not None  # callers branch on it
    return layout.moe


def _targets(
    model: nn.Module, layout: ModelLayout, by_layer: dict[int, torch.Tensor]
) -> list[_Target]:
    moe = _moe(layout)
    layers = layout.layer_modules(model)
    targets = []
    for layer, flat in sorted(by_layer.items()):
        spec = moe.layers[layer]
        block = layers[layer].get_submodule(spec.mlp_path)
        for part in spec.blocks:
            split = part.split(flat)
            if split:
                module = layers[layer].get_submodule(part.path)
                targets.append(_Target(layer, block, part, module, split))
    return targets


def edited_modules(
    model: nn.Module, layout: ModelLayout, by_layer: dict[int, torch.Tensor]
) -> list[nn.Module]:
    """The modules whose weights a bake of `by_layer` edits (for `require_editable`)."""
    return [t.module for t in _targets(model, layout, by_layer)]


def moe_installer(
    model: nn.Module, layout: ModelLayout, by_layer: dict[int, torch.Tensor]
) -> Installer:
    """Hooks scaling the flat neurons `by_layer` ({layer: [n] int64}) of an MoE model by the
    strength, at the positions the state allows."""
    targets = _targets(model, layout, by_layer)

    def install(hooks: HookSet, state: EditState) -> None:
        grids: dict[int, TokenGrid] = {}
        for t in targets:
            if id(t.block) not in grids:
                grids[id(t.block)] = TokenGrid()
                grids[id(t.block)].watch(hooks, t.block)
            grid = grids[id(t.block)]
            if t.part.storage == "fused":
                add_expert_scalers(hooks, t.module, grid, t.by_expert, state)
            elif t.part.storage == "linear":
                add_row_scalers(hooks, t.module, grid, t.by_expert[0], state)
            else:
                for expert, neurons in t.by_expert.items():
                    name = f"{layout.layers_path}.{t.layer}.{t.part.path}.{expert}"
                    site = t.module.get_submodule(f"{expert}.{t.part.down}")
                    add_module_expert_scalers(hooks, site, name, neurons, state)

    return install


def moe_setter_installer(
    model: nn.Module,
    layout: ModelLayout,
    values_by_layer: dict[int, tuple[torch.Tensor, torch.Tensor]],
) -> Installer:
    """Hooks moving the flat neurons of an MoE model toward values (mean ablation):
    {layer: ([n] int64 flat indices, [n] values)}; a routed expert's neuron is set at the
    tokens the expert runs on (`neurosteer.hooks.expert_means`).

    Raises:
        UnsupportedModelError: experts kept as separate modules (their token rows are unknown).
    """
    by_layer = {layer: flat for layer, (flat, _) in values_by_layer.items()}
    flat_values = {}
    for layer, (flat, values) in values_by_layer.items():
        row = torch.zeros(layout.d_mlp, dtype=values.dtype)
        row[flat] = values
        flat_values[layer] = row
    targets = _targets(model, layout, by_layer)

    def values_of(t: _Target, expert: int, neurons: torch.Tensor) -> torch.Tensor:
        return flat_values[t.layer][t.part.start + expert * t.part.width + neurons]

    def install(hooks: HookSet, state: EditState) -> None:
        grids: dict[int, TokenGrid] = {}
        for t in targets:
            if t.part.storage == "modules":
                raise UnsupportedModelError(
                    f"the experts '{layout.layers_path}.{t.layer}.{t.part.path}' are separate "
                    "modules called without their token positions; mean ablation cannot set them"
                )
            if id(t.block) not in grids:
                grids[id(t.block)] = TokenGrid()
                grids[id(t.block)].watch(hooks, t.block)
            grid = grids[id(t.block)]
            if t.part.storage == "fused":
                found = {e: (n, values_of(t, e, n)) for e, n in t.by_expert.items()}
                add_expert_setters(hooks, t.module, grid, found, state)
            else:
                neurons = t.by_expert[0]
                add_row_setters(hooks, t.module, grid, neurons, values_of(t, 0, neurons), state)

    return install


def add_moe_sums(
    hooks: HookSet,
    model: nn.Module,
    layout: ModelLayout,
    chosen: Callable[[], torch.Tensor],
    sums: torch.Tensor,
    counts: torch.Tensor,
) -> None:
    """Sum every flat neuron over the chosen tokens ([batch, seq] bool) where it is computed
    (a routed expert's: the tokens routed to it) into `sums`, counting them in `counts`
    ([n_layers, d_mlp] float64).

    Raises:
        UnsupportedModelError: experts kept as separate modules.
    """
    moe = _moe(layout)
    for i, (layer, spec) in enumerate(zip(layout.layer_modules(model), moe.layers, strict=True)):
        block = layer.get_submodule(spec.mlp_path)
        add_routed_sums(
            hooks, i, block, _recorded(layout, i, layer, spec.blocks), chosen, sums, counts
        )


def _recorded(
    layout: ModelLayout, index: int, layer: nn.Module, blocks: tuple[NeuronBlock, ...]
) -> list[RecordedBlock]:
    parts = []
    for part in blocks:
        if part.storage == "modules":
            raise UnsupportedModelError(
                f"the experts '{layout.layers_path}.{index}.{part.path}' are separate modules "
                "called without their token positions, so their activations cannot be "
                "recorded; steer or bake a circuit found elsewhere"
            )
        module = layer.get_submodule(part.path)
        parts.append(
            RecordedBlock(module, part.start, part.n_experts, part.width, part.storage == "fused")
        )
    return parts


def bake_moe(
    handle: BakeHandle,
    model: nn.Module,
    layout: ModelLayout,
    by_layer: dict[int, torch.Tensor],
    m: float,
) -> None:
    """Scale the flat neurons `by_layer` by m in the weights, keeping the originals in `handle`
    (call under `torch.no_grad`)."""
    for t in _targets(model, layout, by_layer):
        for expert, neurons in t.by_expert.items():
            weight, axis = _down_slice(t, expert)
            index = neurons.to(weight.device)
            original = handle.keep_slice(weight, axis, index)
            weight.index_copy_(axis, index, scale_values(original, m))


def _down_slice(t: _Target, expert: int) -> tuple[torch.Tensor, int]:
    """(a view of the weight holding the expert's neurons, the axis they run along)."""
    part = t.part
    if part.storage == "fused":
        down = t.module.down_proj
        assert isinstance(down, torch.Tensor)
        return down.detach()[expert], 0 if part.transposed else 1  # [I, H] or [H, I]
    site = (
        t.module.get_submodule(f"{expert}.{part.down}") if part.storage == "modules" else t.module
    )
    weight = site.weight
    assert isinstance(weight, torch.Tensor)
    return weight.detach(), 0 if part.transposed else 1


def add_moe_recorders(
    hooks: HookSet,
    model: nn.Module,
    layout: ModelLayout,
    last_index: Callable[[], torch.Tensor],
    sink: Callable[[int, torch.Tensor], None],
    *,
    rule: RoutingRule | None = None,
    stop_after_last: bool = True,
) -> None:
    """Record every layer's flat neurons [batch, d_mlp] at the prompts' last real tokens
    (`last_index()`: the same [batch] tensor for every layer of one batch).

    Raises:
        UnsupportedModelError: a layer keeps its experts as separate modules (their token rows
            are not known, so the last token cannot be picked out).
    """
    moe = _moe(layout)
    layers = layout.layer_modules(model)
    final = len(layers) - 1
    rows = LastRows(last_index)
    for i, (layer, spec) in enumerate(zip(layers, moe.layers, strict=True)):
        parts = _recorded(layout, i, layer, spec.blocks)
        block = layer.get_submodule(spec.mlp_path)
        add_moe_last_token_recorder(
            hooks,
            i,
            block,
            parts,
            layout.d_mlp,
            last_index,
            sink,
            rule=DEFAULT_RULE if rule is None else rule,  # read at call time (benchmarks vary it)
            stop=stop_after_last and i == final,
            rows=rows,
        )
