"""`HookSet`: hooks registered together and removed together."""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Any, Protocol, TypeVar

from torch import nn


class StopForward(Exception):  # a control-flow signal, not an error
    """Raised by a recording hook to end a forward pass once every point has been seen."""


_Removable = TypeVar("_Removable", bound="RemovedOnExit")


class RemovedOnExit:
    """A context manager that calls `self.remove()` on leaving the `with` block (error or not).

    Subclasses define `remove`; `__enter__` returns the object itself.
    """

    def remove(self) -> None:
        """Undo what the object holds (subclasses define it)."""
        raise NotImplementedError

    def __enter__(self: _Removable) -> _Removable:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()


class Removable(Protocol):
    """Anything a `HookSet` can hold: a hook handle, or an expert tap's handle."""

    def remove(self) -> None: ...


class HookSet(RemovedOnExit):
    """Hooks registered together and removed together.

    Use as a context manager; registration happens inside the `with` block, so a failure
    half-way still removes what was registered.

    Example:
        >>> with HookSet() as hooks:
        ...     hooks.pre(model.model.layers[3].mlp.down_proj, my_pre_hook)
        ...     model(**batch)
    """

    def __init__(self) -> None:
        self._handles: list[Removable] = []

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

    def add(self, handle: Removable) -> None:
        """Hold `handle` (e.g. an expert tap's) to remove with the set."""
        self._handles.append(handle)

    def remove(self) -> None:
        """Remove every hook of this set (idempotent)."""
        while self._handles:
            self._handles.pop().remove()


def count_hooks(model: nn.Module) -> int:
    """All forward and forward-pre hooks (and expert taps and fixed-routing holds,
    `neurosteer.hooks.experts`) on the model's modules (for tests and sanity checks)."""
    return sum(
        len(m._forward_hooks)
        + len(m._forward_pre_hooks)
        + len(getattr(m, "_neurosteer_taps", []))
        + getattr(m, "_neurosteer_fixed_routing", 0)
        for m in model.modules()
    )
