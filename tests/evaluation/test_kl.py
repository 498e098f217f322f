"""KL to the unsteered model: 0 for a no-op, positive for ablation, equal to a hand computation."""

from __future__ import annotations

import pytest
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from interventions import CircuitIntervention, HookIntervention
from neurosteer import Circuit, InputError, discover, render_prompts, steer
from neurosteer.evaluation import kl_to_reference
from neurosteer.evaluation.kl import _continuation_mask

Pair = tuple[PreTrainedModel, PreTrainedTokenizerFast]


@pytest.fixture(scope="module")
def circuit(tiny_llama: Pair, positive_prompts: list[str], negative_prompts: list[str]) -> Circuit:
    model, tokenizer = tiny_llama
    return discover(
        model, tokenizer, positive_prompts, negative_prompts, top_k=12, universal_filter=False
    )


def test_no_op_intervention_gives_zero(
    tiny_llama: Pair, circuit: Circuit, negative_prompts: list[str]
) -> None:
    model, tokenizer = tiny_llama
    report = kl_to_reference(
        model,
        tokenizer,
        negative_prompts,
        intervention=CircuitIntervention(circuit),
        strength=1.0,
        max_new_tokens=6,
        batch_size=3,
    )
    assert (report.max_new_tokens, len(report.n_positions)) == (6, len(negative_prompts))
    assert report.first_token < 1e-6
    assert report.mean < 1e-6
    assert len(report.per_prompt_mean) == len(negative_prompts)


def test_ablation_moves_the_distribution(
    tiny_llama: Pair, circuit: Circuit, negative_prompts: list[str]
) -> None:
    model, tokenizer = tiny_llama
    before = model(**tokenizer(["Name a fruit."], return_tensors="pt")).logits
    report = kl_to_reference(
        model,
        tokenizer,
        negative_prompts,
        intervention=CircuitIntervention(circuit),
        strength=0.0,
        max_new_tokens=6,
        batch_size=3,
    )
    assert report.first_token > 0
    assert report.mean > 0
    assert all(x > 0 for x in report.per_prompt_first)
    assert report.first_token == pytest.approx(sum(report.per_prompt_first) / len(negative_prompts))
    # the intervention was undone: the model is unchanged afterwards
    after = model(**tokenizer(["Name a fruit."], return_tensors="pt")).logits
    assert torch.equal(before, after)


def _kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> float:
    p = torch.softmax(p_logits.double(), -1)
    q = torch.softmax(q_logits.double(), -1)
    return float((p * (p.log() - q.log())).sum())


def test_matches_a_hand_computation(tiny_llama: Pair, circuit: Circuit) -> None:
    # one prompt, no padding, no cache: grow the prefix one token at a time and compare the last
    # logits with and without ablation, in float64
    model, tokenizer = tiny_llama
    prompt = "Explain how rainbows form."
    n_new = 5
    report = kl_to_reference(
        model,
        tokenizer,
        [prompt],
        intervention=CircuitIntervention(circuit),
        strength=0.0,
        max_new_tokens=n_new,
    )
    rendered = render_prompts(tokenizer, [prompt])[0]
    ids = tokenizer(rendered, add_special_tokens=False, return_tensors="pt")["input_ids"]
    kls = []
    with torch.no_grad():
        for _ in range(n_new):
            ref = model(ids, use_cache=False).logits[0, -1]
            with steer(model, circuit, 0.0):
                abl = model(ids, use_cache=False).logits[0, -1]
            kls.append(_kl(ref, abl))
            token = int(ref.argmax())
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
            if token == tokenizer.eos_token_id:
                break
    assert report.n_positions == (len(kls),)
    assert report.first_token == pytest.approx(kls[0], rel=1e-4, abs=1e-7)
    assert report.mean == pytest.approx(sum(kls) / len(kls), rel=1e-4, abs=1e-7)


def test_padding_does_not_change_the_result(
    tiny_llama: Pair, circuit: Circuit, negative_prompts: list[str]
) -> None:
    model, tokenizer = tiny_llama
    kw = {"intervention": CircuitIntervention(circuit), "strength": 0.0, "max_new_tokens": 4}
    batched = kl_to_reference(model, tokenizer, negative_prompts[:4], batch_size=4, **kw)
    single = kl_to_reference(model, tokenizer, negative_prompts[:4], batch_size=1, **kw)
    assert batched.per_prompt_first == pytest.approx(single.per_prompt_first, rel=1e-3, abs=1e-6)
    assert batched.per_prompt_mean == pytest.approx(single.per_prompt_mean, rel=1e-3, abs=1e-6)


def test_positions_after_end_of_sequence_are_not_scored() -> None:
    eos, pad = 3, 0
    new = torch.tensor([[5, 6, 7, 8], [5, eos, pad, pad], [eos, eos, eos, eos]])
    expected = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.float)
    assert torch.equal(_continuation_mask(new, {eos}), expected)


def test_input_errors(tiny_llama: Pair, circuit: Circuit) -> None:
    model, tokenizer = tiny_llama
    ablate = CircuitIntervention(circuit)
    with pytest.raises(InputError, match="non-empty list"):
        kl_to_reference(model, tokenizer, [], intervention=ablate)
    with pytest.raises(InputError, match="max_new_tokens"):
        kl_to_reference(model, tokenizer, ["hi"], intervention=ablate, max_new_tokens=0)


def test_the_intervention_is_entered_per_batch_at_the_strength_given(
    tiny_llama: Pair, circuit: Circuit, negative_prompts: list[str]
) -> None:
    model, tokenizer = tiny_llama
    seen = HookIntervention()
    kl_to_reference(
        model, tokenizer, negative_prompts[:5], intervention=seen, strength=0.25, batch_size=2
    )
    assert seen.calls == [0.25, 0.25, 0.25]  # 5 prompts in batches of 2
    # no strength: the intervention's own default (a circuit's is 0, full ablation)
    kw = {"max_new_tokens": 3, "batch_size": 4}
    default = kl_to_reference(
        model, tokenizer, negative_prompts, intervention=CircuitIntervention(circuit), **kw
    )
    ablated = kl_to_reference(
        model,
        tokenizer,
        negative_prompts,
        intervention=CircuitIntervention(circuit),
        strength=0.0,
        **kw,
    )
    assert default == ablated
    assert default.mean > 0
