"""Editing hooks: scale neurons, add a vector, project out a direction.

Each reads its strength from an `EditState` at call time and edits only the positions
`state.steered_range` allows. At the identity strength (1 for scaling, 0 for adding and
projecting) a hook returns nothing, so the model is bit-identical to an unhooked one.

Precision rule, shared with baking (`neurosteer.methods.baking`): the strength is rounded to float32
once (`float32_strength`), the edit is computed in float32 (or the tensor's own dtype if it is
wider, `edit_dtype`) and the result is rounded to the tensor's dtype once. A hook therefore
applies m = 0.3 as 0.3 to bfloat16 activations, exactly like a bake applies it to bfloat16
weights, and never as bfloat16(0.3) = 0.30078125.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from neurosteer.hooks.hookset import HookSet
from neurosteer.hooks.positions import EditState
from neurosteer.hooks.recorders import first_tensor


def float32_strength(value: float) -> float:
    """`value` rounded to float32 (returned as a Python float): the strength every edit applies."""
    return float(torch.tensor(float(value), dtype=torch.float32))


def edit_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype an edit of a `dtype` tensor is computed in: float32, or `dtype` if wider."""
    return torch.promote_types(dtype, torch.float32)


def scale_values(values: torch.Tensor, multiplier: float) -> torch.Tensor:
    """`values * multiplier` under the precision rule: one rounding to `values.dtype`."""
    product = values.to(edit_dtype(values.dtype)) * float32_strength(multiplier)
    return product.to(values.dtype)


