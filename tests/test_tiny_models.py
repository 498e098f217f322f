"""The tiny-model factory itself: every family builds, batches, generates, saves and reloads.

These pin down the ground truth the rest of the suite relies on (where the neurons sit, that
d_mlp differs from the hidden size, that left padding is exact), so a failure here points at the
fixtures or at a transformers change rather than at neurosteer.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_models import (
    BOS_ID,
    D_MLP,
    FAMILIES,
    HIDDEN,
    MOE_FAMILIES,
    N_LAYERS,
    PAD_ID,
    SITES,
    VOCAB,
    make_tiny,
    make_tokenizer,
    neuron_site,
    save_tiny,
)
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)
from transformers.pytorch_utils import Conv1D

Pair = tuple[PreTrainedModel, PreTrainedTokenizerFast]

_LINEAR = ("Linear", (HIDDEN, D_MLP))  # nn.Linear weight is [out, in]
#: Ground truth per family, written out: (layer 0's site path, class name, weight shape).
EXPECTED_SITE: dict[str, tuple[str, str, tuple[int, int]]] = {
    "llama": ("model.layers.0.mlp.down_proj", *_LINEAR),
    "mistral": ("model.layers.0.mlp.down_proj", *_LINEAR),
    "qwen2": ("model.layers.0.mlp.down_proj", *_LINEAR),
    "qwen3": ("model.layers.0.mlp.down_proj", *_LINEAR),
    "gemma": ("model.layers.0.mlp.down_proj", *_LINEAR),
    "gemma2": ("model.layers.0.mlp.down_proj", *_LINEAR),
    "gemma3_text": ("model.layers.0.mlp.down_proj", *_LINEAR),
    "phi3": ("model.layers.0.mlp.down_proj", *_LINEAR),
    "gpt2": ("transformer.h.0.mlp.c_proj", "Conv1D", (D_MLP, HIDDEN)),  # Conv1D is [in, out]
    "gpt_neox": ("gpt_neox.layers.0.mlp.dense_4h_to_h", *_LINEAR),
    "olmo2": ("model.layers.0.mlp.down_proj", *_LINEAR),
}


def _render(tokenizer: PreTrainedTokenizerFast, prompts: list[str]) -> list[str]:
    """Chat-render one user turn per prompt, as the package does for instruct models."""
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
        )
        for p in prompts
    ]


def _site_inputs(model: PreTrainedModel, family: str, **inputs: torch.Tensor) -> torch.Tensor:
    """Neuron activations [layers, batch, seq, d_mlp]: the input of every layer's site."""
    acts: list[torch.Tensor] = []
    handles = [
        neuron_site(model, family, i).register_forward_pre_hook(
            lambda _m, args: acts.append(args[0].detach().clone())
        )
        for i in range(N_LAYERS)
    ]
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        for h in handles:
            h.remove()
    return torch.stack(acts)


def _position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that ignore left padding, as `generate` computes them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def test_site_layout(tiny_model: Pair, tiny_family: str) -> None:
    """Sites sit where SITES says, with the orientation that makes transposition bugs loud."""
    model, _ = tiny_model
    cfg = model.config
    site = SITES[tiny_family]
    hidden = cfg.hidden_size
    assert hidden == HIDDEN
    assert cfg.num_hidden_layers == N_LAYERS
    assert model.get_output_embeddings().weight.shape[0] == VOCAB
    layers = model.get_submodule(site.layers_path)
    assert isinstance(layers, nn.ModuleList)
    assert len(layers) == N_LAYERS
    for i in range(N_LAYERS):
        proj = neuron_site(model, tiny_family, i)
        if site.conv1d:
            assert isinstance(proj, Conv1D)
            assert tuple(proj.weight.shape) == (D_MLP, HIDDEN)  # stored [in, out]
        else:
            assert type(proj) is nn.Linear
            assert tuple(proj.weight.shape) == (HIDDEN, D_MLP)  # [out, in]
    # d_mlp must differ from every other width an implementation could confuse it with
    head_dim = getattr(cfg, "head_dim", None) or hidden // cfg.num_attention_heads
    assert hidden != D_MLP
    assert cfg.num_attention_heads * head_dim != D_MLP
    assert D_MLP != VOCAB


