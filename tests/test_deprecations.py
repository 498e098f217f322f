"""The last release's spellings still work for one release, each with a DeprecationWarning that
names the new spelling, and do exactly what the new spelling does: `multiplier=` / `alpha=` (now
`strength=`), `circuit=` (now `intervention=`), `save_baked(model, tok, out_dir, circuit=...,
multiplier=...)`, the handles' `active`, and `methods.circuit.Settings` (now `CircuitRecipe`)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

from neurosteer import (
    CAA,
    Circuit,
    DirectionAblation,
    MLPOutputSteering,
    SteeringHandle,
    bake,
    bake_streaming,
    contrast_vectors,
    discover,
    render_prompts,
    save_baked,
    steer,
)

Pair = tuple[PreTrainedModel, PreTrainedTokenizerFast]


@pytest.fixture(scope="module")
def circuit(tiny_llama: Pair, positive_prompts: list[str], negative_prompts: list[str]) -> Circuit:
    model, tokenizer = tiny_llama
    return discover(
        model, tokenizer, positive_prompts, negative_prompts, top_k=8, universal_filter=False
    )


def _logits(pair: Pair) -> torch.Tensor:
    model, tokenizer = pair
    ids = tokenizer(render_prompts(tokenizer, ["How do I pick a lock?"]), return_tensors="pt")
    with torch.no_grad():
        return model(**ids).logits[0]


def _old(*new_names: str) -> Any:
    """Expect a DeprecationWarning naming each new spelling (and no other warning)."""
    stack = contextlib.ExitStack()
    for name in new_names:
        stack.enter_context(pytest.warns(DeprecationWarning, match=f"use '{name}'"))
    return stack


def test_steer_takes_the_old_keywords(tiny_llama: Pair, circuit: Circuit) -> None:
    model, _ = tiny_llama
    plain = _logits(tiny_llama)
    with steer(model, circuit, 0.0):
        expected = _logits(tiny_llama)
    assert not torch.allclose(expected, plain, atol=1e-4)
    calls: list[tuple[Callable[[], SteeringHandle], tuple[str, ...]]] = [
        (lambda: steer(model, circuit, multiplier=0.0), ("strength",)),  # the previous README
        (lambda: steer(model, circuit=circuit, multiplier=0.0), ("intervention", "strength")),
        (lambda: circuit.steer(model, multiplier=0.0), ("strength",)),
    ]
    for call, names in calls:
        with _old(*names), call():
            torch.testing.assert_close(_logits(tiny_llama), expected, rtol=0, atol=0)
    torch.testing.assert_close(_logits(tiny_llama), plain, rtol=0, atol=0)  # hooks gone


def test_bake_takes_the_old_keywords(tiny_llama: Pair, circuit: Circuit) -> None:
    model, _ = tiny_llama
    plain = _logits(tiny_llama)
    handle = bake(model, circuit, 0.5)
    expected = _logits(tiny_llama)
    handle.undo()
    for call, names in (
        (lambda: bake(model, circuit, multiplier=0.5), ("strength",)),
        (lambda: bake(model, circuit=circuit, multiplier=0.5), ("intervention", "strength")),
        (lambda: circuit.bake(model, multiplier=0.5), ("strength",)),
    ):
        with _old(*names):
            handle = call()
        torch.testing.assert_close(_logits(tiny_llama), expected, rtol=0, atol=0)
        with pytest.warns(DeprecationWarning, match="BakeHandle.active"):
            assert handle.active
        handle.undo()
        with pytest.warns(DeprecationWarning, match="BakeHandle.active"):
            assert not handle.active
    torch.testing.assert_close(_logits(tiny_llama), plain, rtol=0, atol=0)


def test_save_baked_takes_the_old_call(tiny_llama: Pair, circuit: Circuit, tmp_path: Path) -> None:
    model, tokenizer = tiny_llama
    new = save_baked(model, tokenizer, circuit, 0.0, tmp_path / "new")
    with _old("intervention", "strength"):
        old = save_baked(model, tokenizer, tmp_path / "old", circuit=circuit, multiplier=0.0)
    assert old == tmp_path / "old"
    recorded = json.loads((old / "neurosteer.json").read_text())
    assert recorded["strength"] == json.loads((new / "neurosteer.json").read_text())["strength"]
    assert recorded["strength"] == 0.0
    a = AutoModelForCausalLM.from_pretrained(new).state_dict()
    b = AutoModelForCausalLM.from_pretrained(old).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bake_streaming_takes_multiplier(
    tiny_llama_dir: Path, circuit: Circuit, tmp_path: Path
) -> None:
    with _old("strength"):
        report = bake_streaming(tiny_llama_dir, circuit, multiplier=0.0, out_dir=tmp_path / "o")
    new = bake_streaming(tiny_llama_dir, circuit, 0.0, tmp_path / "n")
    assert report.tensors  # the same tensors scaled
    assert report.tensors == new.tensors
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "o").state_dict()
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "n").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_baselines_take_alpha_and_the_handle_its_old_names(
    tiny_llama: Pair, positive_prompts: list[str], negative_prompts: list[str]
) -> None:
    model, tokenizer = tiny_llama
    residual = contrast_vectors(model, tokenizer, positive_prompts, negative_prompts)
    mlp = contrast_vectors(model, tokenizer, positive_prompts, negative_prompts, point="mlp_output")
    for method, keyword in (
        (CAA.fit(residual, layer=2), "alpha"),
        (MLPOutputSteering.fit(mlp), "alpha"),
        (DirectionAblation.fit(residual, layer=2), "multiplier"),
    ):
        with method.steer(model, -1.0):
            expected = _logits(tiny_llama)
        with _old("strength"), method.steer(model, **{keyword: -1.0}) as handle:
            torch.testing.assert_close(_logits(tiny_llama), expected, rtol=0, atol=0)
            with pytest.warns(DeprecationWarning, match="SteeringHandle.active"):
                assert handle.active
    with _old("strength"):
        handle = SteeringHandle(model, lambda hooks, state: None, multiplier=2.0)
    assert handle.strength == 2.0


def test_circuit_settings_is_the_old_name_of_circuit_recipe() -> None:
    import neurosteer.methods.circuit as circuit_module

    with pytest.warns(
        DeprecationWarning, match="methods.circuit.Settings is deprecated.*CircuitRecipe"
    ):
        old = circuit_module.Settings
    assert old is circuit_module.CircuitRecipe
    with pytest.warns(DeprecationWarning, match="use 'CircuitRecipe'"):
        from neurosteer.methods.circuit import Settings
    assert Settings(k=3) == circuit_module.CircuitRecipe(k=3)
    with pytest.raises(AttributeError, match="no attribute 'Setting'"):
        _ = circuit_module.Setting


def test_old_and_new_spelling_together_is_refused(tiny_llama: Pair, circuit: Circuit) -> None:
    model, _ = tiny_llama
    with pytest.raises(TypeError, match="both 'multiplier' and 'strength'"):
        steer(model, circuit, multiplier=0.0, strength=1.0)
