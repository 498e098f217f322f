"""Which token positions an edit applies to: all, the prompt, or the generated tokens.

With a prompt of P tokens (left-padded, so every row's last prompt token sits at index P - 1)
followed by generated tokens:

- "all": every position.
- "prompt": the positions that read a prompt token, 0 .. P - 1.
- "generated": the positions whose output is a generated token: the last prompt position
  P - 1 (its output is the first answer token) and every new position P, P + 1, ...

So "prompt" and "generated" share position P - 1: both can change the first answer token, and
"generated" leaves alone exactly the prompt positions whose outputs are never sampled.

Under KV-cache decoding a forward pass sees only the new tokens, so "the prompt" cannot be
found inside one chunk; a model-level pre-hook reads the cache length instead, and every edit
asks `EditState.steered_range(seq_len)` for the slice of the current chunk it may touch.
"""

from __future__ import annotations

import contextlib
from typing import Any, Literal, Protocol

import torch
from torch import nn

Positions = Literal["all", "prompt", "generated"]


class EditState(Protocol):
    """What an editing hook reads at call time (the strength may change inside a block)."""

    @property
    def strength(self) -> float: ...

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
        return self._in_chunk(self.prompt_length, seq_len)

    def steered_range(self, positions: Positions, seq_len: int) -> tuple[int, int]:
        """[start, end) of the current chunk (seq_len positions) that `positions` selects.

        positions: "all", "prompt" (0 .. P - 1) or "generated" (P - 1 onwards, the positions
        whose outputs are generated tokens), P being the prompt length.
        """
        if positions == "all":
            return 0, seq_len
        if positions == "prompt":
            return 0, self.first_generated(seq_len)
        # the last prompt position predicts the first answer token, so it is steered too
        return self._in_chunk(self.prompt_length - 1, seq_len), seq_len

    def _in_chunk(self, position: int, seq_len: int) -> int:
        """Absolute sequence `position` as an index into the current chunk, clamped to it."""
        return min(seq_len, max(0, position - self.past_length))


def _cache_length(cache: Any) -> int:
    if cache is None:
        return 0
    if hasattr(cache, "get_seq_length"):
        return int(cache.get_seq_length())
    with contextlib.suppress(IndexError, TypeError, AttributeError):
        return int(cache[0][0].shape[-2])  # legacy tuple-of-tuples cache
    return 0
