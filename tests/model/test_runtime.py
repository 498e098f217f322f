"""Runtime helpers: pad id, position ids, forward inputs, out-of-memory detection and the one
halving batch loop that recording and generation share."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from tiny_models import EOS, EOS_ID, PAD_ID, make_tokenizer
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from neurosteer.errors import InputError
from neurosteer.model import runtime
from neurosteer.model.layout import resolve_layout
from neurosteer.model.runtime import (
    auto_batch_size,
    input_device,
    is_out_of_memory,
    model_inputs,
    pad_id,
    position_ids_from_mask,
    run_batches,
)
from neurosteer.prompts.render import Batch

CPU = torch.device("cpu")
#: Prompt lengths 3, 1, 4, 1, 5, 9, 2, 6: batches are cut from the longest down.
TOKEN_IDS = [[7] * n for n in (3, 1, 4, 1, 5, 9, 2, 6)]


def test_pad_id_is_the_tokenizers_or_zero() -> None:
    tokenizer = make_tokenizer()
    assert pad_id(tokenizer) == tokenizer.pad_token_id == PAD_ID
    tokenizer.pad_token = EOS
    assert pad_id(tokenizer) == EOS_ID != 0
    assert pad_id(SimpleNamespace(pad_token_id=None)) == 0  # type: ignore[arg-type]
    assert pad_id(SimpleNamespace(pad_token_id=5)) == 5  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("mask", "expected"),
    [
        ([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]),  # left padded
        ([[1, 1, 1, 0, 0]], [[0, 1, 2, 2, 2]]),  # right padded: padding after is masked anyway
        ([[0, 0, 0, 1]], [[0, 0, 0, 0]]),  # one real token
    ],
)
def test_position_ids_from_mask(mask: list[list[int]], expected: list[list[int]]) -> None:
    got = position_ids_from_mask(torch.tensor(mask))
    assert got.dtype == torch.long
    assert got.tolist() == expected


def test_model_inputs_add_position_ids_only_where_forward_takes_them(
    tiny_llama: tuple[PreTrainedModel, PreTrainedTokenizerFast],
) -> None:
    ids, mask = torch.tensor([[0, 9, 9]]), torch.tensor([[0, 1, 1]])
    with_positions = model_inputs(tiny_llama[0], ids, mask)
    assert set(with_positions) == {"input_ids", "attention_mask", "position_ids"}
    assert with_positions["position_ids"].tolist() == [[0, 0, 1]]

    class NoPositions(torch.nn.Module):
        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
            return None

    plain = model_inputs(NoPositions(), ids, mask)  # type: ignore[arg-type]
    assert set(plain) == {"input_ids", "attention_mask"}


def test_input_device_and_auto_batch_size_on_the_cpu(
    tiny_llama: tuple[PreTrainedModel, PreTrainedTokenizerFast],
) -> None:
    model = tiny_llama[0]
    assert input_device(model) == CPU
    assert auto_batch_size(model, resolve_layout(model), longest=40) == 16


def _cpu_allocator_error() -> RuntimeError:
    """What torch raises when the CPU allocator is asked for more than any machine has."""
    try:
        torch.empty(2**62, dtype=torch.uint8)
    except RuntimeError as err:
        return err
    raise AssertionError("a 4 EiB tensor was allocated")


@pytest.mark.parametrize(
    ("err", "expected"),
    [
        (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
        (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
        (RuntimeError("MPS backend out of memory (MPS allocated: 8.00 GB)"), True),
        (_cpu_allocator_error(), True),  # the CPU's own words, from torch itself
        (RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 8"), True),
        (RuntimeError("shape mismatch"), False),
        (ValueError("out of memory"), False),  # not an allocator error
        (MemoryError(), False),  # Python's own, not an allocator's
    ],
)
def test_is_out_of_memory(err: BaseException, expected: bool) -> None:
    assert is_out_of_memory(err) is expected


class _Recorder:
    """attempt/finish callbacks that run out of memory above `fits` prompts per batch."""

    def __init__(self, fits: int, error: Exception | None = None) -> None:
        self.fits, self.error = fits, error
        self.tried: list[int] = []
        self.finished: list[list[int]] = []

    def attempt(self, batch: Batch) -> int:
        self.tried.append(len(batch.index))
        if len(batch.index) > self.fits:
            raise self.error or torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return int(batch.attention_mask.sum())

    def finish(self, batch: Batch, n_tokens: int) -> None:
        assert n_tokens == int(batch.attention_mask.sum())  # attempt's result is handed over
        self.finished.append(batch.index.tolist())


def _run(recorder: _Recorder, batch_size: int, **kw: Any) -> int:
    return run_batches(
        TOKEN_IDS,
        recorder.attempt,
        recorder.finish,
        batch_size=batch_size,
        pad_id=0,
        device=CPU,
        **kw,
    )


def test_out_of_memory_halves_the_batch_and_keeps_every_prompt_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    freed: list[torch.device] = []
    monkeypatch.setattr(runtime, "free_accelerator_memory", freed.append)
    recorder = _Recorder(fits=3)
    with caplog.at_level(logging.WARNING, logger="neurosteer"):
        final = _run(recorder, 8, what="testing")
    assert final == 2
    assert recorder.tried == [8, 4, 2, 2, 2, 2]
    assert freed == [CPU, CPU]
    assert "out of memory; testing with batch size 4" in caplog.text
    # longest first, each prompt exactly once
    assert [i for rows in recorder.finished for i in rows] == [5, 7, 4, 2, 0, 6, 1, 3]


def test_no_retry_at_batch_size_one_nor_for_other_errors() -> None:
    with pytest.raises(torch.cuda.OutOfMemoryError):
        _run(_Recorder(fits=0), 4)
    other = _Recorder(fits=1, error=RuntimeError("shape mismatch"))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        _run(other, 4)
    assert other.tried == [4]
    with pytest.raises(InputError, match="batch size must be at least 1, got 0"):
        _run(_Recorder(fits=8), 0)


def test_finish_is_never_retried() -> None:
    recorder = _Recorder(fits=8)

    def finish(batch: Batch, n_tokens: int) -> None:
        recorder.finish(batch, n_tokens)
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    with pytest.raises(torch.cuda.OutOfMemoryError):
        run_batches(TOKEN_IDS, recorder.attempt, finish, batch_size=4, pad_id=0, device=CPU)
    assert recorder.tried == [4]
    assert len(recorder.finished) == 1


def test_a_batch_holds_prompts_of_one_budget() -> None:
    recorder = _Recorder(fits=8)
    budgets = [4, 4, 4, 4, 2, 1, 4, 4]  # prompts 4 and 5 had their answers capped
    _run(recorder, 8, budgets=budgets)
    assert recorder.finished == [[5], [7], [4], [2, 0, 6, 1, 3]]
    for rows in recorder.finished:
        assert len({budgets[i] for i in rows}) == 1