def test_site_table() -> None:
    """One line per family (printed with -s): path, class and weight shape of layer 0's site."""
    for family in FAMILIES:
        model, _ = make_tiny(family)
        path = f"{SITES[family].layers_path}.0.{SITES[family].site_path}"
        proj = model.get_submodule(path)
        print(f"{family:12s} {path:32s} {type(proj).__name__:7s} {tuple(proj.weight.shape)}")
        assert (path, type(proj).__name__, tuple(proj.weight.shape)) == EXPECTED_SITE[family]
        assert proj.weight.shape[0] != proj.weight.shape[1]


def test_phi3_gate_up_is_fused() -> None:
    """Phi-3 fuses gate and up into one projection; the neuron is still down_proj's input."""
    model, _ = make_tiny("phi3")
    mlp = model.model.layers[0].mlp
    assert tuple(mlp.gate_up_proj.weight.shape) == (2 * D_MLP, HIDDEN)
    assert not hasattr(mlp, "up_proj")


def test_seeded_and_distinct() -> None:
    """Same seed gives the same weights; another seed or another family gives different ones."""
    a, _ = make_tiny("llama", seed=3)
    b, _ = make_tiny("llama", seed=3)
    c, _ = make_tiny("llama", seed=4)
    d, _ = make_tiny("mistral", seed=3)
    wa = a.model.layers[1].mlp.down_proj.weight
    assert torch.equal(wa, b.model.layers[1].mlp.down_proj.weight)
    assert not torch.equal(wa, c.model.layers[1].mlp.down_proj.weight)
    assert not torch.equal(wa, d.model.layers[1].mlp.down_proj.weight)
    assert not a.training


