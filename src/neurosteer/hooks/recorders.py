"""Last-token capture: hand a sink each point's activation at each prompt's last real token."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import nn

from neurosteer.hooks.hookset import HookSet, StopForward


def first_tensor(value: Any) -> torch.Tensor:
    """The hidden states of a module output that may be a tensor or a tuple (older versions)."""
    return value[0] if isinstance(value, tuple) else value


def add_last_token_recorders(
    hooks: HookSet,
    points: Sequence[nn.Module],
    last_index: Callable[[], torch.Tensor],
    sink: Callable[[int, torch.Tensor], None],
    *,
    capture: Literal["input", "output"] = "input",
    stop_after_last: bool,
) -> None:
    """Hand `sink(i, acts [batch, width])` the input (or output) of `points[i]` at each prompt's
    last real token.

    `last_index()` gives the [batch] position of each row's last real token for the batch
    being run; it is moved to each point's device here (layers may sit on different devices).
    With `stop_after_last`, the last point raises `StopForward`, so whatever follows it (the
    final norm, the LM head) is never computed.
    """
    final = len(points) - 1

    def take(i: int, x: torch.Tensor) -> None:
        index = last_index().to(x.device)
        rows = torch.arange(x.shape[0], device=x.device)
        sink(i, x[rows, index])  # [batch, width]
        if stop_after_last and i == final:
            raise StopForward

    def on_input(i: int) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        return lambda _module, args: take(i, args[0])

    def on_output(i: int) -> Callable[[nn.Module, tuple[Any, ...], Any], None]:
        return lambda _module, _args, output: take(i, first_tensor(output))

    for i, point in enumerate(points):
        if capture == "input":
            hooks.pre(point, on_input(i))
        else:
            hooks.post(point, on_output(i))


def add_token_recorders(
    hooks: HookSet,
    points: Sequence[nn.Module],
    real_tokens: Callable[[], torch.Tensor],
    sink: Callable[[int, torch.Tensor], None],
) -> None:
    """Hand `sink(i, acts [n_tokens, width])` the input of `points[i]` at every real token of
    the batch being run (`real_tokens()`: its [batch, seq] bool mask, False on padding)."""

    def on_input(i: int) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0]  # [batch, seq, width]
            sink(i, x[real_tokens().to(x.device)])

        return hook

    for i, point in enumerate(points):
        hooks.pre(point, on_input(i))
