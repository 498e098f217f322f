"""Which token positions an edit applies to: all, the prompt only, or generated tokens only.

Under KV-cache decoding a forward pass sees only the new tokens, so "the prompt" cannot be
found inside one chunk; a model-level pre-hook reads the cache length instead, and every edit
asks `EditState.steered_range(seq_len)` for the slice of the current chunk it may touch.
"""

from __future__ import annotations

import contextlib
from typing import Any, Protocol

import torch
from torch import nn


class EditState(Protocol):
    """What an editing hook reads at call time (the strength may change inside a block)."""

    @property
    def multiplier(self) -> float: ...

    def steered_range(self, seq_len: int) -> tuple[int, int]:
        """[start, end) of the current chunk's positions to edit."""
        ...


class PositionTracker:
    """Knows, during a forward pass, where the current chunk sits in the whole sequence.

    A pass with an empty cache starts a new sequence whose length is the prompt length (unless
    `prompt_length` is given, which generation without a KV cache needs).
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

    def first_generated(self, seq_len: int) -> int:
        """Index within the current chunk of its first generated (non-prompt) position."""
        return min(seq_len, max(0, self.prompt_length - self.past_length))


def _cache_length(cache: Any) -> int:
    if cache is None:
        return 0
    if hasattr(cache, "get_seq_length"):
        return int(cache.get_seq_length())
    with contextlib.suppress(IndexError, TypeError, AttributeError):
        return int(cache[0][0].shape[-2])  # legacy tuple-of-tuples cache
    return 0
