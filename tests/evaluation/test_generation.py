"""Stage 7 helper: batched greedy generation keeps prompt order and survives out-of-memory."""

from __future__ import annotations

import copy
import functools
from typing import Any

import pytest
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from neurosteer import InputError, generate

Pair = tuple[PreTrainedModel, PreTrainedTokenizerFast]


def test_batched_generation_keeps_the_order_of_the_prompts(
    tiny_llama: Pair, positive_prompts: list[str], negative_prompts: list[str]
) -> None:
    model, tokenizer = tiny_llama
    prompts = positive_prompts[:3] + negative_prompts[:3]
    together = generate(model, tokenizer, prompts, max_new_tokens=4, batch_size=4)
    alone = [generate(model, tokenizer, [p], max_new_tokens=4)[0] for p in prompts]
    assert together == alone
    assert generate(model, tokenizer, [], max_new_tokens=4) == []


def test_out_of_memory_halves_the_generation_batch(
    tiny_llama: Pair, positive_prompts: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    model, tokenizer = copy.deepcopy(tiny_llama[0]), tiny_llama[1]
    expected = generate(model, tokenizer, positive_prompts, max_new_tokens=4, batch_size=1)
    real_forward = model.forward
    sizes: list[int] = []

    @functools.wraps(real_forward)
    def small_memory(*args: Any, **kwargs: Any) -> Any:
        sizes.append(kwargs["input_ids"].shape[0])
        if kwargs["input_ids"].shape[0] > 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", small_memory)
    got = generate(model, tokenizer, positive_prompts, max_new_tokens=4, batch_size=8)
    assert got == expected
    assert sizes[:3] == [8, 4, 2]


def test_bad_generation_arguments(tiny_llama: Pair) -> None:
    model, tokenizer = tiny_llama
    with pytest.raises(InputError, match="max_new_tokens"):
        generate(model, tokenizer, ["hi"], max_new_tokens=0)
    with pytest.raises(InputError, match="batch size"):
        generate(model, tokenizer, ["hi"], batch_size=0)
