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

A pass starts a new prompt, whose length P is then the cached length plus the pass's new
tokens, unless it is a decoding step: exactly one new token on the cache the previous pass
left, on its rows or some of them (generation drops finished answers from the batch). So a
cache that comes in already filled (a stored prefix, a cache reused from an earlier call, or
one built under other steering) is placed right: its positions are taken as they are, and only
the uncached rest of the prompt is steered by the rule. Not told apart: a new call whose only
uncached token directly continues the previous pass (on as many rows or fewer) counts as a
decoding step, and prefill split into several chunks (or several draft tokens at once) counts
as prompts; give `prompt_length` there.
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

    A pass that is not a decoding step (one new token on the cache the previous pass left)
    starts a new prompt of length cached + new tokens, whatever the cache holds (unless
    `prompt_length` is given, which generation without a KV cache needs).
    """

    def __init__(self, prompt_length: int | None = None) -> None:
        self.fixed_prompt_length = prompt_length
        self.prompt_length = prompt_length or 0
        self.past_length = 0
        # (batch, sequence length) the previous pass left in its cache; None before any pass
        self._left: tuple[int, int] | None = None

    def on_forward(self, _module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        past = _cache_length(cache)
        tokens = kwargs.get("input_ids")
        if tokens is None:
            tokens = kwargs.get("inputs_embeds")
        if tokens is None and args:
            tokens = args[0]
        batch, seq = _chunk_shape(tokens)
        decoding = past > 0 and seq == 1 and _continues(self._left, batch, past)
        if self.fixed_prompt_length is None and not decoding:
            self.prompt_length = past + seq
        self.past_length = past
        self._left = (batch, past + seq)

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


def _continues(left: tuple[int, int] | None, batch: int, past: int) -> bool:
    """Whether a pass of `batch` rows on a cache of `past` positions extends the cache the
    previous pass `left` (batch, length): the same length, and the same rows or some of them
    (generation drops finished answers from the batch and its cache)."""
    return left is not None and left[1] == past and 0 < batch <= left[0]


def _chunk_shape(tokens: Any) -> tuple[int, int]:
    """(batch, new tokens) of a pass's input ids [batch, seq] or embeddings [batch, seq, d];
    (0, 0) for anything else."""
    if isinstance(tokens, torch.Tensor) and tokens.dim() > 1:
        return int(tokens.shape[0]), int(tokens.shape[1])
    return 0, 0


def _cache_length(cache: Any) -> int:
    if cache is None:
        return 0
    if hasattr(cache, "get_seq_length"):
        return int(cache.get_seq_length())
    with contextlib.suppress(IndexError, TypeError, AttributeError):
        return int(cache[0][0].shape[-2])  # legacy tuple-of-tuples cache
    return 0
