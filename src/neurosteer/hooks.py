"""The one module that registers hooks on models.

Everything else (recording, steering, evaluation) hands this module plain data (modules, index
tensors, a multiplier to read) and gets back a `HookSet`, which removes exactly the hooks it
registered, in `finally`, also when registration fails half-way or the block raises. We never
clear a module's hook dictionaries, so our hooks compose with each other and with anyone else's.

Hook bodies never edit an activation in place: other hooks (a recorder, a second circuit) may
hold the same tensor. They return a new input instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle


class StopForward(Exception):
    """Raised by a recording hook to end a forward pass once every site has been seen."""


class HookSet:
    """Hooks registered together and removed together.

    Use as a context manager; registration happens inside the `with` block, so a failure
    half-way still removes what was registered.

    Example:
        >>> with HookSet() as hooks:
        ...     hooks.pre(model.model.layers[3].mlp.down_proj, my_pre_hook)
        ...     model(**batch)
    """

    def __init__(self) -> None:
        self._handles: list[RemovableHandle] = []

    def __len__(self) -> int:
        return len(self._handles)

    def pre(self, module: nn.Module, fn: Callable[[nn.Module, tuple[Any, ...]], Any]) -> None:
        """Register a forward pre-hook `fn(module, args) -> new args | None`."""
        self._handles.append(module.register_forward_pre_hook(fn))

    def pre_with_kwargs(
        self,
        module: nn.Module,
        fn: Callable[[nn.Module, tuple[Any, ...], dict[str, Any]], Any],
    ) -> None:
        """Register a forward pre-hook that also sees keyword arguments."""
        self._handles.append(module.register_forward_pre_hook(fn, with_kwargs=True))

    def post(self, module: nn.Module, fn: Callable[[nn.Module, tuple[Any, ...], Any], Any]) -> None:
        """Register a forward hook `fn(module, args, output) -> new output | None`."""
        self._handles.append(module.register_forward_hook(fn))

    def remove(self) -> None:
        """Remove every hook of this set (idempotent)."""
        while self._handles:
            self._handles.pop().remove()

    def __enter__(self) -> HookSet:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()


def count_hooks(model: nn.Module) -> int:
    """All forward and forward-pre hooks on the model's modules (for tests and sanity checks)."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


# --- recording -------------------------------------------------------------------------------


def add_last_token_recorders(
    hooks: HookSet,
    sites: Sequence[nn.Module],
    last_index: Callable[[], torch.Tensor],
    sink: Callable[[int, torch.Tensor], None],
    *,
    stop_after_last: bool,
) -> None:
    """Hand `sink(layer, acts [batch, d_mlp])` the site inputs at each prompt's last token.

    `last_index()` gives the [batch] position of each row's last real token for the batch
    being run; it is moved to each site's device here (layers may sit on different devices).
    With `stop_after_last`, the last site raises `StopForward`, so the rest of the final
    layer, the final norm and the LM head are never computed.
    """
    final = len(sites) - 1

    def make(layer: int) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0]  # [batch, seq, d_mlp]
            index = last_index().to(x.device)
            rows = torch.arange(x.shape[0], device=x.device)
            sink(layer, x[rows, index])  # [batch, d_mlp]
            if stop_after_last and layer == final:
                raise StopForward

        return hook

    for layer, site in enumerate(sites):
        hooks.pre(site, make(layer))


# --- steering --------------------------------------------------------------------------------


class ScaleState(Protocol):
    """What a scaling hook reads at call time (the multiplier may change inside a block)."""

    @property
    def multiplier(self) -> float: ...

    def first_steered_position(self, seq_len: int) -> int:
        """Index within the current chunk from which positions are steered."""
        ...


class PositionTracker:
    """Knows, during a forward pass, where the current chunk sits in the whole sequence.

    A model-level pre-hook reads the KV cache length: a pass with an empty cache starts a new
    sequence whose length is the prompt length (unless `prompt_length` is given, which is
    needed for generation without a KV cache).
    """

    def __init__(self, prompt_length: int | None = None) -> None:
        self.fixed_prompt_length = prompt_length
        self.prompt_length = prompt_length or 0
        self.past_length = 0

    def on_forward(self, _module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        past = _cache_length(cache)
        tokens = kwargs.get("input_ids")
        if tokens is None:
            tokens = kwargs.get("inputs_embeds")
        if tokens is None and args:
            tokens = args[0]
        seq = int(tokens.shape[1]) if isinstance(tokens, torch.Tensor) and tokens.dim() > 1 else 0
        self.past_length = past
        if self.fixed_prompt_length is None and past == 0:
            self.prompt_length = seq

    def first_position(self, seq_len: int) -> int:
        return min(seq_len, max(0, self.prompt_length - self.past_length))


def _cache_length(cache: Any) -> int:
    if cache is None:
        return 0
    if hasattr(cache, "get_seq_length"):
        return int(cache.get_seq_length())
    with contextlib.suppress(IndexError, TypeError, AttributeError):
        return int(cache[0][0].shape[-2])  # legacy tuple-of-tuples cache
    return 0


def add_neuron_scalers(
    hooks: HookSet,
    sites: Sequence[nn.Module],
    neurons_by_layer: dict[int, torch.Tensor],
    state: ScaleState,
) -> None:
    """Multiply the given neurons of each layer's site input by `state.multiplier`.

    At m = 1 the hook returns nothing, so the model is bit-identical to an unhooked one.
    """
    for layer, neurons in sorted(neurons_by_layer.items()):
        hooks.pre(sites[layer], _scaler(neurons, state))


def _scaler(
    neurons: torch.Tensor, state: ScaleState
) -> Callable[[nn.Module, tuple[Any, ...]], tuple[Any, ...] | None]:
    cache: dict[tuple[torch.device, torch.dtype, float], torch.Tensor] = {}

    def hook(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        m = float(state.multiplier)
        if m == 1.0:
            return None
        x = args[0]  # [batch, seq, d_mlp]
        key = (x.device, x.dtype, m)
        scale = cache.get(key)
        if scale is None:
            cache.clear()  # one live multiplier at a time; a sweep re-fills it
            scale = torch.ones(x.shape[-1], device=x.device, dtype=x.dtype)
            scale[neurons.to(x.device)] = m
            cache[key] = scale
        start = state.first_steered_position(x.shape[-2])
        if start == 0:
            scaled = x * scale
        elif start >= x.shape[-2]:
            return None
        else:
            scaled = torch.cat([x[..., :start, :], x[..., start:, :] * scale], dim=-2)
        return (scaled, *args[1:])

    return hook
