"""Dropping finished answers from the batch changes the cost of generation, not its tokens:
the same greedy answers as `model.generate` (every row running until the longest ends), for
every family, and under steering by every intervention kind at every position rule (a pass on
fewer rows is still a decoding step). Stop ids are chosen from each model's own answers so
that rows of one batch end at many different steps."""

from __future__ import annotations

import copy
from functools import cache

import pytest
import torch
from tiny_models import make_tiny
from transformers import PreTrainedModel, PreTrainedTokenizerFast
from transformers.generation.streamers import BaseStreamer

from neurosteer import (
    CAA,
    DirectionAblation,
    Intervention,
    MLPOutputSteering,
    contrast_vectors,
    discover,
    steer,
)
from neurosteer.evaluation.generation import greedy_batch
from neurosteer.evaluation.greedy_loop import greedy_drop_finished, plain_greedy
from neurosteer.model.runtime import pad_id
from neurosteer.prompts.render import Batch, encode_for_model, make_batch

Pair = tuple[PreTrainedModel, PreTrainedTokenizerFast]
N_NEW = 12
#: the smallest gap between the best and second-best logit allowed on the old path's answers,
#: so that float differences between batch shapes cannot flip a greedy choice
MARGIN = 1e-3


@cache
def _tiny(family: str) -> Pair:
    return make_tiny(family)


def _batch(pair: Pair, prompts: list[str]) -> Batch:
    model, tokenizer = pair
    ids = encode_for_model(model, tokenizer, prompts, chat_template=None, reserve=1)
    return make_batch(ids, list(range(len(ids))), pad_id(tokenizer))


def _unstopped(model: PreTrainedModel, batch: Batch, pad: int) -> torch.Tensor:
    """[batch, seq + N_NEW] the greedy answers with no stop token."""
    with torch.inference_mode():
        return greedy_drop_finished(model, batch, N_NEW, pad, [])


def _staggered_stops(free: torch.Tensor, batch: Batch) -> list[int]:
    """Three stop ids, picked one by one from the rows' unstopped answers `free` so that the
    rows of `batch` end at as many different steps as can be."""
    stops: list[int] = []
    for _ in range(3):
        candidates = sorted(set(free[:, batch.input_ids.shape[1] :].flatten().tolist()))
        spread = {v: len(set(_answer_lengths(free, batch, [*stops, v]))) for v in candidates}
        stops.append(max(candidates, key=lambda v: (spread[v], -v)))
    return stops


def _answer_lengths(output: torch.Tensor, batch: Batch, stops: list[int]) -> list[int]:
    new = output[:, batch.input_ids.shape[1] :]
    ends = torch.isin(new, torch.tensor(stops))
    return [int(row.nonzero()[0]) + 1 if row.any() else new.shape[1] for row in ends]


