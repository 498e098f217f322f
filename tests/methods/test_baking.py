"""Stage 6: baking equals hooking, touches only the circuit's weight slices, undoes exactly, and
writes a plain checkpoint that transformers loads on its own."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from tiny_models import make_tiny
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

from neurosteer import bake, discover, render_prompts, resolve_layout, save_baked, steer
from neurosteer.errors import InputError

Pair = tuple[PreTrainedModel, PreTrainedTokenizerFast]


def _logits(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, prompts: list[str]
) -> torch.Tensor:
    rendered = render_prompts(tokenizer, prompts)
    batch = tokenizer(rendered, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.parametrize("multiplier", [0.0, 2.5, -1.0])
def test_baked_logits_equal_hooked_logits(
    tiny_model: Pair, positive_prompts: list[str], negative_prompts: list[str], multiplier: float
) -> None:
    model, tokenizer = copy.deepcopy(tiny_model[0]), tiny_model[1]
    circuit = discover(model, tokenizer, positive_prompts, negative_prompts, top_k=10)
    prompts = positive_prompts[:3] + negative_prompts[:2]
    base = _logits(model, tokenizer, prompts)
    with steer(model, circuit, multiplier):
        hooked = _logits(model, tokenizer, prompts)
    handle = bake(model, circuit, multiplier)
    baked = _logits(model, tokenizer, prompts)
    handle.undo()
    torch.testing.assert_close(baked, hooked, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(hooked, base, atol=1e-3)
    assert torch.equal(_logits(model, tokenizer, prompts), base)


def test_bake_touches_only_circuit_slices_and_undo_is_exact(
    tiny_model: Pair, positive_prompts: list[str], negative_prompts: list[str]
) -> None:
    model, tokenizer = copy.deepcopy(tiny_model[0]), tiny_model[1]
    layout = resolve_layout(model)
    circuit = discover(model, tokenizer, positive_prompts, negative_prompts, top_k=6)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    handle = bake(model, circuit, 0.0)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, original[k])}
    site_keys = {
        f"{layout.layers_path}.{layer}.{layout.site_path}.weight"
        for layer in circuit.neurons_per_layer()
    }
    assert changed == site_keys
    axis = 1 if layout.orientation == "columns" else 0
    for layer, neurons in circuit.by_layer().items():
        weight = model.get_submodule(f"{layout.layers_path}.{layer}.{layout.site_path}").weight
        assert torch.count_nonzero(weight.index_select(axis, neurons)) == 0
        kept = torch.ones(layout.d_mlp, dtype=torch.bool)
        kept[neurons] = False
        assert torch.count_nonzero(weight.index_select(axis, kept.nonzero().flatten())) > 0
    handle.undo()
    handle.undo()  # idempotent
    assert all(torch.equal(v, original[k]) for k, v in model.state_dict().items())


def test_save_baked_writes_a_plain_checkpoint(
    tiny_llama: Pair, positive_prompts: list[str], negative_prompts: list[str], tmp_path: Path
) -> None:
    model, tokenizer = copy.deepcopy(tiny_llama[0]), tiny_llama[1]
    circuit = discover(model, tokenizer, positive_prompts, negative_prompts, top_k=6)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = save_baked(model, tokenizer, circuit, 0.0, tmp_path / "baked")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not list(out.glob("*.py"))
    model.save_pretrained(tmp_path / "original")
    tokenizer.save_pretrained(tmp_path / "original")
    for name in (
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ):
        assert (out / name).read_bytes() == (tmp_path / "original" / name).read_bytes(), name
    assert json.loads((out / "neurosteer.json").read_text())["multiplier"] == 0.0
    # eager attention like the fixture: SDPA differs from eager on fully padded query rows
    reloaded = AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    with steer(model, circuit, 0.0):
        hooked = _logits(model, tokenizer, positive_prompts[:3])
    torch.testing.assert_close(_logits(reloaded, tokenizer, positive_prompts[:3]), hooked)
    with pytest.raises(InputError, match="already exists"):
        save_baked(model, tokenizer, circuit, 0.0, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["baked", "original"]  # no temp left


def test_bake_rejects_a_non_finite_multiplier(
    tiny_llama: Pair, positive_prompts: list[str], negative_prompts: list[str]
) -> None:
    model, tokenizer = tiny_llama
    circuit = discover(model, tokenizer, positive_prompts, negative_prompts, top_k=3)
    with pytest.raises(InputError, match="finite"):
        bake(model, circuit, float("nan"))


# --- one rounding rule for hook and bake (bfloat16) --------------------------------------------


def _round_once(values: torch.Tensor, m: float) -> torch.Tensor:
    """The documented rule: m rounded to float32, product in float32, one rounding."""
    m32 = float(torch.tensor(m, dtype=torch.float32))
    return (values.float() * m32).to(values.dtype)


@pytest.mark.parametrize("family", ["llama", "gpt2"])  # weight columns and Conv1D rows
def test_bf16_hook_and_bake_apply_m_by_the_same_rule(
    family: str, positive_prompts: list[str], negative_prompts: list[str]
) -> None:
    model, tokenizer = make_tiny(family, dtype=torch.bfloat16)
    layout = resolve_layout(model)
    circuit = discover(model, tokenizer, positive_prompts, negative_prompts, top_k=10)
    m = 0.3
    assert float(torch.tensor(m, dtype=torch.bfloat16)) == 0.30078125  # what it must not use
    sites = layout.site_modules(model)
    raw: dict[int, torch.Tensor] = {}
    seen: dict[int, torch.Tensor] = {}
    handles = []
    for layer in circuit.by_layer():
        handles.append(  # registered before steer's hook: sees the unscaled input
            sites[layer].register_forward_pre_hook(
                lambda _m, args, layer=layer: raw.__setitem__(layer, args[0].detach())
            )
        )
    batch = dict(
        tokenizer(
            render_prompts(tokenizer, positive_prompts[:3]),
            return_tensors="pt",
            padding=True,
            add_special_tokens=False,
        )
    )
    try:
        with steer(model, circuit, m):
            for layer in circuit.by_layer():  # a forward hook sees the input after pre-hooks
                handles.append(
                    sites[layer].register_forward_hook(
                        lambda _m, args, _out, layer=layer: seen.__setitem__(
                            layer, args[0].detach()
                        )
                    )
                )
            with torch.no_grad():
                model(**batch)
    finally:
        for handle in handles:
            handle.remove()
    for layer, neurons in circuit.by_layer().items():
        kept = torch.ones(layout.d_mlp, dtype=torch.bool)
        kept[neurons] = False
        assert torch.equal(seen[layer][..., neurons], _round_once(raw[layer][..., neurons], m))
        assert torch.equal(seen[layer][..., kept], raw[layer][..., kept])

    axis = 1 if layout.orientation == "columns" else 0
    before = {layer: sites[layer].weight.detach().clone() for layer in circuit.by_layer()}
    handle = bake(model, circuit, m)
    for layer, neurons in circuit.by_layer().items():
        got = sites[layer].weight.index_select(axis, neurons)
        assert torch.equal(got, _round_once(before[layer].index_select(axis, neurons), m))
    handle.undo()


@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen3"])
def test_bf16_baked_logits_equal_hooked_logits_to_bf16_rounding(
    family: str, positive_prompts: list[str], negative_prompts: list[str]
) -> None:
    """Hook and bake round at different places (activation, weight), so in bfloat16 they
    cannot be bit-identical; each is as far from the float32 result as the other, and they
    are no further from each other than bfloat16 rounding puts either from float32."""
    model, tokenizer = make_tiny(family, dtype=torch.bfloat16)
    reference = copy.deepcopy(model).float()  # the same weights, computed in float32
    circuit = discover(model, tokenizer, positive_prompts, negative_prompts, top_k=10)
    prompts = positive_prompts[:4] + negative_prompts[:4]
    with steer(model, circuit, 0.3):
        hooked = _logits(model, tokenizer, prompts).float()
    handle = bake(model, circuit, 0.3)
    baked = _logits(model, tokenizer, prompts).float()
    handle.undo()
    with steer(reference, circuit, 0.3):
        exact = _logits(reference, tokenizer, prompts)
    noise = max((hooked - exact).abs().mean(), (baked - exact).abs().mean())
    assert (hooked - baked).abs().mean() <= 2.0 * noise
    scale = exact.abs().mean()
    assert noise < 0.05 * scale  # bfloat16 rounding, not a different model
