"""Mean ablation inside a mixture-of-experts block: the neurons' sums over the tokens their
expert ran on, and the edit that moves neurons toward fixed values.

A routed expert's neuron exists only at the tokens the router sent to the expert, so its mean
is taken over those tokens (`add_routed_sums` counts them per expert), and setting it to a value
acts at those tokens only: where the expert does not run there is nothing to set. Shared experts
and dense layers run at every token and are summed and set as a dense site is. Inputs are
flattened tokens [batch × seq, width]; a `TokenGrid` on the block gives the positions back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from neurosteer.hooks.edits import _setter, edit_dtype, float32_strength
from neurosteer.hooks.expert_edits import RecordedBlock, add_flat_pre
from neurosteer.hooks.experts import TokenGrid, add_expert_tap
from neurosteer.hooks.hookset import HookSet
from neurosteer.hooks.positions import EditState


def add_routed_sums(
    hooks: HookSet,
    layer: int,
    block: nn.Module,
    parts: Sequence[RecordedBlock],
    chosen: Callable[[], torch.Tensor],
    sums: torch.Tensor,
    counts: torch.Tensor,
) -> None:
    """Add each neuron of `block`'s parts, at the chosen tokens where it was computed, into
    `sums[layer]` and the number of such tokens into `counts[layer]`.

    Args:
        block: the MoE block (input [batch, seq, H]).
        parts: its routed experts (fused) and linear blocks, as the recorder describes them.
        chosen: () -> [batch, seq] bool, the tokens to count in the current batch.
        sums, counts: [n_layers, d_mlp] float64 accumulators (on the CPU).
    """
    grid = TokenGrid()
    grid.watch(hooks, block)

    def add(lo: int, values: torch.Tensor, n: int) -> None:
        width = values.shape[-1]
        sums[layer, lo : lo + width] += values.double().cpu()
        counts[layer, lo : lo + width] += n

    for part in parts:
        if part.fused:

            def tap(
                expert: int,
                h: torch.Tensor,
                rows: torch.Tensor,
                _w: torch.Tensor,
                part: RecordedBlock = part,
            ) -> None:
                keep = chosen().to(rows.device).reshape(-1)[rows]
                if bool(keep.any()):
                    add(part.start + expert * part.width, h[keep].sum(0), int(keep.sum()))

            add_expert_tap(hooks, part.module, tap)
        else:

            def pre(_module: nn.Module, args: tuple[Any, ...], part: RecordedBlock = part) -> None:
                x = grid.as_3d(args[0])  # [batch, seq, w]
                keep = chosen().to(x.device)
                add(part.start, x[keep].sum(0), int(keep.sum()))

            hooks.pre(part.module, pre)


def add_expert_setters(
    hooks: HookSet,
    experts: nn.Module,
    grid: TokenGrid,
    by_expert: dict[int, tuple[torch.Tensor, torch.Tensor]],
    state: EditState,
) -> None:
    """Move neurons of routed experts (fused storage) toward values: x + s·(v − x) at the
    routed tokens `state.steered_range` allows (s = 0: the hook returns nothing).

    Args:
        experts: the fused experts module; grid: watching its MoE block.
        by_expert: {expert: ([n] int64 indices within the expert, [n] values)}.
    """

    def tap(
        expert: int, h: torch.Tensor, rows: torch.Tensor, _weights: torch.Tensor
    ) -> torch.Tensor | None:
        found = by_expert.get(expert)
        s = float32_strength(state.strength)
        if found is None or s == 0.0:
            return None
        start, end = state.steered_range(grid.seq)
        if start >= end:
            return None
        math = edit_dtype(h.dtype)
        neurons, values = found[0].to(h.device), found[1].to(device=h.device, dtype=math)
        p = h.to(math)
        moved = p.clone()
        moved[:, neurons] = values if s == 1.0 else p[:, neurons] + s * (values - p[:, neurons])
        position = grid.positions(rows)
        inside = (position >= start) & (position < end)
        return torch.where(inside[:, None], moved, p).to(h.dtype)

    add_expert_tap(hooks, experts, tap)


def add_row_setters(
    hooks: HookSet,
    site: nn.Module,
    grid: TokenGrid,
    neurons: torch.Tensor,
    values: torch.Tensor,
    state: EditState,
) -> None:
    """`neurosteer.hooks.edits.add_neuron_setters` for a projection inside an MoE block (a
    shared expert's or dense layer's down projection) whose input may be flattened [T, w]."""
    add_flat_pre(hooks, site, grid, _setter(neurons, values, state))
