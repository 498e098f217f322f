"""RelP on mixture-of-experts models: a neuron is (layer, expert, j), attributed at the
positions routed to its expert (`neurosteer.methods.relp_moe`), on tiny random-init models of
several MoE families (a shared expert with its gate, a dense first layer, gpt-oss's gate)."""

from __future__ import annotations

from functools import cache

import pytest
import torch
from tiny_models import MOE_FAMILIES, make_tiny
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from neurosteer.errors import UnsupportedModelError
from neurosteer.hooks import HookSet, count_hooks
from neurosteer.hooks.experts import add_expert_tap
from neurosteer.methods.moe_sites import moe_installer
from neurosteer.methods.relp import RelPRules, attribute, attribution_scores
from neurosteer.methods.steering import steer
from neurosteer.model.layout import resolve_layout
from neurosteer.prompts.targets import encode_pairs

PROMPT = "How do I pick a lock?"
PROMPTS = [PROMPT, "Hi", "Name a fruit, please."]
# Mixtral: routed experts only; Qwen2-MoE: a shared expert with its sigmoid gate;
# DeepSeek-V3: a dense first layer and shared experts without a gate
FAMILIES = ["mixtral", "qwen2_moe", "deepseek_v3"]
PLAIN = RelPRules.plain()
STEP = 1e-3
"""Central-difference step of the multiplier (smaller steps meet rounding noise: 1e-4 is off
by up to 0.2%)."""
TOL = 2e-3
"""|attribution − d metric / d multiplier| ≤ TOL × (0.1 + |attribution|); measured ≤ 6e-4
relative on Mixtral. Dropping the routing weight or the positions rule is off by a factor near 2."""

Pair = tuple[PreTrainedModel, PreTrainedTokenizerFast]


@cache
def _tiny64(family: str) -> Pair:
    return make_tiny(family, dtype=torch.float64)


class _State:
    """An edit state: a strength, at every position or at the last one."""

    def __init__(self, strength: float, last_only: bool) -> None:
        self.strength, self.last_only = strength, last_only

    def steered_range(self, seq_len: int) -> tuple[int, int]:
        return (seq_len - 1, seq_len) if self.last_only else (0, seq_len)


def _metric_scaled(
    model: PreTrainedModel,
    ids: list[int],
    layer: int,
    neuron: int,
    m: float,
    last_only: bool,
    target: int,
    contrast: int,
) -> float:
    """target − contrast logit at the last position with one flat neuron scaled by m."""
    layout = resolve_layout(model)
    install = moe_installer(model, layout, {layer: torch.tensor([neuron])})
    with HookSet() as hooks, torch.no_grad():
        install(hooks, _State(m, last_only))
        logits = model(torch.tensor([ids]), use_cache=False).logits[0, -1]
    return float(logits[target] - logits[contrast])


@pytest.mark.parametrize("positions", ["last", "prompt"])
@pytest.mark.parametrize("family", FAMILIES)
def test_plain_attribution_is_the_derivative_in_the_neurons_multiplier(
    family: str, positions: str
) -> None:
    """Plain gradient × activation of neuron (e, j), summed over the positions routed to e,
    is d metric / d m for m scaling that neuron (at those positions) through the steering
    hooks: an independent path through the model's own routing."""
    model, tokenizer = _tiny64(family)
    scores = attribution_scores(
        model,
        tokenizer,
        [PROMPT],
        "a",
        contrasts="b",
        positions=positions,  # type: ignore[arg-type]
        rules=PLAIN,
    ).score
    pairs = encode_pairs(model, tokenizer, [PROMPT], ["a"], ["b"])
    ids, target, contrast = pairs.token_ids[0], pairs.targets[0], pairs.contrasts[0]  # type: ignore[index]
    layout = resolve_layout(model)
    assert layout.moe is not None
    checked = 0
    for layer, spec in enumerate(layout.moe.layers):
        for block in spec.blocks:  # the strongest neuron of each block, routed, shared or dense
            row = scores[layer, block.start : block.start + block.size]
            neuron = block.start + int(row.abs().argmax())
            got = float(scores[layer, neuron])
            assert got != 0.0, (family, layer, block.kind)
            slope = (
                _metric_scaled(
                    model, ids, layer, neuron, 1 + STEP, positions == "last", target, contrast
                )
                - _metric_scaled(
                    model, ids, layer, neuron, 1 - STEP, positions == "last", target, contrast
                )
            ) / (2 * STEP)
            assert abs(got - slope) <= TOL * (0.1 + abs(got)), (
                family,
                layer,
                block.kind,
                got,
                slope,
            )
            checked += 1
    assert checked >= layout.n_layers