def _edit_range(
    x: torch.Tensor, state: EditState, edit: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor | None:
    """`edit` applied to the steered positions of x [batch, seq, width]; None if none."""
    seq = x.shape[-2]
    start, end = state.steered_range(seq)
    if start >= end:
        return None
    if (start, end) == (0, seq):
        return edit(x)
    return torch.cat([x[..., :start, :], edit(x[..., start:end, :]), x[..., end:, :]], dim=-2)


def _replace_output(output: Any, new: torch.Tensor) -> Any:
    return (new, *output[1:]) if isinstance(output, tuple) else new


def add_neuron_scalers(
    hooks: HookSet,
    sites: Sequence[nn.Module],
    neurons_by_layer: dict[int, torch.Tensor],
    state: EditState,
) -> None:
    """Multiply the given neurons of each layer's site input by `state.strength`.

    Registers one forward pre-hook per layer in `neurons_by_layer` on `sites[layer]` (the MLP
    output projection, whose input [batch, seq, d_mlp] holds the neurons). At every call the
    hook reads m = `state.strength` (rounded to float32) and the positions
    `state.steered_range` allows, and returns a new input with those neurons × m (computed in
    float32, rounded once to the activation dtype); at m = 1 it returns nothing.

    Args:
        hooks: the `HookSet` that owns (and later removes) the hooks.
        sites: [n_layers] modules, indexed by layer.
        neurons_by_layer: {layer: [n] int64 neuron indices in 0 .. d_mlp − 1}.
        state: read at call time (so the strength may change while the hooks are in place).

    Raises:
        IndexError: a layer outside `sites` (hooks registered before it stay in `hooks`, for
            the caller to remove). Callers check circuits against the model first
            (`Circuit.check_fits`), so neither this nor a neuron index ≥ d_mlp reaches here.
    """
    for layer, neurons in sorted(neurons_by_layer.items()):
        hooks.pre(sites[layer], _scaler(neurons, state))


def _scaler(
    neurons: torch.Tensor, state: EditState
) -> Callable[[nn.Module, tuple[Any, ...]], tuple[Any, ...] | None]:
    cache: dict[tuple[torch.device, torch.dtype, float], torch.Tensor] = {}

    def hook(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        m = float32_strength(state.strength)
        if m == 1.0:
            return None
        x = args[0]  # [batch, seq, d_mlp]
        math = edit_dtype(x.dtype)
        key = (x.device, math, m)
        scale = cache.get(key)
        if scale is None:
            cache.clear()  # one live multiplier at a time; a sweep re-fills it
            # [d_mlp] in the edit dtype: 1 (exact) off the circuit, m on it
            scale = torch.ones(x.shape[-1], device=x.device, dtype=math)
            scale[neurons.to(x.device)] = m
            cache[key] = scale

        def apply(part: torch.Tensor) -> torch.Tensor:
            return (part.to(math) * scale).to(part.dtype)

        scaled = _edit_range(x, state, apply)
        return None if scaled is None else (scaled, *args[1:])

    return hook


def add_vector_adders(
    hooks: HookSet,
    modules: Sequence[nn.Module],
    vectors: Sequence[torch.Tensor],
    state: EditState,
) -> None:
    """Add `state.strength * vectors[i]` [width] to the output of `modules[i]`."""
    for module, vector in zip(modules, vectors, strict=True):
        hooks.post(module, _adder(vector, state))


def _adder(
    vector: torch.Tensor, state: EditState
) -> Callable[[nn.Module, tuple[Any, ...], Any], Any]:
    def hook(_module: nn.Module, _args: tuple[Any, ...], output: Any) -> Any:
        alpha = float32_strength(state.strength)
        if alpha == 0.0:
            return None
        x = first_tensor(output)
        math = edit_dtype(x.dtype)
        shift = alpha * vector.to(device=x.device, dtype=math)  # [width]

        def add(part: torch.Tensor) -> torch.Tensor:
            return (part.to(math) + shift).to(part.dtype)

        new = _edit_range(x, state, add)
        return None if new is None else _replace_output(output, new)

    return hook


def add_direction_projectors(
    hooks: HookSet, modules: Sequence[nn.Module], direction: torch.Tensor, state: EditState
) -> None:
    """Remove `state.strength` times the component along a unit `direction` from the output
    of every module (x ← x − s (x·r̂) r̂); s = 1 ablates the direction."""
    for module in modules:
        hooks.post(module, _projector(direction, state))


def _projector(
    direction: torch.Tensor, state: EditState
) -> Callable[[nn.Module, tuple[Any, ...], Any], Any]:
    def hook(_module: nn.Module, _args: tuple[Any, ...], output: Any) -> Any:
        strength = float32_strength(state.strength)
        if strength == 0.0:
            return None
        x = first_tensor(output)
        math = edit_dtype(x.dtype)
        r = direction.to(device=x.device, dtype=math)  # [width], unit

        def project(part: torch.Tensor) -> torch.Tensor:
            p = part.to(math)
            return (p - strength * (p @ r)[..., None] * r).to(part.dtype)

        new = _edit_range(x, state, project)
        return None if new is None else _replace_output(output, new)

    return hook


def add_neuron_setters(
    hooks: HookSet,
    sites: Sequence[nn.Module],
    values_by_layer: dict[int, tuple[torch.Tensor, torch.Tensor]],
    state: EditState,
) -> None:
    """Move the given neurons of each layer's site input toward fixed values (mean ablation).

    At strength s each chosen neuron x becomes x + s·(v − x): s = 1 sets it to v exactly,
    s = 0 leaves the model bit-identical (the hook returns nothing). Only the positions
    `state.steered_range` allows are edited.

    Args:
        hooks: the `HookSet` that owns (and later removes) the hooks.
        sites: [n_layers] modules (the MLP output projections), indexed by layer.
        values_by_layer: {layer: ([n] int64 neuron indices, [n] float values)}.
        state: read at call time.
    """
    for layer, (neurons, values) in sorted(values_by_layer.items()):
        hooks.pre(sites[layer], _setter(neurons, values, state))


def _setter(
    neurons: torch.Tensor, values: torch.Tensor, state: EditState
) -> Callable[[nn.Module, tuple[Any, ...]], tuple[Any, ...] | None]:
    cache: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        s = float32_strength(state.strength)
        if s == 0.0:
            return None
        x = args[0]  # [batch, seq, d_mlp]
        math = edit_dtype(x.dtype)
        key = (x.device, math)
        if key not in cache:
            mask = torch.zeros(x.shape[-1], dtype=torch.bool, device=x.device)
            mask[neurons.to(x.device)] = True
            target = torch.zeros(x.shape[-1], dtype=math, device=x.device)
            target[neurons.to(x.device)] = values.to(device=x.device, dtype=math)
            cache[key] = (mask, target)
        mask, target = cache[key]

        def apply(part: torch.Tensor) -> torch.Tensor:
            p = part.to(math)
            moved = target if s == 1.0 else p + s * (target - p)
            return torch.where(mask, moved, p).to(part.dtype)

        edited = _edit_range(x, state, apply)
        return None if edited is None else (edited, *args[1:])

    return hook
