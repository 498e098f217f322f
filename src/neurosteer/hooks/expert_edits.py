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
    rows: LastRows | None = None,
) -> None:
    """Hand `sink(layer, acts [batch, d_mlp])` the layer's flat neurons at each prompt's last
    real token, once the MoE block `block` has run (zeros past the layer's width, and for
    routed experts as `rule` says); with `stop`, then end the forward pass (`StopForward`).

    With `stop` the block runs on the last tokens alone ([batch, 1, H] instead of
    [batch, seq, H]): nothing after it is computed, and routing, experts and shared experts
    act on each token by itself, so the recorded values are those of the full block (up to
    float rounding where a matrix product of one row takes another kernel).

    `rows`, shared by the recorders of one pass (`last_index` then returns one tensor per
    batch), finds the token rows once per batch instead of once per layer.

    Memory: one [batch + 1, d_mlp] float32 buffer per layer and batch (the spare row takes
    the values of the tokens that are not recorded) and, for "weighted", a [batch + 1, experts]
    table of routing weights; nothing per expert.
    """
    recorder = _BlockRecorder(layer, parts, d_mlp, last_index, sink, rule, stop, rows)
    hooks.pre(block, recorder.before)
    for part in parts:
        if part.fused:
            if rule != "every":
                add_expert_tap(hooks, part.module, _routed_taker(part, recorder.held, rule))
        else:
            hooks.pre(part.module, _linear_taker(part, recorder.grid, recorder.held))
    hooks.post(block, recorder.after)


class LastRows:
    """What the MoE recorders of one pass derive from the prompts' last-token positions,
    found once per batch (and device, and block input length) instead of once per layer.

    Args:
        last_index: the batch's [batch] last-token positions; the same tensor object for every
            call within a batch (a new object marks a new batch).
    """

    def __init__(self, last_index: Callable[[], torch.Tensor]) -> None:
        self.last_index = last_index
        self._source: torch.Tensor | None = None
        self._found: dict[tuple[int, int, str, bool], _Rows] = {}

    def find(self, n: int, seq: int, device: torch.device, stop: bool) -> _Rows:
        """The rows of a block input [n, seq, H] on `device`; with `stop`, the block will run
        on the last tokens alone (`_Rows.seq` = 1, positions 0)."""
        source = self.last_index()
        if source is not self._source:
            self._source, self._found = source, {}
        key = (n, seq, str(device), stop)
        if key not in self._found:
            at = source.to(device)
            batch = torch.arange(n, device=device)
            last = torch.zeros_like(at) if stop else at
            seq = 1 if stop else seq
            owner = torch.full((n * seq,), n, device=device)
            owner[batch * seq + last] = batch
            self._found[key] = _Rows(batch, at, last, owner)
        return self._found[key]


@dataclass(frozen=True)
class _Rows:
    """One batch's rows as a block recorder uses them (all [n] int64 but owner).

    Attributes:
        batch: 0 .. n − 1.
        at: each prompt's last real token in the block's input.
        last: each prompt's recorded position in the tokens the block runs (`at`, or 0 when
            it runs on the last tokens alone).
        owner: [n × seq] the prompt of each flattened row at its last token, else n (a spare
            row of "acts" that takes the other rows' values, so that a tap needs no selection).
    """

    batch: torch.Tensor
    at: torch.Tensor
    last: torch.Tensor
    owner: torch.Tensor


class _BlockRecorder:
    """The pre- and post-hook of one MoE block for `add_moe_last_token_recorder`, and what
    they hold for the taps in between (`held`: "acts", "batch", "owner", "last", routing
    weights)."""

    def __init__(
        self,
        layer: int,
        parts: Sequence[RecordedBlock],
        d_mlp: int,
        last_index: Callable[[], torch.Tensor],
        sink: Callable[[int, torch.Tensor], None],
        rule: RoutingRule,
        stop: bool,
        rows: LastRows | None,
    ) -> None:
        self.layer, self.parts, self.d_mlp, self.rule, self.stop = layer, parts, d_mlp, rule, stop
        self.rows, self.sink = rows or LastRows(last_index), sink
        self.grid = TokenGrid()
        self.held: dict[str, torch.Tensor] = {}
        self.weighted = [p for p in parts if p.fused and rule == "weighted"]

    def before(self, _module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        x = args[0]  # [batch, seq, H]
        rows = self.rows.find(int(x.shape[0]), int(x.shape[-2]), x.device, self.stop)
        batch, last, owner = rows.batch, rows.last, rows.owner
        if self.stop:  # only the last tokens are recorded and nothing after the block runs
            x = x[batch, rows.at].unsqueeze(1)
        n = self.grid.batch = int(x.shape[0])
        self.grid.seq = int(x.shape[-2])
        held = self.held
        held["acts"] = torch.zeros(n + 1, self.d_mlp, dtype=torch.float32, device=x.device)
        held["batch"], held["owner"], held["last"] = batch, owner, last
        for part in self.weighted:  # each prompt's routing weight per expert
            held[_weights_key(part)] = torch.zeros(
                n + 1, part.n_experts, dtype=torch.float32, device=x.device
            )
        if self.rule == "every":
            _every_expert(self.parts, x[batch, last], held["acts"][:n])
        return (x, *args[1:]) if self.stop else None

    def after(self, _module: nn.Module, _args: tuple[Any, ...], _output: Any) -> None:
        n = self.grid.batch
        acts = self.held.pop("acts")[:n]
        for part in self.weighted:
            end = part.start + part.n_experts * part.width
            experts = acts[:, part.start : end].view(n, part.n_experts, part.width)
            experts.mul_(self.held.pop(_weights_key(part))[:n, :, None])
        self.sink(self.layer, acts)
        if self.stop:
            raise StopForward


def _every_expert(parts: Sequence[RecordedBlock], x_last: torch.Tensor, acts: torch.Tensor) -> None:
    """Rule "every": each fused expert's neurons computed at the last tokens x_last [batch, H],
    routed or not, into acts [batch, d_mlp]."""
    for part in parts:
        if part.fused:
            for e in range(part.n_experts):
                lo = part.start + e * part.width
                acts[:, lo : lo + part.width] = expert_neurons(part.module, x_last, e).float()


def _weights_key(part: RecordedBlock) -> str:
    return f"weights {part.start}"


def _routed_taker(
    part: RecordedBlock, held: dict[str, torch.Tensor], rule: RoutingRule
) -> Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None]:
    """The tap that copies an expert's neurons at the last tokens into `held["acts"]` (and,
    for "weighted", their routing weights into the part's [batch + 1, n_experts] table, which
    the block's post-hook multiplies in): three operations per expert, no selection and no
    synchronisation; rows off the last tokens land in the spare last row."""

    def tap(expert: int, h: torch.Tensor, rows: torch.Tensor, weights: torch.Tensor) -> None:
        prompts = held["owner"][rows]  # [n]
        lo = part.start + expert * part.width
        held["acts"][prompts, lo : lo + part.width] = h.float()
        if rule == "weighted":
            held[_weights_key(part)][prompts, expert] = weights.float()

    return tap


def _linear_taker(
    part: RecordedBlock, grid: TokenGrid, held: dict[str, torch.Tensor]
) -> Callable[[nn.Module, tuple[Any, ...]], None]:
    def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
        x = grid.as_3d(args[0])  # [batch, seq, w]
        values = x[held["batch"], held["last"]].float()
        held["acts"][: x.shape[0], part.start : part.start + part.width] = values

    return hook
