"""Scaling and last-token recording of the neurons inside a mixture-of-experts block.

Inside an MoE block the tokens are flattened ([batch × seq, width], row-major): routed experts
see only the rows routed to them (through `neurosteer.hooks.experts` taps), shared experts
usually see all rows as a 2-D input. A `TokenGrid` pre-hook on the block gives every row its
position back, so the position rules and the last-token capture work as for dense layers.
The precision rule is `neurosteer.hooks.edits`'s: m rounded to float32, one rounding back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from neurosteer.errors import UnsupportedModelError
from neurosteer.hooks.edits import _scaler, edit_dtype, float32_strength
from neurosteer.hooks.experts import TokenGrid, add_expert_tap, expert_neurons
from neurosteer.hooks.hookset import HookSet, StopForward
from neurosteer.hooks.positions import EditState

RoutingRule = Literal["routed", "weighted", "every"]
"""What a routed expert's neuron counts at a prompt's last token (see docs/moe.md):
"routed": its activation where the router chose the expert, 0 where it did not;
"weighted": the same times the expert's routing weight (its share of the block's output);
"every": its activation computed whether routed or not."""


def add_expert_scalers(
    hooks: HookSet,
    experts: nn.Module,
    grid: TokenGrid,
    by_expert: dict[int, torch.Tensor],
    state: EditState,
) -> None:
    """Multiply neurons of routed experts (fused storage) by `state.strength`.

    Args:
        experts: the fused experts module.
        grid: watching the MoE block the experts sit in.
        by_expert: {expert: [n] int64 neuron indices within the expert (0 .. I − 1)}.
        state: read at call time; m = 1 leaves the experts' output bit-identical.
    """
    cache: dict[tuple[int, torch.device, torch.dtype, float], torch.Tensor] = {}

    def tap(
        expert: int, h: torch.Tensor, rows: torch.Tensor, _weights: torch.Tensor
    ) -> torch.Tensor | None:
        neurons = by_expert.get(expert)
        if neurons is None:  # most experts hold no circuit neuron: return before any work
            return None
        m = float32_strength(state.strength)
        if m == 1.0:
            return None
        start, end = state.steered_range(grid.seq)
        if start >= end:
            return None
        math = edit_dtype(h.dtype)
        key = (expert, h.device, math, m)
        if key not in cache:
            if len(cache) > len(by_expert):
                cache.clear()  # one live multiplier at a time
            scale = torch.ones(h.shape[-1], device=h.device, dtype=math)
            scale[neurons.to(h.device)] = m
            cache[key] = scale
        scaled = (h.to(math) * cache[key]).to(h.dtype)  # [n, I]
        if (start, end) == (0, grid.seq):
            return scaled
        position = grid.positions(rows)
        inside = (position >= start) & (position < end)
        return torch.where(inside[:, None], scaled, h)

    add_expert_tap(hooks, experts, tap)


def add_row_scalers(
    hooks: HookSet, site: nn.Module, grid: TokenGrid, neurons: torch.Tensor, state: EditState
) -> None:
    """Multiply neurons of a projection inside an MoE block (a shared expert's or a dense
    layer's down projection) whose input is [T, w] flattened tokens or [batch, seq, w]."""
    add_flat_pre(hooks, site, grid, _scaler(neurons, state))


PreHook = Callable[[nn.Module, tuple[Any, ...]], tuple[Any, ...] | None]


def add_flat_pre(hooks: HookSet, site: nn.Module, grid: TokenGrid, inner: PreHook) -> None:
    """Register `inner`, a pre-hook written for [batch, seq, w] inputs, on a projection inside
    an MoE block whose input may come flattened to [T, w] (reshaped there and back)."""

    def hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        x = args[0]
        if x.dim() == 3:
            return inner(module, args)
        out = inner(module, (grid.as_3d(x), *args[1:]))
        return None if out is None else (out[0].reshape(x.shape), *out[1:])

    hooks.pre(site, hook)


def add_module_expert_scalers(
    hooks: HookSet, site: nn.Module, name: str, neurons: torch.Tensor, state: EditState
) -> None:
    """Multiply neurons of one expert kept as its own module (input [n_routed_tokens, I]).

    Such an expert is called with its routed rows only and no row indices, so only the rule
    "all" positions can be applied to it.

    Raises (at the forward pass):
        UnsupportedModelError: a position rule other than "all" (naming the expert `name`).
    """
    inner = _scaler(neurons, state)

    def hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        x = args[0]
        if state.steered_range(2**62) != (0, 2**62):
            raise UnsupportedModelError(
                f"the expert '{name}' is a separate module called without its token positions; "
                "steer it at all positions (positions='all') or bake it"
            )
        out = inner(module, (x.reshape(1, -1, x.shape[-1]), *args[1:]))
        return None if out is None else (out[0].reshape(x.shape), *out[1:])

    hooks.pre(site, hook)


@dataclass(frozen=True)
class RecordedBlock:
    """One block of a layer's flat neurons, as the recorder sees it.

    Attributes:
        module: the fused experts module ("fused") or the down projection ("linear").
        start: first flat index; n_experts, width: as in `neurosteer.model.moe_layout`.
        fused: True for routed experts in fused storage.
    """

    module: nn.Module
    start: int
    n_experts: int
    width: int
    fused: bool


def add_moe_last_token_recorder(
    hooks: HookSet,
    layer: int,
    block: nn.Module,
    parts: Sequence[RecordedBlock],
    d_mlp: int,
    last_index: Callable[[], torch.Tensor],
    sink: Callable[[int, torch.Tensor], None],
    *,
    rule: RoutingRule,
    stop: bool,
) -> None:
    """Hand `sink(layer, acts [batch, d_mlp])` the layer's flat neurons at each prompt's last
    real token, once the MoE block `block` has run (zeros past the layer's width, and for
    routed experts as `rule` says); with `stop`, then end the forward pass (`StopForward`).

    Memory: one [batch, d_mlp] float32 buffer per layer and batch; nothing per expert.
    """
    grid = TokenGrid()
    held: dict[str, torch.Tensor] = {}

    def before(_module: nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0]  # [batch, seq, H]
        grid.batch, grid.seq = int(x.shape[0]), int(x.shape[-2])
        last = last_index().to(x.device)
        rows = torch.arange(grid.batch, device=x.device) * grid.seq + last  # flattened rows
        owner = torch.full((grid.batch * grid.seq,), -1, dtype=torch.long, device=x.device)
        owner[rows] = torch.arange(grid.batch, device=x.device)
        held["acts"] = torch.zeros(grid.batch, d_mlp, dtype=torch.float32, device=x.device)
        held["owner"], held["last"] = owner, last
        if rule == "every":
            x_last = x[torch.arange(grid.batch, device=x.device), last]  # [batch, H]
            for part in parts:
                if part.fused:
                    for e in range(part.n_experts):
                        lo = part.start + e * part.width
                        h = expert_neurons(part.module, x_last, e)
                        held["acts"][:, lo : lo + part.width] = h.float()

    def after(_module: nn.Module, _args: tuple[Any, ...], _output: Any) -> None:
        sink(layer, held.pop("acts"))
        if stop:
            raise StopForward

    hooks.pre(block, before)
    for part in parts:
        if part.fused:
            if rule != "every":
                add_expert_tap(hooks, part.module, _routed_taker(part, held, rule))
        else:
            hooks.pre(part.module, _linear_taker(part, grid, held))
    hooks.post(block, after)


def _routed_taker(
    part: RecordedBlock, held: dict[str, torch.Tensor], rule: RoutingRule
) -> Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None]:
    def tap(expert: int, h: torch.Tensor, rows: torch.Tensor, weights: torch.Tensor) -> None:
        owner = held["owner"][rows]  # [n] prompt of each row, -1 off the last tokens
        chosen = owner >= 0
        if not bool(chosen.any()):
            return
        values = h[chosen].float()
        if rule == "weighted":
            values = values * weights[chosen].float()[:, None]
        lo = part.start + expert * part.width
        held["acts"][owner[chosen], lo : lo + part.width] = values

    return tap


def _linear_taker(
    part: RecordedBlock, grid: TokenGrid, held: dict[str, torch.Tensor]
) -> Callable[[nn.Module, tuple[Any, ...]], None]:
    def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
        x = grid.as_3d(args[0])  # [batch, seq, w]
        rows = torch.arange(x.shape[0], device=x.device)
        values = x[rows, held["last"]].float()
        held["acts"][:, part.start : part.start + part.width] = values

    return hook