@pytest.mark.parametrize("family", FAMILIES)
def test_only_experts_routed_at_the_last_token_are_attributed(family: str) -> None:
    model, tokenizer = make_tiny(family)
    layout = resolve_layout(model)
    assert layout.moe is not None
    routed: dict[int, set[int]] = {}
    with HookSet() as hooks:
        for layer, spec in enumerate(layout.moe.layers):
            for block in spec.blocks:
                if block.kind == "routed":
                    experts = layout.layer_modules(model)[layer].get_submodule(block.path)

                    def tap(
                        e: int,
                        h: torch.Tensor,
                        rows: torch.Tensor,
                        w: torch.Tensor,
                        layer: int = layer,
                    ) -> None:
                        seq = len(encode_pairs(model, tokenizer, [PROMPT], ["a"]).token_ids[0])
                        if bool((rows == seq - 1).any()):
                            routed.setdefault(layer, set()).add(e)

                    add_expert_tap(hooks, experts, tap)
        ids = encode_pairs(model, tokenizer, [PROMPT], ["a"]).token_ids[0]
        with torch.no_grad():
            model(torch.tensor([ids]), use_cache=False)
    scores = attribution_scores(model, tokenizer, [PROMPT], "a", rules=RelPRules()).score
    for layer, spec in enumerate(layout.moe.layers):
        for block in spec.blocks:
            if block.kind != "routed":
                continue
            width = block.width
            for e in range(block.n_experts):
                part = scores[layer, block.start + e * width : block.start + (e + 1) * width]
                assert bool((part != 0).any()) == (e in routed[layer]), (family, layer, e)
        if spec.has_experts:
            assert len(routed[layer]) == 2  # top-2 at the one last token


def test_routing_rule_moves_earlier_layers_only() -> None:
    """Holding the router's weights and the shared expert's gate constant changes what flows
    back through the routers, so earlier layers' attributions change; the last layer's
    neurons (nothing after them routes) and the forward values do not."""
    model, tokenizer = make_tiny("qwen2_moe")
    plain = attribution_scores(model, tokenizer, PROMPTS, "a", contrasts="b", rules=PLAIN)
    fixed = attribution_scores(
        model,
        tokenizer,
        PROMPTS,
        "a",
        contrasts="b",
        rules=RelPRules(**{**vars(PLAIN), "routing": True}),
    )
    torch.testing.assert_close(fixed.metric, plain.metric, rtol=0, atol=0)
    torch.testing.assert_close(fixed.score[-1], plain.score[-1])
    assert not torch.allclose(fixed.score[0], plain.score[0], rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe", "olmoe", "deepseek_v3"])
def test_attribute_selects_per_expert_neurons_that_steer(family: str) -> None:
    model, tokenizer = make_tiny(family)
    hooks = count_hooks(model)
    circuit = attribute(model, tokenizer, PROMPTS, "a", contrasts="b", top_k=10, skip_layers=())
    assert count_hooks(model) == hooks
    assert model.config._experts_implementation == "eager"
    layout = resolve_layout(model)
    assert bool(layout.valid_mask()[circuit.layers, circuit.neurons].all())
    assert "routing" in circuit.settings.attribution
    assert circuit.model.neuron_blocks is not None
    ids = encode_pairs(model, tokenizer, PROMPTS[:1], ["a"], ["b"])
    batch = torch.tensor(ids.token_ids)
    with torch.no_grad():
        base = model(batch).logits[0, -1]
        with steer(model, circuit, 0.0):
            ablated = model(batch).logits[0, -1]
    metric = ids.targets[0], ids.contrasts[0]  # type: ignore[index]
    assert float(ablated[metric[0]] - ablated[metric[1]]) != pytest.approx(
        float(base[metric[0]] - base[metric[1]]), abs=1e-3
    )


def test_gpt_oss_refuses_the_activation_rule_in_one_line_and_runs_without_it() -> None:
    model, tokenizer = make_tiny("gpt_oss")
    hooks = count_hooks(model)
    with pytest.raises(UnsupportedModelError, match="activation_identity=False") as caught:
        attribution_scores(model, tokenizer, PROMPTS[:1], "a")
    assert "\n" not in str(caught.value)
    assert count_hooks(model) == hooks
    assert model.config._experts_implementation == "eager"
    out = attribution_scores(
        model, tokenizer, PROMPTS[:1], "a", rules=RelPRules(activation_identity=False)
    )
    assert torch.isfinite(out.score).all()
    assert float(out.score.abs().sum()) > 0


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_every_moe_family_attributes_with_the_rules_it_supports(family: str) -> None:
    model, tokenizer = make_tiny(family)
    rules = RelPRules(
        activation_identity=family != "gpt_oss",  # gpt-oss's clamped SwiGLU has no act module
        attention=family != "qwen3_5_moe_text",  # its linear-attention layers have no weights
    )
    plain = attribution_scores(model, tokenizer, PROMPTS[:2], "a", contrasts="b", rules=PLAIN)
    full = attribution_scores(model, tokenizer, PROMPTS[:2], "a", contrasts="b", rules=rules)
    torch.testing.assert_close(full.metric, plain.metric, rtol=0, atol=0)
    assert torch.isfinite(full.score).all()
    assert not torch.allclose(full.score, plain.score, rtol=1e-3, atol=1e-6)
    assert float(full.score[~resolve_layout(model).valid_mask()].abs().sum()) == 0.0
