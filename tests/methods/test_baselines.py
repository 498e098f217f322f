"""Baselines: contrast vectors are the true last-token means, CAA shifts one layer by α·v,
directional ablation removes the direction (hooks) and equals its baked form."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from tiny_models import make_tiny
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from neurosteer import UnsupportedModelError, render_prompts, resolve_layout
from neurosteer.hooks import count_hooks
from neurosteer.methods.baselines import CAA, DirectionAblation, MLPOutputSteering, contrast_vectors
from neurosteer.methods.steering import SteeringHandle

Pair = tuple[PreTrainedModel, PreTrainedTokenizerFast]
LINEAR = ["llama", "qwen3", "gemma", "phi3", "gpt2", "gpt_neox"]  # tied and untied, Conv1D
POST_NORM = ["gemma2", "gemma3_text", "olmo2"]


def _batch(tokenizer: PreTrainedTokenizerFast, prompts: list[str]) -> dict[str, torch.Tensor]:
    rendered = render_prompts(tokenizer, prompts)
    return dict(tokenizer(rendered, return_tensors="pt", padding=True, add_special_tokens=False))


def _logits(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


def test_residual_means_equal_hidden_states_at_the_last_token(
    tiny_llama: Pair, positive_prompts: list[str], negative_prompts: list[str]
) -> None:
    model, tokenizer = tiny_llama
    vectors = contrast_vectors(model, tokenizer, positive_prompts, negative_prompts, batch_size=3)
    for prompts, mean in (
        (positive_prompts, vectors.positive_mean),
        (negative_prompts, vectors.negative_mean),
    ):
        rows = []
        for prompt in prompts:  # one at a time: no padding at all
            with torch.no_grad():
                out = model(**_batch(tokenizer, [prompt]), output_hidden_states=True)
            rows.append(torch.stack([h[0, -1] for h in out.hidden_states[1:]]))
        expected = torch.stack(rows).mean(0)
        # the last entry of hidden_states is after the final norm; compare the layers before it
        torch.testing.assert_close(mean[:-1], expected[:-1], rtol=1e-4, atol=1e-4)
    assert vectors.mean_norm.shape == (4,)
    assert (vectors.mean_norm > 0).all()


def test_caa_shifts_one_layer_output_by_alpha_times_the_vector(
    tiny_llama: Pair, positive_prompts: list[str], negative_prompts: list[str]
) -> None:
    model, tokenizer = tiny_llama
    vectors = contrast_vectors(model, tokenizer, positive_prompts, negative_prompts)
    caa = CAA.fit(vectors, layer=2)
    torch.testing.assert_close(caa.vector, vectors.delta[2])
    batch = _batch(tokenizer, positive_prompts[:3])
    # what layer 3 receives is layer 2's output after every hook on it ran
    layer = resolve_layout(model).layer_modules(model)[3]
    seen: list[torch.Tensor] = []

    def record(_m: torch.nn.Module, args: tuple, kwargs: dict) -> None:  # type: ignore[type-arg]
        seen.append((args[0] if args else kwargs["hidden_states"]).detach().clone())

    handle = layer.register_forward_pre_hook(record, with_kwargs=True)
    try:
        base = _logits(model, batch)
        with caa.steer(model, 0.0):
            assert torch.equal(_logits(model, batch), base)
        with caa.steer(model, 1.5):
            _logits(model, batch)
    finally:
        handle.remove()
    torch.testing.assert_close(seen[-1], seen[0] + 1.5 * caa.vector, rtol=1e-5, atol=1e-5)
    normalized = CAA.fit(vectors, layer=2, normalize=True)
    torch.testing.assert_close(normalized.vector.norm(), vectors.mean_norm[2])


def test_mlp_output_steering_changes_the_model_and_zero_does_not(
    tiny_llama: Pair, positive_prompts: list[str], negative_prompts: list[str]
) -> None:
    model, tokenizer = tiny_llama
    vectors = contrast_vectors(
        model, tokenizer, positive_prompts, negative_prompts, point="mlp_output"
    )
    steering = MLPOutputSteering.fit(vectors)
    batch = _batch(tokenizer, negative_prompts[:2])
    base = _logits(model, batch)
    with steering.steer(model, 0.0):
        assert torch.equal(_logits(model, batch), base)
    with steering.steer(model, 1.0):
        assert not torch.allclose(_logits(model, batch), base, atol=1e-3)


@pytest.mark.parametrize("family", LINEAR)
def test_direction_ablation_hooks_equal_baked_weights(
    family: str, positive_prompts: list[str], negative_prompts: list[str]
) -> None:
    model, tokenizer = make_tiny(family)
    vectors = contrast_vectors(model, tokenizer, positive_prompts, negative_prompts)
    ablation = DirectionAblation.fit(vectors)
    batch = _batch(tokenizer, positive_prompts[:3])
    base = _logits(model, batch)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hooks_before = count_hooks(model)
    for strength in (1.0, 0.5):
        with ablation.steer(model, strength):
            hooked = _logits(model, batch)
        handle = ablation.bake(model, strength)
        baked = _logits(model, batch)
        handle.undo()
        torch.testing.assert_close(baked, hooked, rtol=1e-4, atol=1e-4)
        assert not torch.allclose(hooked, base, atol=1e-3)
    assert count_hooks(model) == hooks_before
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    assert (head.weight is embed.weight) == bool(model.config.tie_word_embeddings)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2"])
def test_ablated_residual_stream_has_no_component_along_the_direction(
    family: str, positive_prompts: list[str], negative_prompts: list[str]
) -> None:
    model, tokenizer = make_tiny(family)
    layout = resolve_layout(model)
    vectors = contrast_vectors(model, tokenizer, positive_prompts, negative_prompts)
    ablation = DirectionAblation.fit(vectors, layer=1)
    outputs: list[torch.Tensor] = []
    handles = [
        layer.register_forward_hook(lambda _m, _a, out: outputs.append(out.detach()))
        for layer in layout.layer_modules(model)
    ]
    try:
        with ablation.steer(model, 1.0):
            _logits(model, _batch(tokenizer, positive_prompts[:2]))
    finally:
        for h in handles:
            h.remove()
    for out in outputs:
        along = out @ ablation.direction
        assert along.abs().max() < 1e-4 * out.norm(dim=-1).max()


@pytest.mark.parametrize("family", POST_NORM)
def test_post_norm_families_refuse_a_baked_direction_ablation(
    family: str, positive_prompts: list[str], negative_prompts: list[str]
) -> None:
    model, tokenizer = make_tiny(family)
    ablation = DirectionAblation.fit(
        contrast_vectors(model, tokenizer, positive_prompts, negative_prompts)
    )
    original = copy.deepcopy(model.state_dict())
    with pytest.raises(UnsupportedModelError, match="use the hooks"):
        ablation.bake(model)
    assert all(torch.equal(v, original[k]) for k, v in model.state_dict().items())


def _edited_output(
    model: PreTrainedModel,
    module: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    intervene: Callable[[], SteeringHandle],
) -> tuple[torch.Tensor, torch.Tensor]:
    """(module output before the edit, after it) in one steered forward pass."""
    seen: list[torch.Tensor] = []

    def record(_m: torch.nn.Module, _a: tuple, out: torch.Tensor) -> None:  # type: ignore[type-arg]
        seen.append((out[0] if isinstance(out, tuple) else out).detach())

    before = module.register_forward_hook(record)  # runs before the edit's hook
    try:
        with intervene():
            after = module.register_forward_hook(record)  # runs after it
            try:
                _logits(model, batch)
            finally:
                after.remove()
    finally:
        before.remove()
    return seen[0], seen[1]


def test_bf16_vector_adder_rounds_once(
    positive_prompts: list[str], negative_prompts: list[str]
) -> None:
    """The added vector is computed in float32 and rounded once, the rule the neuron hook and
    every bake use (not rounded to bfloat16 first and then added)."""
    model, tokenizer = make_tiny("llama", dtype=torch.bfloat16)
    layout = resolve_layout(model)
    vectors = contrast_vectors(model, tokenizer, positive_prompts, negative_prompts)
    batch = _batch(tokenizer, positive_prompts[:3])
    caa = CAA.fit(vectors, layer=2)
    alpha = 0.3
    raw, got = _edited_output(
        model, layout.layer_modules(model)[2], batch, lambda: caa.steer(model, alpha)
    )
    assert torch.equal(got, (raw.float() + alpha * caa.vector.float()).to(torch.bfloat16))


def test_bf16_direction_projector_rounds_once(
    positive_prompts: list[str], negative_prompts: list[str]
) -> None:
    model, tokenizer = make_tiny("llama", dtype=torch.bfloat16)
    layout = resolve_layout(model)
    vectors = contrast_vectors(model, tokenizer, positive_prompts, negative_prompts)
    batch = _batch(tokenizer, positive_prompts[:3])
    ablation = DirectionAblation.fit(vectors, layer=2)
    site = layout.site_modules(model)[1]
    raw, got = _edited_output(model, site, batch, lambda: ablation.steer(model, 0.7))
    x, r = raw.float(), ablation.direction.float()
    assert torch.equal(got, (x - 0.7 * (x @ r)[..., None] * r).to(torch.bfloat16))


def test_bf16_direction_ablation_hooks_match_the_bake(
    positive_prompts: list[str], negative_prompts: list[str]
) -> None:
    model, tokenizer = make_tiny("llama", dtype=torch.bfloat16)
    reference = copy.deepcopy(model).float()
    ablation = DirectionAblation.fit(
        contrast_vectors(model, tokenizer, positive_prompts, negative_prompts)
    )
    batch = _batch(tokenizer, positive_prompts[:4])
    with ablation.steer(model, 1.0):
        hooked = _logits(model, batch).float()
    handle = ablation.bake(model, 1.0)
    baked = _logits(model, batch).float()
    handle.undo()
    with ablation.steer(reference, 1.0):
        exact = _logits(reference, batch)
    noise = max((hooked - exact).abs().mean(), (baked - exact).abs().mean())
    assert (hooked - baked).abs().mean() <= 2.0 * noise
    assert noise < 0.05 * exact.abs().mean()
