"""Stage 6: steering hooks. m = 1 is bit-identical, hooks compose and always go away, the
multiplier is live, and generation under steering is the same with and without the KV cache."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerFast

import neurosteer
from neurosteer import Circuit, InputError, discover, render_prompts, steer
from neurosteer.hooks import HookSet, count_hooks

Pair = tuple[PreTrainedModel, PreTrainedTokenizerFast]


def _circuit(pair: Pair, positive: list[str], negative: list[str], k: int = 8) -> Circuit:
    model, tokenizer = pair
    return discover(model, tokenizer, positive, negative, top_k=k, universal_filter=False)


def _batch(tokenizer: PreTrainedTokenizerFast, prompts: list[str]) -> dict[str, torch.Tensor]:
    rendered = render_prompts(tokenizer, prompts)
    return dict(tokenizer(rendered, return_tensors="pt", padding=True, add_special_tokens=False))


def _logits(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


def test_multiplier_one_is_bit_identical_and_zero_is_not(
    tiny_model: Pair, positive_prompts: list[str], negative_prompts: list[str]
) -> None:
    model, tokenizer = tiny_model
    circuit = _circuit(tiny_model, positive_prompts, negative_prompts)
    batch = _batch(tokenizer, positive_prompts[:4])
    base = _logits(model, batch)
    with steer(model, circuit, strength=1.0):
        assert torch.equal(_logits(model, batch), base)
    with steer(model, circuit, strength=0.0):
        ablated = _logits(model, batch)
    assert not torch.allclose(ablated, base, atol=1e-3)
    assert torch.equal(_logits(model, batch), base)  # gone after the block


def test_hooks_are_removed_after_an_exception(
    tiny_llama: Pair, positive_prompts: list[str], negative_prompts: list[str]
) -> None:
    model, _ = tiny_llama
    circuit = _circuit(tiny_llama, positive_prompts, negative_prompts)
    before = count_hooks(model)
    inside: list[int] = []

    def fail_inside_the_block() -> None:
        with steer(model, circuit, 0.0):
            inside.append(count_hooks(model))
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fail_inside_the_block()
    assert inside[0] > before
    assert count_hooks(model) == before


def test_hooks_are_removed_when_registration_fails_half_way(
    tiny_llama: Pair,
    positive_prompts: list[str],
    negative_prompts: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model, _ = tiny_llama
    circuit = _circuit(tiny_llama, positive_prompts, negative_prompts, k=20)
    assert len(circuit.neurons_per_layer()) >= 2
    before = count_hooks(model)
    real_pre = HookSet.pre
    calls = {"n": 0}

    def flaky_pre(self: HookSet, module: torch.nn.Module, fn: object) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("registration failed")
        real_pre(self, module, fn)  # type: ignore[arg-type]

    monkeypatch.setattr(HookSet, "pre", flaky_pre)
    with pytest.raises(RuntimeError, match="registration failed"):
        steer(model, circuit, 0.0)
    assert count_hooks(model) == before


def test_multiplier_changes_inside_the_block(
    tiny_llama: Pair, positive_prompts: list[str], negative_prompts: list[str]
) -> None:
    model, tokenizer = tiny_llama
    circuit = _circuit(tiny_llama, positive_prompts, negative_prompts)
    batch = _batch(tokenizer, negative_prompts[:3])
    with steer(model, circuit, 2.0):
        doubled = _logits(model, batch)
    with steer(model, circuit, 0.0) as handle:
        ablated = _logits(model, batch)
        handle.multiplier = 2.0
        torch.testing.assert_close(_logits(model, batch), doubled, rtol=0, atol=0)
        with pytest.raises(InputError):
            handle.multiplier = float("nan")
    assert not torch.allclose(ablated, doubled)


def test_nested_circuits_compose_multiplicatively(
    tiny_model: Pair, positive_prompts: list[str], negative_prompts: list[str]
) -> None:
    model, tokenizer = tiny_model
    circuit = _circuit(tiny_model, positive_prompts, negative_prompts)
    batch = _batch(tokenizer, positive_prompts[:3])
    base = _logits(model, batch)
    with steer(model, circuit, 3.0):
        tripled = _logits(model, batch)
        with steer(model, circuit, 0.5):
            both = _logits(model, batch)
    with steer(model, circuit, 1.5):
        expected = _logits(model, batch)
    torch.testing.assert_close(both, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(tripled, base, atol=1e-3)
    # a list of circuits is the same as nesting them
    other = circuit.random_like(seed=1)
    with steer(model, circuit, 0.0), steer(model, other, 0.0):
        nested = _logits(model, batch)
    with steer(model, [circuit, other], 0.0):
        listed = _logits(model, batch)
    torch.testing.assert_close(nested, listed, rtol=0, atol=0)


def _greedy(model: PreTrainedModel, batch: dict[str, torch.Tensor], **kw: object) -> Any:
    """Greedy generation with the scores of every step (tokens alone often collapse)."""
    with torch.no_grad():
        return model.generate(  # type: ignore[operator]
            **batch,
            max_new_tokens=6,
            min_new_tokens=6,
            do_sample=False,
            return_dict_in_generate=True,
            output_scores=True,
            **kw,
        )


def _same(a: Any, b: Any) -> bool:
    """Same tokens and (to float tolerance) the same scores at every step."""
    return torch.equal(a.sequences, b.sequences) and all(
        torch.allclose(x, y, rtol=1e-4, atol=1e-4) for x, y in zip(a.scores, b.scores, strict=True)
    )


def test_cached_generation_equals_uncached_under_steering(
    tiny_model: Pair, positive_prompts: list[str], negative_prompts: list[str]
) -> None:
    model, tokenizer = tiny_model
    circuit = _circuit(tiny_model, positive_prompts, negative_prompts)
    batch = _batch(tokenizer, positive_prompts[:3])  # left-padded batch of 3 lengths
    with steer(model, circuit, 0.0):
        cached = _greedy(model, batch, use_cache=True)
        uncached = _greedy(model, batch, use_cache=False)
    assert _same(cached, uncached)
    assert not _same(cached, _greedy(model, batch))  # steering changed something


def test_batched_steered_generation_equals_one_prompt_at_a_time(
    tiny_llama: Pair, positive_prompts: list[str], negative_prompts: list[str]
) -> None:
    model, tokenizer = tiny_llama
    circuit = _circuit(tiny_llama, positive_prompts, negative_prompts)
    prompts = positive_prompts[:4]
    with steer(model, circuit, 0.0):
        together = neurosteer.generate(model, tokenizer, prompts, max_new_tokens=6, batch_size=4)
        alone = [neurosteer.generate(model, tokenizer, [p], max_new_tokens=6)[0] for p in prompts]
    assert together == alone


def test_generated_only_leaves_the_prompt_before_its_last_token_untouched(
    tiny_model: Pair, positive_prompts: list[str], negative_prompts: list[str]
) -> None:
    model, tokenizer = tiny_model
    circuit = _circuit(tiny_model, positive_prompts, negative_prompts)
    batch = _batch(tokenizer, positive_prompts[:2])
    base = _logits(model, batch)
    with steer(model, circuit, 0.0, positions="generated"):
        steered = _logits(model, batch)
        cached = _greedy(model, batch)
    # a prompt pass is steered only at its last position, whose output is the first answer token
    # (pad positions attend to every column when fully masked, so only real tokens are compared)
    real = batch["attention_mask"][:, :-1].bool()
    torch.testing.assert_close(steered[:, :-1][real], base[:, :-1][real], rtol=0, atol=0)
    assert not torch.allclose(steered[:, -1], base[:, -1], atol=1e-4)
    width = batch["input_ids"].shape[1]
    with steer(model, circuit, 0.0, positions="generated", prompt_length=width):
        uncached = _greedy(model, batch, use_cache=False)
    plain = _greedy(model, batch)
    assert _same(cached, uncached)
    # the first step's scores come from the steered last prompt position; later steps too
    assert not torch.allclose(cached.scores[0], plain.scores[0], atol=1e-4)
    assert not torch.allclose(cached.scores[-1], plain.scores[-1], atol=1e-4)


def test_prompt_only_steers_the_prompt_pass_and_not_the_new_tokens(
    tiny_model: Pair, positive_prompts: list[str], negative_prompts: list[str]
) -> None:
    model, tokenizer = tiny_model
    circuit = _circuit(tiny_model, positive_prompts, negative_prompts)
    batch = _batch(tokenizer, positive_prompts[:2])
    with steer(model, circuit, 0.0):
        everywhere = _logits(model, batch)
    with steer(model, circuit, 0.0, positions="prompt"):
        assert torch.equal(_logits(model, batch), everywhere)  # a prompt pass is all prompt
        cached = _greedy(model, batch)
    width = batch["input_ids"].shape[1]
    with steer(model, circuit, 0.0, positions="prompt", prompt_length=width):
        uncached = _greedy(model, batch, use_cache=False)
    with steer(model, circuit, 0.0):
        steered_everywhere = _greedy(model, batch)
    assert _same(cached, uncached)
    torch.testing.assert_close(cached.scores[0], steered_everywhere.scores[0], rtol=0, atol=0)
    assert not torch.allclose(cached.scores[-1], steered_everywhere.scores[-1], atol=1e-4)


def test_bad_steering_arguments_are_input_errors(
    tiny_llama: Pair, positive_prompts: list[str], negative_prompts: list[str]
) -> None:
    model, _ = tiny_llama
    circuit = _circuit(tiny_llama, positive_prompts, negative_prompts)
    before = count_hooks(model)
    with pytest.raises(InputError, match="positions"):
        steer(model, circuit, 0.0, positions="middle")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="finite"):
        steer(model, circuit, float("inf"))
    with pytest.raises(InputError, match="at least one circuit"):
        steer(model, [], 0.0)
    assert count_hooks(model) == before