def test_dtype_argument() -> None:
    """`dtype` reaches every parameter."""
    model, _ = make_tiny("qwen2", dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_activations_are_not_trivial(
    tiny_model: Pair, tiny_family: str, positive_prompts: list[str]
) -> None:
    """Neuron activations are O(1) and differ between neurons, unlike with std-0.02 init."""
    model, tok = tiny_model
    enc = tok(
        _render(tok, positive_prompts[:2]),
        add_special_tokens=False,
        return_tensors="pt",
        padding=True,
    )
    acts = _site_inputs(model, tiny_family, **enc)[:, :, -1]  # [layers, batch, d_mlp]
    assert acts.shape == (N_LAYERS, 2, D_MLP)
    assert torch.isfinite(acts).all()
    assert acts.abs().mean() > 0.05
    assert acts.std(dim=-1).min() > 0.02  # neurons within a layer differ


def test_left_padded_batch_matches_single(
    tiny_model: Pair, tiny_family: str, positive_prompts: list[str], negative_prompts: list[str]
) -> None:
    """With left padding and mask-derived positions, the last token of a batch is exact."""
    model, tok = tiny_model
    texts = _render(tok, [positive_prompts[3], positive_prompts[4], negative_prompts[7]])
    enc = tok(texts, add_special_tokens=False, return_tensors="pt", padding=True)
    assert tok.padding_side == "left"
    assert (enc.attention_mask[:, -1] == 1).all()
    assert (enc.input_ids[enc.attention_mask == 0] == PAD_ID).all()
    lengths = enc.attention_mask.sum(-1)
    assert len(set(lengths.tolist())) == 3  # really different lengths
    pos = _position_ids(enc.attention_mask)
    batched = _site_inputs(model, tiny_family, **enc, position_ids=pos)[:, :, -1]
    with torch.no_grad():
        logits = model(**enc, position_ids=pos).logits[:, -1]
    for b, text in enumerate(texts):
        one = tok(text, add_special_tokens=False, return_tensors="pt")
        single = _site_inputs(model, tiny_family, **one)[:, 0, -1]
        torch.testing.assert_close(batched[:, b], single, atol=1e-4, rtol=1e-4)
        with torch.no_grad():
            ref = model(**one).logits[0, -1]
        torch.testing.assert_close(logits[b], ref, atol=1e-4, rtol=1e-4)


def test_generate_with_kv_cache(tiny_model: Pair, negative_prompts: list[str]) -> None:
    """Greedy batched generation with the cache equals generation without it, and per prompt."""
    model, tok = tiny_model
    texts = _render(tok, negative_prompts[:2])
    enc = tok(texts, add_special_tokens=False, return_tensors="pt", padding=True)
    kw = {"max_new_tokens": 5, "do_sample": False, "min_new_tokens": 5}
    with torch.no_grad():
        cached = model.generate(**enc, **kw, use_cache=True)
        uncached = model.generate(**enc, **kw, use_cache=False)
    assert cached.shape == (2, enc.input_ids.shape[1] + 5)
    assert torch.equal(cached, uncached)
    for b, text in enumerate(texts):
        one = tok(text, add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            single = model.generate(**one, **kw)
        assert torch.equal(single[0, -5:], cached[b, -5:])


@pytest.mark.parametrize("family", FAMILIES)
def test_save_and_reload_with_plain_transformers(family: str, tmp_path: Path) -> None:
    """A saved tiny folder reloads with Auto* classes and gives the same logits."""
    model, tok = make_tiny(family)
    path = save_tiny(family, tmp_path / family)
    loaded = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
    ltok = AutoTokenizer.from_pretrained(path)
    assert loaded.config.model_type == family
    assert ltok.padding_side == "left"
    assert ltok.chat_template == tok.chat_template
    assert (ltok.bos_token_id, ltok.pad_token_id, len(ltok)) == (BOS_ID, PAD_ID, VOCAB)
    text = _render(ltok, ["Hello there!"])[0]
    ids = ltok(text, add_special_tokens=False, return_tensors="pt").input_ids
    assert torch.equal(ids, tok(text, add_special_tokens=False, return_tensors="pt").input_ids)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits)


def test_saved_llama_dir_fixture(tiny_llama_dir: Path) -> None:
    """The session fixture folder holds a loadable model with a chat template."""
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    assert model.config.model_type == "llama"
    assert tok.chat_template is not None


def test_base_tokenizer_variant(tiny_gpt2_base_dir: Path) -> None:
    """`chat_template=False` gives a tokenizer without a template (a base model), which adds bos."""
    assert make_tokenizer(chat_template=False).chat_template is None
    tok = AutoTokenizer.from_pretrained(tiny_gpt2_base_dir)
    assert tok.chat_template is None
    assert tok("Hi!").input_ids[0] == BOS_ID


def test_chat_template_shape() -> None:
    """The template starts with the bos text and ends with the assistant header."""
    tok = make_tokenizer()
    text = _render(tok, ["Hi, world"])[0]
    assert text.startswith(tok.bos_token)
    assert text.endswith("<|assistant|>")
    ids = tok(text, add_special_tokens=False).input_ids
    assert ids.count(BOS_ID) == 1
    assert ids[0] == BOS_ID
    assert tok.decode(tok("Hi, world", add_special_tokens=False).input_ids) == "Hi, world"
    no_prompt = tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=False
    )
    assert not no_prompt.endswith("<|assistant|>")
    assert max(ids) < VOCAB


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_moe_families_build(family: str) -> None:
    """The MoE tiny models build and run (their neurons are tested in tests/methods/test_moe.py)."""
    model, tok = make_tiny(family)
    names = [n for n, _ in model.named_modules()]
    assert any("experts" in n for n in names)
    enc = tok(["Hi", "Hello there"], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(**enc)
    assert out.logits.shape[-1] == VOCAB


def test_gpt2_left_padding_needs_position_ids() -> None:
    """Trap worth knowing: RoPE families are offset-invariant, but GPT-2's absolute positions
    make a left-padded forward wrong unless position_ids come from the attention mask."""
    model, tok = make_tiny("gpt2")
    texts = ["<bos>hello there my friend", "<bos>hi"]
    enc = tok(texts, add_special_tokens=False, return_tensors="pt", padding=True)
    with torch.no_grad():
        ref = model(**tok(texts[1:], add_special_tokens=False, return_tensors="pt")).logits[0, -1]
        naive = model(**enc).logits[1, -1]
        fixed = model(**enc, position_ids=_position_ids(enc.attention_mask)).logits[1, -1]
    assert (naive - ref).abs().max() > 1e-2
    torch.testing.assert_close(fixed, ref, atol=1e-4, rtol=1e-4)
