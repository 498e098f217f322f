"""Hooks inside fused expert modules, through transformers' own experts dispatch.

transformers 5 computes fused experts (3-D `gate_up_proj` / `down_proj` parameters) in a
function it looks up at every call: the experts class is wrapped by
`use_experts_implementation`, whose `forward` asks `ALL_EXPERTS_FUNCTIONS` (an
`ExpertsInterface`) for `config._experts_implementation` ("eager", "grouped_mm", ...). The
router runs before, in the MoE block, and hands the experts (tokens [T, H], top-k expert ids
[T, k], top-k weights [T, k]).

We register one more implementation, "neurosteer", and point the config at it only while one
of our taps is installed. For an experts module with no tap it calls the implementation that
was in use, unchanged. For a tapped one it runs the eager per-expert loop, with each expert's
neurons h [n_tokens, I] (the input of its down projection) handed to the taps between the two
projections, so the model's own routing, gating (gpt-oss's clamped, interleaved SwiGLU
included), biases and weighting are untouched. With taps that return nothing the result is the
eager result bit for bit: each expert gets the same token rows in the same order, found by one
stable sort of the expert ids instead of the eager loop's one-hot mask scanned per expert.

Tokens reach the experts flattened ([batch × seq, H], row-major), so a token's position is its
row modulo the sequence length, which a pre-hook on the MoE block reads (`TokenGrid`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

from neurosteer.hooks.hookset import HookSet

IMPLEMENTATION = "neurosteer"
_TAPS = "_neurosteer_taps"
_FIXED = "_neurosteer_fixed_routing"  # count of holders of the routing weights' gradient

ExpertTap = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor | None]
"""tap(expert, h [n, I], token rows [n] int64, routing weights [n]) -> new h, or None."""

# id(config) -> [implementation in use before ours, number of taps installed under it]
_SWITCHED: dict[int, list[Any]] = {}


def neurosteer_experts_forward(
    module: nn.Module,
    hidden_states: torch.Tensor,
    top_k_index: torch.Tensor,
    top_k_weights: torch.Tensor,
) -> torch.Tensor:
    """The experts computed as transformers' eager loop, with `module`'s taps between the
    projections; without taps, the implementation in use before ours.

    Args:
        hidden_states: [T, H] tokens; top_k_index: [T, k] expert ids; top_k_weights: [T, k].

    Returns:
        [T, H] the weighted sum of the routed experts' outputs.
    """
    if getattr(module, _FIXED, 0):  # RelP: the routing weights are constants in the backward
        top_k_weights = top_k_weights.detach()
    taps: list[ExpertTap] = getattr(module, _TAPS, [])
    if not taps:
        return _previous(module)(module, hidden_states, top_k_index, top_k_weights)
    final = torch.zeros_like(hidden_states)
    for expert, tokens, weights in _routes(top_k_index, top_k_weights, _n_experts(module)):
        h = expert_neurons(module, hidden_states[tokens], expert)
        for tap in taps:
            new = tap(expert, h, tokens, weights)
            h = h if new is None else new
        out = _down(module, h, expert) * weights[:, None]
        final.index_add_(0, tokens, out.to(final.dtype))
    return final


def _n_experts(module: nn.Module) -> int:
    return int(_dynamic(module).down_proj.shape[0])


def _routes(
    top_k_index: torch.Tensor, top_k_weights: torch.Tensor, n_experts: int
) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
    """(expert, token rows [n] int64, routing weights [n]) of every expert some token is routed
    to, experts in increasing order; an index of `n_experts` (transformers' "no expert") is
    skipped.

    The rows come in the order transformers' eager loop takes them (`torch.where` over the
    expert's [k, T] one-hot mask: by top-k slot, then by token), so every expert computes
    the same products; one stable sort of the [k × T] expert ids finds them all instead of
    one mask scan per expert.
    """
    flat = top_k_index.t().reshape(-1)  # [k * T]: slot-major, then token
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=n_experts + 1).tolist()
    tokens = order % top_k_index.shape[0]
    weights = top_k_weights.t().reshape(-1)[order]
    routes = []
    start = 0
    for expert, count in enumerate(counts[:n_experts]):
        if count:
            routes.append((expert, tokens[start : start + count], weights[start : start + count]))
        start += count
    return routes


def expert_neurons(module: nn.Module, x: torch.Tensor, expert: int) -> torch.Tensor:
    """Expert `expert`'s neurons for tokens x [n, H]: the input of its down projection, [n, I]
    (gate/up projection, biases and the class's own gating, as transformers computes them)."""
    mod = _dynamic(module)
    if mod.has_gate:
        gate_up = _project(x, mod.gate_up_proj[expert], mod.is_transposed)
        if mod.has_bias:
            gate_up = gate_up + mod.gate_up_proj_bias[expert]
        return mod._apply_gate(gate_up)
    up = _project(x, mod.up_proj[expert], mod.is_transposed)
    if mod.has_bias:
        up = up + mod.up_proj_bias[expert]
    return mod.act_fn(up)


def _down(module: nn.Module, h: torch.Tensor, expert: int) -> torch.Tensor:
    mod = _dynamic(module)
    out = _project(h, mod.down_proj[expert], mod.is_transposed)
    if mod.has_bias:
        out = out + mod.down_proj_bias[expert]
    if getattr(module, "has_post_expert_norm", False):
        out = mod.post_expert_norm(out)
    return out


def _dynamic(module: object) -> Any:
    """The experts module with the attributes transformers' decorator sets (`has_gate`,
    `has_bias`, `is_transposed`, `config`), which the type checker cannot see."""
    return module


def _project(x: torch.Tensor, weight: torch.Tensor, transposed: bool) -> torch.Tensor:
    """x [n, in] through one expert's weight: [in, out] when transposed, else [out, in]."""
    return x @ weight if transposed else nn.functional.linear(x, weight)


def _previous(module: nn.Module) -> Callable[..., torch.Tensor]:
    """The implementation the config named before ours (eager: the class's own forward)."""
    config = _dynamic(module).config
    name = _SWITCHED.get(id(config), [getattr(config, "_experts_implementation", None)])[0]
    original = _dynamic(type(module).forward).__wrapped__  # the class's own, under the decorator
    return ALL_EXPERTS_FUNCTIONS.get_interface(name, original)


class _Switch:
    """Points a config at our implementation while at least one switch is held, and back to
    the implementation in use before when the last one is removed."""

    def __init__(self, module: nn.Module) -> None:
        if IMPLEMENTATION not in ALL_EXPERTS_FUNCTIONS:
            ALL_EXPERTS_FUNCTIONS.register(IMPLEMENTATION, neurosteer_experts_forward)
        self.config = _dynamic(module).config
        entry = _SWITCHED.setdefault(
            id(self.config), [getattr(self.config, "_experts_implementation", None), 0]
        )
        entry[1] += 1
        self.config._experts_implementation = IMPLEMENTATION
        self.held = True

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        entry = _SWITCHED[id(self.config)]
        entry[1] -= 1
        if entry[1] == 0:
            self.config._experts_implementation = entry[0]
            del _SWITCHED[id(self.config)]


class _TapHandle:
    """Removes one tap (and switches the config back when it was the last one)."""

    def __init__(self, module: nn.Module, tap: ExpertTap) -> None:
        self.module, self.tap = module, tap
        self.switch = _Switch(module)

    def remove(self) -> None:
        taps: list[ExpertTap] = getattr(self.module, _TAPS, [])
        if self.tap not in taps:
            return  # idempotent
        taps.remove(self.tap)
        self.switch.release()


def add_expert_tap(hooks: HookSet, module: nn.Module, tap: ExpertTap) -> None:
    """Hand `tap` every routed expert's neurons in `module`'s forward passes, until `hooks`
    is removed.

    Args:
        hooks: owns the tap (removed with the set's hooks).
        module: a fused experts module wrapped by transformers' `use_experts_implementation`.
        tap: see `ExpertTap`; it must not edit h in place (other taps may hold it).
    """
    handle = _TapHandle(module, tap)
    if not hasattr(module, _TAPS):
        setattr(module, _TAPS, [])
    getattr(module, _TAPS).append(tap)
    hooks.add(handle)


class _FixedHandle:
    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.switch = _Switch(module)
        setattr(module, _FIXED, getattr(module, _FIXED, 0) + 1)

    def remove(self) -> None:
        if not self.switch.held:
            return  # idempotent
        setattr(self.module, _FIXED, getattr(self.module, _FIXED) - 1)
        self.switch.release()


def add_fixed_routing(hooks: HookSet, module: nn.Module) -> None:
    """Hold the routing weights of `module`'s experts constant in the backward pass (forward
    values unchanged: the weights are detached where they multiply the experts' outputs), until
    `hooks` is removed. RelP's rule for a softmax gate, as for attention weights.

    Args:
        module: a fused experts module wrapped by transformers' `use_experts_implementation`.
    """
    hooks.add(_FixedHandle(module))


def count_taps(model: nn.Module) -> int:
    """Expert taps and fixed-routing holds installed on the model's modules (for tests,
    beside `count_hooks`)."""
    return sum(len(getattr(m, _TAPS, [])) + getattr(m, _FIXED, 0) for m in model.modules())


class TokenGrid:
    """The sequence length of the tokens an MoE block is running, read by a pre-hook on it, so
    that a flattened token row (row = b × seq + position) gives back its position."""

    def __init__(self) -> None:
        self.batch = 0
        self.seq = 0

    def watch(self, hooks: HookSet, block: nn.Module) -> None:
        """Register the pre-hook on `block` (whose input is [batch, seq, H])."""

        def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0]
            self.batch, self.seq = int(x.shape[0]), int(x.shape[-2])

        hooks.pre(block, hook)

    def positions(self, rows: torch.Tensor) -> torch.Tensor:
        """[n] position in the sequence of each flattened token row."""
        return rows % self.seq

    def as_3d(self, x: torch.Tensor) -> torch.Tensor:
        """x [T, w] (T = batch × seq) as [batch, seq, w]; a 3-D x is returned as it is."""
        return x if x.dim() == 3 else x.view(-1, self.seq, x.shape[-1])
