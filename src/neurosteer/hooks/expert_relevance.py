"""RelP's hooks inside a mixture-of-experts block, for one backward pass.

Routed experts in fused storage compute their neurons inside transformers' experts function,
so the capture is an expert tap (`neurosteer.hooks.experts`): each expert's neurons
h [routed tokens, I] are handed to a sink with the token rows they belong to, as tensors the
gradient can be taken with respect to. The half rule for the gated product act(gate) ⊙ up is
applied there, before the capture, as `neurosteer.hooks.relevance.add_gradient_halvers` does
at a dense site. The activation rule hooks the experts' `act_fn` module like a dense MLP's.

Gates that weight a whole expert's output (the router's top-k weights, a shared expert's
sigmoid gate) are held constant in the backward pass, as RelP holds attention weights: the
gate's input receives no relevance through it and the expert's output receives all of it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from neurosteer.hooks.experts import add_expert_tap
from neurosteer.hooks.hookset import HookSet

ExpertSink = Callable[[int, torch.Tensor, torch.Tensor], None]
"""sink(expert, token rows [n] int64, neurons h [n, I]) for one expert's call."""


def add_expert_capture(
    hooks: HookSet, experts: nn.Module, sink: ExpertSink, *, halve: bool
) -> None:
    """Hand `sink` every routed expert's neurons with their graph (a new leaf that requires
    grad when nothing before it does), so their gradient can be taken.

    Args:
        experts: a fused experts module wrapped by transformers' `use_experts_implementation`.
        halve: apply the half rule (backward sees ½ of the gradient on h) before the capture,
            for gated experts.
    """

    def tap(
        expert: int, h: torch.Tensor, rows: torch.Tensor, _weights: torch.Tensor
    ) -> torch.Tensor | None:
        if h.requires_grad:
            new = h.detach() + 0.5 * (h - h.detach()) if halve else h
        else:
            new = h.detach().requires_grad_(True)
        sink(expert, rows, new)
        return None if new is h else new

    add_expert_tap(hooks, experts, tap)


def add_constant_outputs(hooks: HookSet, modules: Sequence[nn.Module]) -> None:
    """Detach the outputs of `modules` (gates): same forward values, no gradient through them."""

    def hook(_module: nn.Module, _args: tuple[Any, ...], output: Any) -> Any:
        if isinstance(output, torch.Tensor) and output.requires_grad:
            return output.detach()
        return None

    for module in dict.fromkeys(modules):
        hooks.post(module, hook)
