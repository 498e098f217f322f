"""Mixture-of-experts models: per-expert neurons are found, steered and baked exactly, on a
tiny random-init model of each MoE family (routed experts in fused 3-D storage, shared
experts, dense first layers, gpt-oss's transposed, biased and clamped experts)."""

from __future__ import annotations

import copy
import dataclasses
from functools import cache
from pathlib import Path

import pytest
import torch
from tiny_models import MOE_EXPERTS, MOE_FAMILIES, MOE_WIDTH, N_LAYERS, make_tiny
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from conftest import NEGATIVE_PROMPTS, POSITIVE_PROMPTS
from neurosteer import Circuit, bake, discover, render_prompts, resolve_layout, steer
from neurosteer.errors import CircuitMismatchError
from neurosteer.hooks import count_hooks
from neurosteer.hooks.experts import expert_neurons

Pair = tuple[PreTrainedModel, PreTrainedTokenizerFast]


@cache
def _tiny(family: str) -> Pair:
    return make_tiny(family)


@cache
def _circuit(family: str) -> Circuit:
    model, tokenizer = _tiny(family)
    return discover(
        model,
        tokenizer,
        POSITIVE_PROMPTS,
        NEGATIVE_PROMPTS,
        top_k=12,
        skip_layers=(),
        universal_filter=False,  # the neutral set would take most of the time here
    )


def _batch(tokenizer: PreTrainedTokenizerFast, prompts: list[str]) -> dict[str, torch.Tensor]:
    rendered = render_prompts(tokenizer, prompts)
    return dict(tokenizer(rendered, return_tensors="pt", padding=True, add_special_tokens=False))


def _logits(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch, use_cache=False).logits


@pytest.mark.parametrize("family", MOE_FAMILIES)
@pytest.mark.parametrize("multiplier", [0.0, 2.5])
def test_hook_equals_bake_on_every_moe_family(family: str, multiplier: float) -> None:
    model, tokenizer = copy.deepcopy(_tiny(family)[0]), _tiny(family)[1]
    circuit = _circuit(family)
    batch = _batch(tokenizer, POSITIVE_PROMPTS[:3] + NEGATIVE_PROMPTS[:2])
    base = _logits(model, batch)
    hooks = count_hooks(model)
    with steer(model, circuit, multiplier):
        hooked = _logits(model, batch)
    assert count_hooks(model) == hooks
    assert model.config._experts_implementation == "eager"
    handle = bake(model, circuit, multiplier)
    baked = _logits(model, batch)
    handle.undo()
    torch.testing.assert_close(baked, hooked, rtol=1e-4, atol=1e-4)
    assert (hooked - base).abs().max() > 0.1  # the edit is not a no-op
    assert torch.equal(_logits(model, batch), base)  # undo is exact


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_identity_strength_is_bit_identical_and_circuit_sits_in_experts(family: str) -> None:
    model, tokenizer = _tiny(family)
    circuit = _circuit(family)
    batch = _batch(tokenizer, POSITIVE_PROMPTS[:4])
    base = _logits(model, batch)
    with steer(model, circuit, 1.0):
        assert torch.equal(_logits(model, batch), base)
    names = [
        circuit.model.neuron_name(int(a), int(b))
        for a, b in zip(circuit.layers, circuit.neurons, strict=True)
    ]
    assert any(name.startswith("E") for name in names)  # routed experts are reached
    width = resolve_layout(model).moe.widths  # type: ignore[union-attr]
    assert all(
        int(n) < width[int(layer)] for layer, n in zip(circuit.layers, circuit.neurons, strict=True)
    )


def _routed_at_last(
    model: PreTrainedModel, layer: int, batch: dict[str, torch.Tensor]
) -> dict[int, float]:
    """{expert: routing weight} of the experts the router chose at the last token of a
    one-prompt batch in `layer`."""
    seen: dict[str, torch.Tensor] = {}
    experts = model.model.layers[layer].mlp.experts
    hook = experts.register_forward_pre_hook(lambda _m, args: seen.update(idx=args[1], w=args[2]))
    _logits(model, batch)
    hook.remove()
    return dict(zip(seen["idx"][-1].tolist(), seen["w"][-1].tolist(), strict=True))