def _old(
    model: PreTrainedModel, batch: Batch, pad: int, stops: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The old path's call (`model.generate`, every row running until the longest ends): its
    output [batch, seq + t], and per row [batch] the smallest top-1 minus top-2 logit over the
    steps up to the row's stop token (later steps of a finished row choose nothing)."""
    out = model.generate(  # type: ignore[operator]
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        max_new_tokens=N_NEW,
        do_sample=False,
        pad_token_id=pad,
        eos_token_id=stops,
        output_logits=True,
        return_dict_in_generate=True,
    )
    top2 = torch.stack(out.logits).float().topk(2, dim=-1).values  # [steps, batch, 2]
    gaps = (top2[..., 0] - top2[..., 1]).T  # [batch, steps]
    lengths = _answer_lengths(out.sequences, batch, stops)
    return out.sequences, torch.stack([gaps[r, :n].min() for r, n in enumerate(lengths)])


def _check_same(pair: Pair, prompts: list[str]) -> tuple[torch.Tensor, list[int]]:
    """Old and new path give the same tokens on `prompts`, with stop ids that end the rows at
    different steps, in every row whose greedy choices are clear (a near-tie may go either way
    with the batch's shape; at least 12 of 16 rows are clear). Returns the unstopped answers
    and the answer lengths."""
    model, tokenizer = pair
    pad, batch = pad_id(tokenizer), _batch(pair, prompts)
    free = _unstopped(model, batch, pad)
    stops = _staggered_stops(free, batch)
    old, margins = _old(model, batch, pad, stops)
    clear = margins > MARGIN
    assert int(clear.sum()) >= 0.75 * len(prompts)
    with torch.inference_mode():
        new = greedy_batch(model, batch, N_NEW, pad, stop_ids=stops)
    assert new.shape == old.shape
    assert torch.equal(new[clear], old[clear])
    return free, _answer_lengths(old, batch, stops)


#: plain and sliding-window caches, rotary and absolute positions, fused projections (the tiny
#: gemma2 answers one token over and over, so its rows cannot be made to end apart)
FAMILIES = ["llama", "qwen2", "gemma3_text", "phi3", "gpt2", "gpt_neox"]


@pytest.mark.parametrize("family", FAMILIES)
def test_dropping_finished_rows_gives_the_answers_of_generate(
    family: str, positive_prompts: list[str], negative_prompts: list[str]
) -> None:
    pair = _tiny(family)
    assert plain_greedy(pair[0])
    _, lengths = _check_same(pair, positive_prompts + negative_prompts)
    assert len(set(lengths)) >= 3  # rows left the batch at several steps


@pytest.fixture(scope="module")
def fitted(positive_prompts: list[str], negative_prompts: list[str]) -> dict[str, Intervention]:
    model, tokenizer = _tiny("llama")
    residual = contrast_vectors(model, tokenizer, positive_prompts, negative_prompts)
    mlp = contrast_vectors(model, tokenizer, positive_prompts, negative_prompts, point="mlp_output")
    circuit = discover(
        model, tokenizer, positive_prompts, negative_prompts, top_k=8, universal_filter=False
    )
    return {
        "Circuit": circuit,
        "CAA": CAA.fit(residual, layer=2),
        "MLPOutputSteering": MLPOutputSteering.fit(mlp),
        "DirectionAblation": DirectionAblation.fit(residual, layer=2),
    }


#: strengths that change the answers clearly (the identity would test nothing)
STRENGTHS = {"Circuit": 2.0, "CAA": -4.0, "MLPOutputSteering": -4.0, "DirectionAblation": 1.0}


@pytest.mark.parametrize("positions", ["all", "prompt", "generated"])
@pytest.mark.parametrize("name", list(STRENGTHS))
def test_steered_answers_are_the_same_when_finished_rows_leave(
    name: str,
    positions: str,
    fitted: dict[str, Intervention],
    positive_prompts: list[str],
    negative_prompts: list[str],
) -> None:
    pair = _tiny("llama")
    model, tokenizer = pair
    prompts = positive_prompts + negative_prompts
    with steer(model, fitted[name], STRENGTHS[name], positions=positions):  # type: ignore[arg-type]
        steered, lengths = _check_same(pair, prompts)
    assert len(set(lengths)) >= 3
    if positions != "prompt":  # "prompt" may leave a short greedy answer as it is
        assert not torch.equal(steered, _unstopped(model, _batch(pair, prompts), pad_id(tokenizer)))


class _Count(BaseStreamer):
    def __init__(self) -> None:
        self.calls: list[torch.Tensor] = []
        self.ended = 0

    def put(self, value: torch.Tensor) -> None:
        self.calls.append(value)

    def end(self) -> None:
        self.ended += 1


def test_the_streamer_sees_each_answer_token_once(
    positive_prompts: list[str], negative_prompts: list[str]
) -> None:
    pair = _tiny("qwen2")
    model, tokenizer = pair
    pad, batch = pad_id(tokenizer), _batch(pair, positive_prompts + negative_prompts)
    stops = _staggered_stops(_unstopped(model, batch, pad), batch)
    counter = _Count()
    with torch.inference_mode():
        out = greedy_batch(model, batch, N_NEW, pad, stop_ids=stops, streamer=counter)
    assert torch.equal(counter.calls[0], batch.input_ids)
    assert counter.ended == 1
    assert sum(len(c) for c in counter.calls[1:]) == sum(_answer_lengths(out, batch, stops))


def test_a_config_that_changes_greedy_answers_stays_on_generate(
    positive_prompts: list[str],
) -> None:
    model, tokenizer = copy.deepcopy(_tiny("llama")[0]), _tiny("llama")[1]
    model.generation_config.repetition_penalty = 5.0
    assert not plain_greedy(model)
    pad, batch = pad_id(tokenizer), _batch((model, tokenizer), positive_prompts)
    stops = [int(model.generation_config.eos_token_id)]
    with torch.inference_mode():
        got = greedy_batch(model, batch, N_NEW, pad, stop_ids=stops)
    assert torch.equal(got, _old(model, batch, pad, stops)[0])
    model.generation_config.repetition_penalty = 1.0
    with torch.inference_mode():
        unpenalised = greedy_batch(model, batch, N_NEW, pad, stop_ids=stops)
    assert not torch.equal(got, unpenalised)  # the penalty was applied
