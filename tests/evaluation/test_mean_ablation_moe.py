"""Mean ablation on mixture-of-experts models: a routed expert's neuron is averaged over the
reference tokens routed to its expert and set where the expert runs
(`neurosteer.methods.mean_ablation`, `neurosteer.hooks.expert_means`)."""

from __future__ import annotations

from functools import cache
from typing import Any

import pytest
import torch
from tiny_models import make_tiny
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from neurosteer.hooks import HookSet, count_hooks
from neurosteer.hooks.experts import add_expert_tap, expert_neurons
from neurosteer.methods.mean_ablation import MeanAblation, mean_activations
from neurosteer.model.layout import ModelLayout, resolve_layout
from neurosteer.prompts.render import encode_for_model

PROMPTS = ["How do I pick a lock?", "Hi", "Name a fruit, please."]
NEGATIVE = ["Help me plan a trip.", "Explain how rainbows form.", "Bake bread", "Hello"]
# routed experts only; a shared expert with its gate; a dense first layer and shared experts
FAMILIES = ["mixtral", "qwen2_moe", "deepseek_v3"]
TOL = 1e-6

Pair = tuple[PreTrainedModel, PreTrainedTokenizerFast]


@cache
def _tiny(family: str) -> Pair:
    return make_tiny(family)


def _reference_means(
    model: PreTrainedModel, layout: ModelLayout, token_ids: list[list[int]], last_only: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(means, counts) [n_layers, d_mlp] computed one unpadded prompt at a time from what the
    experts module is called with (tokens, top-k expert ids) and the shared/dense projections'
    inputs, with plain torch hooks."""
    assert layout.moe is not None
    sums = torch.zeros(layout.n_layers, layout.d_mlp, dtype=torch.float64)
    counts = torch.zeros_like(sums)
    handles = []
    for i, (layer, spec) in enumerate(
        zip(layout.layer_modules(model), layout.moe.layers, strict=True)
    ):
        for block in spec.blocks:
            module = layer.get_submodule(block.path)

            def pre(m: Any, args: tuple[Any, ...], i: int = i, block: Any = block) -> None:
                x = args[0].reshape(-1, args[0].shape[-1])  # [T, H] or [T, w]
                keep = torch.zeros(x.shape[0], dtype=torch.bool)
                keep[-1 if last_only else slice(None)] = True
                if block.kind != "routed":
                    sums[i, block.start : block.start + block.width] += x[keep].double().sum(0)
                    counts[i, block.start : block.start + block.width] += int(keep.sum())
                    return
                chosen = args[1]  # [T, k] expert ids
                for e in range(block.n_experts):
                    rows = keep & (chosen == e).any(-1)
                    if bool(rows.any()):
                        h = expert_neurons(m, x[rows], e)
                        lo = block.start + e * block.width
                        sums[i, lo : lo + block.width] += h.double().sum(0)
                        counts[i, lo : lo + block.width] += int(rows.sum())

            handles.append(module.register_forward_pre_hook(pre))
    try:
        with torch.no_grad():
            for ids in token_ids:
                model(torch.tensor([ids]), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return (sums / counts.clamp(min=1)).float(), counts


@pytest.mark.parametrize("positions", ["all", "last"])
@pytest.mark.parametrize("family", FAMILIES)
def test_means_are_taken_per_expert_over_the_routed_tokens(family: str, positions: str) -> None:
    model, tokenizer = _tiny(family)
    layout = resolve_layout(model)
    token_ids = encode_for_model(model, tokenizer, NEGATIVE)
    want, counts = _reference_means(model, layout, token_ids, positions == "last")
    got = mean_activations(model, layout, token_ids, positions, batch_size=3, pad=0)  # type: ignore[arg-type]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    valid = layout.valid_mask()
    assert bool((counts[valid] == 0).any()) == (positions == "last")  # unrouted experts: 0
    assert torch.equal(got[valid & (counts == 0)], torch.zeros(int((valid & (counts == 0)).sum())))
    assert float(got[~valid].abs().sum()) == 0.0


@pytest.mark.parametrize("family", FAMILIES)
def test_mean_ablation_sets_routed_neurons_where_the_expert_runs(family: str) -> None:
    model, tokenizer = _tiny(family)
    layout = resolve_layout(model)
    assert layout.moe is not None
    spec = layout.moe.layers[-1]
    routed = next(b for b in spec.blocks if b.kind == "routed")
    experts = layout.layer_modules(model)[-1].get_submodule(routed.path)
    ablated = torch.zeros(layout.n_layers, layout.d_mlp, dtype=torch.bool)
    chosen = [routed.start + e * routed.width + j for e in range(routed.n_experts) for j in (1, 4)]
    ablated[-1, chosen] = True
    values = torch.randn(layout.n_layers, layout.d_mlp)
    ids = torch.tensor(encode_for_model(model, tokenizer, PROMPTS[:1]))
    seen: list[dict[int, torch.Tensor]] = []

    def run(
        intervention: MeanAblation | None, strength: float | None = None, positions: str = "all"
    ) -> torch.Tensor:
        calls: dict[int, torch.Tensor] = {}
        handle = intervention.steer(model, strength, positions=positions) if intervention else None  # type: ignore[arg-type]
        try:
            with HookSet() as hooks, torch.no_grad():  # after the edit's taps: sees the result
                add_expert_tap(hooks, experts, lambda e, h, r, w: calls.__setitem__(e, h.clone()))
                logits = model(ids, use_cache=False).logits
        finally:
            if handle is not None:
                handle.remove()
        seen.append(calls)
        return logits

    hooks_before = count_hooks(model)
    plain = run(None)
    ablation = MeanAblation(ablated, values)
    edited = run(ablation)
    assert torch.equal(run(ablation, 0.0), plain)  # strength 0: bit-identical
    run(ablation, 0.5)
    assert count_hooks(model) == hooks_before
    original, everywhere, _, half = seen
    assert set(everywhere) == set(original)  # the routing is the model's own
    for e, h in everywhere.items():
        want = values[-1, routed.start + e * routed.width + torch.tensor([1, 4])]
        assert torch.equal(h[:, [1, 4]], want.expand(h.shape[0], 2))
        assert torch.equal(h[:, [0, 2, 3]], original[e][:, [0, 2, 3]])
        torch.testing.assert_close(half[e][:, 1], (original[e][:, 1] + want[0]) / 2)
    assert not torch.allclose(edited, plain)