@pytest.mark.parametrize("rule", ["routed", "weighted", "every"])
def test_recording_follows_the_routing_rule_at_the_last_token(
    rule: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from neurosteer.methods import moe_sites
    from neurosteer.methods.recording import run_last_token_pass

    monkeypatch.setattr(moe_sites, "DEFAULT_RULE", rule)
    model, tokenizer = _tiny("qwen2_moe")
    layout = resolve_layout(model)
    layer = 2
    mlp = model.model.layers[layer].mlp
    inputs: dict[str, torch.Tensor] = {}
    for prompt in POSITIVE_PROMPTS[:4]:  # one at a time: a pass sorts its prompts by length
        batch = _batch(tokenizer, [prompt])
        got: dict[int, torch.Tensor] = {}
        ids = [batch["input_ids"][0].tolist()]
        run_last_token_pass(model, layout, ids, batch_size=8, pad_id=0, on_layer=got.__setitem__)
        chosen = _routed_at_last(model, layer, batch)
        handle = mlp.register_forward_pre_hook(lambda _m, args: inputs.update(x=args[0]))
        _logits(model, batch)
        handle.remove()
        x_last = inputs["x"][:, -1]  # [1, H]
        assert len(chosen) == 2
        for e in range(MOE_EXPERTS):
            recorded = got[layer][0, e * MOE_WIDTH : (e + 1) * MOE_WIDTH]
            expected = expert_neurons(mlp.experts, x_last, e)[0]
            if rule == "weighted":
                expected = expected * chosen.get(e, 0.0)
            elif rule == "routed" and e not in chosen:
                expected = torch.zeros_like(expected)
            torch.testing.assert_close(recorded, expected, rtol=1e-5, atol=1e-5)
            assert (torch.count_nonzero(recorded) == 0) == (rule != "every" and e not in chosen)
        shared = got[layer][0, MOE_EXPERTS * MOE_WIDTH :]
        assert torch.count_nonzero(shared) > shared.numel() // 2  # the shared expert always runs


def test_generated_positions_leave_the_prompt_untouched() -> None:
    model, tokenizer = _tiny("deepseek_v3")
    circuit = _circuit("deepseek_v3")
    batch = _batch(tokenizer, POSITIVE_PROMPTS[:3])
    width = batch["input_ids"].shape[1]
    base = _logits(model, batch)
    with steer(model, circuit, 0.0, positions="generated", prompt_length=width - 2):
        gen = _logits(model, batch)
    with steer(model, circuit, 0.0, positions="prompt", prompt_length=width - 2):
        prompt = _logits(model, batch)
    real = batch["attention_mask"][:, : width - 3].bool()  # a pad position sees the whole row
    assert torch.equal(gen[:, : width - 3][real], base[:, : width - 3][real])  # before P - 1
    assert (gen[:, width - 3 :] - base[:, width - 3 :]).abs().max() > 1e-3
    assert (prompt - base).abs().max() > 1e-3


def test_moe_circuit_file_round_trips_with_its_experts(tmp_path: Path) -> None:
    circuit = _circuit("deepseek_v3")
    loaded = Circuit.load(circuit.save(tmp_path / "moe.circuit"))
    assert loaded.model.neuron_blocks == circuit.model.neuron_blocks
    assert loaded.model.neuron_blocks[0] == [["dense", 0, 1, 37]]  # type: ignore[index]
    assert loaded.model.neuron_name(1, 2 * MOE_WIDTH + 5) == "E2 n5"
    valid = loaded.model.valid_mask()
    assert int(valid[0].sum()) == 37
    assert bool(valid[1].all())
    control = loaded.random_like(seed=3, per_layer=False)
    assert bool(valid[control.layers, control.neurons].all())  # never past a layer's end
    assert bool(loaded.candidates()[0, 37:].any()) is False
    again = discover(
        *_tiny("deepseek_v3"),
        POSITIVE_PROMPTS,
        NEGATIVE_PROMPTS,
        top_k=5,
        skip_layers=(),
        keep_table=True,
        universal_filter=False,
    ).reselect(top_k=400)
    assert bool(valid[again.layers, again.neurons].all())


def test_layers_count_every_expert() -> None:
    model, _ = _tiny("mixtral")
    layout = resolve_layout(model)
    assert layout.n_neurons == N_LAYERS * MOE_EXPERTS * MOE_WIDTH


@pytest.mark.parametrize("family", MOE_FAMILIES)
@pytest.mark.parametrize("rule", ["weighted", "every"])
def test_last_block_runs_on_the_last_tokens_alone_with_the_same_values(
    family: str, rule: str
) -> None:
    from neurosteer.hooks import HookSet, StopForward
    from neurosteer.methods.moe_sites import add_moe_recorders
    from neurosteer.methods.recording import last_token_index

    model, tokenizer = _tiny(family)
    layout = resolve_layout(model)
    batch = _batch(tokenizer, POSITIVE_PROMPTS[:3] + NEGATIVE_PROMPTS[:2])  # left-padded
    last = lambda: last_token_index(batch["attention_mask"])  # noqa: E731
    runs: dict[bool, dict[int, torch.Tensor]] = {}
    widths: list[int] = []
    final = model.model.layers[-1].mlp
    for stop in (False, True):
        got: dict[int, torch.Tensor] = {}
        with HookSet() as hooks, torch.no_grad():
            add_moe_recorders(
                hooks, model, layout, last, got.__setitem__, rule=rule, stop_after_last=stop
            )
            hooks.pre(final, lambda _m, args: widths.append(args[0].shape[1]))
            try:
                model(**batch, use_cache=False)
            except StopForward:
                assert stop
        runs[stop] = got
    assert widths == [batch["input_ids"].shape[1], 1]  # the full sequence, then the last tokens
    for layer in range(N_LAYERS - 1):
        assert torch.equal(runs[True][layer], runs[False][layer])
    full, alone = runs[False][N_LAYERS - 1], runs[True][N_LAYERS - 1]
    assert torch.equal(full == 0, alone == 0)  # the same experts routed at each last token
    torch.testing.assert_close(alone, full, rtol=1e-5, atol=1e-6)
    assert torch.count_nonzero(full) > 0


def test_discovery_keeps_the_activations_of_neurons_past_the_narrow_layers() -> None:
    # DeepSeek-V3's dense first layer is narrower than the expert layers, so its model has
    # fewer neurons (520) than flat indices (4 x 161); the last layer's neurons sit past 520
    from neurosteer.methods.recording import record_prompt_activations
    from neurosteer.prompts.render import encode_prompts

    model, tokenizer = _tiny("deepseek_v3")
    layout = resolve_layout(model)
    circuit = discover(
        model,
        tokenizer,
        POSITIVE_PROMPTS,
        NEGATIVE_PROMPTS,
        top_k=50,
        skip_layers=(0, 1, 2),
        universal_filter=False,
    )
    flat = circuit.layers * layout.d_mlp + circuit.neurons
    assert int(flat.max()) >= layout.n_neurons
    assert circuit.discovery is not None
    assert circuit.discovery.activations is not None
    again = record_prompt_activations(
        model,
        layout,
        encode_prompts(tokenizer, POSITIVE_PROMPTS),
        circuit.layers,
        circuit.neurons,
        batch_size=16,
        pad_id=0,
    )
    torch.testing.assert_close(circuit.discovery.activations["positive"], again)


@pytest.mark.parametrize(
    ("layer", "neuron", "expected"),
    [
        (0, 40, "neuron 40 of layer 0, which has 37 neurons (dense 37)"),
        (1, 999, f"neuron 999 of layer 1, which has {(MOE_EXPERTS + 2) * MOE_WIDTH} neurons "),
    ],
)
def test_an_index_past_its_layer_names_the_layer_its_width_and_the_fix(
    layer: int, neuron: int, expected: str
) -> None:
    model, _ = _tiny("deepseek_v3")
    good = _circuit("deepseek_v3")
    bad = dataclasses.replace(
        good,
        layers=torch.tensor([layer]),
        neurons=torch.tensor([neuron]),
        delta=good.delta[:1],
        positive_mean=good.positive_mean[:1],
        negative_mean=good.negative_mean[:1],
        discovery=None,
    )
    with pytest.raises(CircuitMismatchError) as caught:
        bad.check_fits(resolve_layout(model))
    message = str(caught.value)
    assert expected in message
    assert "discover it again on this model" in message
    assert "\n" not in message
    if layer == 1:
        assert f"(routed {MOE_EXPERTS} experts x {MOE_WIDTH} + shared {2 * MOE_WIDTH})" in message
