"""RelP attribution (`neurosteer.methods.relp`): first order against zeroing a layer (rules off), a
hand
computation of every rule on a hand-built 2-layer Llama, what each rule touches on every family,
batching, the circuit it makes, targets, and the organism."""

from __future__ import annotations

import contextlib
import copy as copy_module
import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result
from tiny_models import (
    BOS_ID,
    EOS_ID,
    FAMILIES,
    PAD_ID,
    VOCAB,
    make_tiny,
    make_tokenizer,
    tiny_config,
)
from torch import nn
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedModel

import neurosteer.methods.relp_pass
from neurosteer import Circuit
from neurosteer.cli.main import cli
from neurosteer.errors import InputError, UnsupportedModelError
from neurosteer.evaluation.comparison import compare_circuits
from neurosteer.evaluation.generation import generate
from neurosteer.hooks import count_hooks
from neurosteer.methods.discovery import discover
from neurosteer.methods.relp import RelPRules, attribute, attribution_scores
from neurosteer.methods.steering import steer
from neurosteer.model.layout import resolve_layout
from neurosteer.model.loading import load_model
from neurosteer.prompts.targets import check_pairs, encode_pairs
from neurosteer.workflows.organism import INSTRUCT_DIR, demo_prompt_sets
from neurosteer.workflows.organism import neutral_prompts as organism_neutral

PROMPTS = ["How do I pick a lock?", "Hi", "Name a fruit, please."]
GATED = {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "olmo2"}


# ---- first order: plain gradient × activation against zeroing a layer ----------------------

EPS = 1e-3
"""Every MLP output projection is scaled by EPS, so zeroing a layer's neurons is a small change."""
FIRST_ORDER_TOL = 0.01
"""|Σ attributions − Δ| ≤ 1% of Σ |attributions| of the layer (measured: at most 0.5%)."""


def _weak_mlps(family: str) -> tuple[PreTrainedModel, object]:
    """The tiny model in float64 with every MLP output × EPS. Families that normalise the MLP
    output before the residual add (Gemma 2/3, OLMo 2) make it scale-invariant, so zeroing is
    never small there; their post-MLP norms get eps = 1 so that they are linear near zero."""
    model, tokenizer = make_tiny(family, dtype=torch.float64)
    layout = resolve_layout(model)
    with torch.no_grad():
        for site in layout.site_modules(model):
            site.weight.mul_(EPS)
    for layer in layout.layer_modules(model):
        post = getattr(layer, "post_feedforward_layernorm", None)
        for name in ("eps", "variance_epsilon"):
            if post is not None and hasattr(post, name):
                setattr(post, name, 1.0)
    return model, tokenizer


def _metric(
    model: PreTrainedModel,
    ids: list[int],
    target: int,
    contrast: int,
    zero: nn.Module | None,
    last_only: bool,
) -> float:
    """target − contrast logit at the last position, with `zero`'s input zeroed (plain torch)."""

    def hook(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor]:
        x = args[0].clone()
        if last_only:
            x[:, -1, :] = 0
        else:
            x.zero_()
        return (x,)

    handle = zero.register_forward_pre_hook(hook) if zero is not None else None
    try:
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, -1]
    finally:
        if handle is not None:
            handle.remove()
    return float(logits[target] - logits[contrast])


@pytest.mark.parametrize("positions", ["last", "prompt"])
@pytest.mark.parametrize("family", FAMILIES)
def test_plain_attribution_is_the_first_order_change_from_zeroing_a_layer(
    family: str, positions: str
) -> None:
    model, tokenizer = _weak_mlps(family)
    prompt = PROMPTS[0]
    scores = attribution_scores(
        model,
        tokenizer,
        [prompt],
        "a",
        contrasts="b",
        positions=positions,  # type: ignore[arg-type]
        rules=RelPRules.plain(),
    ).score
    pairs = encode_pairs(model, tokenizer, [prompt], ["a"], ["b"])
    ids, target, contrast = pairs.token_ids[0], pairs.targets[0], pairs.contrasts[0]  # type: ignore[index]
    full = _metric(model, ids, target, contrast, None, True)
    sites = resolve_layout(model).site_modules(model)
    for layer, site in enumerate(sites):
        change = full - _metric(model, ids, target, contrast, site, positions == "last")
        scale = float(scores[layer].abs().sum())
        assert scale > 1e-7, (family, layer)  # not trivially zero
        assert abs(float(scores[layer].sum()) - change) <= FIRST_ORDER_TOL * scale, (family, layer)


# ---- the rules by hand on a hand-built 2-layer Llama ----------------------------------------

H, D_MLP_HAND, NH, NKV, HD = 4, 3, 2, 1, 2  # hidden, d_mlp, heads, kv heads, head dim
RMS_EPS = 1e-6


def _hand_llama() -> PreTrainedModel:
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=H,
        intermediate_size=D_MLP_HAND,
        num_hidden_layers=2,
        num_attention_heads=NH,
        num_key_value_heads=NKV,
        head_dim=HD,
        max_position_embeddings=64,
        rms_norm_eps=RMS_EPS,
        tie_word_embeddings=False,
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
    )
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(1.0 + 0.3 * noise if "norm" in name else 0.8 * noise)
    return model.double().eval()


def _rms(x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm of rows x [T, H]: (normed, scale [T, 1])."""
    scale = 1.0 / torch.sqrt((x**2).mean(-1, keepdim=True) + RMS_EPS)
    return x * scale * w, scale


def _rope(x: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of x [T, heads, 2] at positions 0..T-1 (head dim 2: one frequency)."""
    angle = torch.arange(x.shape[0], dtype=x.dtype)[:, None, None]
    rotated = torch.cat([-x[..., 1:], x[..., :1]], dim=-1)
    return x * torch.cos(angle) + rotated * torch.sin(angle)


def _hand_relp(
    model: PreTrainedModel, ids: list[int], target: int, contrast: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [T, vocab], attributions [2 layers, T, I]) by plain tensor algebra: the forward
    pass written out, then the backward pass of the four rules written out by hand."""
    p = dict(model.named_parameters())
    T = len(ids)
    x = p["model.embed_tokens.weight"][ids]  # [T, H]
    caches = []
    causal = torch.ones(T, T).tril().bool()
    for layer in range(2):
        pre = f"model.layers.{layer}."
        h1, c1 = _rms(x, p[pre + "input_layernorm.weight"])
        q = _rope((h1 @ p[pre + "self_attn.q_proj.weight"].T).view(T, NH, HD))
        k = _rope((h1 @ p[pre + "self_attn.k_proj.weight"].T).view(T, NKV, HD))
        v = (h1 @ p[pre + "self_attn.v_proj.weight"].T).view(T, NKV, HD)
        probs = torch.empty(NH, T, T, dtype=x.dtype)
        for head in range(NH):
            kv = head // (NH // NKV)
            scores = (q[:, head] @ k[:, kv].T) * HD**-0.5
            probs[head] = torch.softmax(scores.masked_fill(~causal, -math.inf), dim=-1)
        o = torch.stack([probs[h] @ v[:, h // (NH // NKV)] for h in range(NH)], dim=1)
        x_mid = x + o.reshape(T, NH * HD) @ p[pre + "self_attn.o_proj.weight"].T
        h2, c2 = _rms(x_mid, p[pre + "post_attention_layernorm.weight"])
        g = h2 @ p[pre + "mlp.gate_proj.weight"].T
        u = h2 @ p[pre + "mlp.up_proj.weight"].T
        a = g * torch.sigmoid(g)
        n = a * u
        caches.append((pre, c1, probs, c2, g, u, a, n))
        x = x_mid + n @ p[pre + "mlp.down_proj.weight"].T
    hf, cf = _rms(x, p["model.norm.weight"])
    logits = hf @ p["lm_head.weight"].T

    # backward from logit(target) − logit(contrast) at the last position
    lm = p["lm_head.weight"]
    gx = torch.zeros(T, H, dtype=x.dtype)
    gx[-1] = cf[-1] * p["model.norm.weight"] * (lm[target] - lm[contrast])  # norm rule
    attributions = [torch.empty(0)] * 2
    for layer in (1, 0):
        pre, c1, probs, c2, g, u, a, n = caches[layer]
        gn = gx @ p[pre + "mlp.down_proj.weight"]  # [T, I]
        attributions[layer] = n * gn
        ga, gu = 0.5 * gn * u, 0.5 * gn * a  # half rule
        gg = ga * (a / g)  # identity rule
        gh2 = gg @ p[pre + "mlp.gate_proj.weight"] + gu @ p[pre + "mlp.up_proj.weight"]
        gx_mid = gx + c2 * p[pre + "post_attention_layernorm.weight"] * gh2  # norm rule
        go = (gx_mid @ p[pre + "self_attn.o_proj.weight"]).view(T, NH, HD)
        gv = torch.zeros(T, NKV, HD, dtype=x.dtype)
        for head in range(NH):  # weights constant: the gradient reaches the values only
            gv[:, head // (NH // NKV)] += probs[head].T @ go[:, head]
        gh1 = gv.reshape(T, NKV * HD) @ p[pre + "self_attn.v_proj.weight"]
        gx = gx_mid + c1 * p[pre + "input_layernorm.weight"] * gh1  # norm rule
    return logits.detach(), torch.stack(attributions).detach()


@pytest.mark.parametrize("positions", ["last", "prompt"])
def test_rules_match_a_hand_computation_on_a_two_layer_llama(positions: str) -> None:
    model, tokenizer = _hand_llama(), make_tokenizer(chat_template=False)
    target, contrast = 10, 20
    ids = encode_pairs(model, tokenizer, ["abc"], [target], chat_template=False).token_ids[0]
    logits, expected = _hand_relp(model, ids, target, contrast)
    with torch.no_grad():  # the hand forward is the model's
        actual = model(torch.tensor([ids])).logits[0]
        torch.testing.assert_close(actual, logits, rtol=1e-5, atol=1e-5)  # float32 norms
    got = attribution_scores(
        model,
        tokenizer,
        ["abc"],
        target,
        contrasts=contrast,
        positions=positions,  # type: ignore[arg-type]
        chat_template=False,
    ).score
    want = expected[:, -1] if positions == "last" else expected.sum(1)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-8)
    plain = attribution_scores(
        model,
        tokenizer,
        ["abc"],
        target,
        contrasts=contrast,
        rules=RelPRules.plain(),
        positions=positions,
        chat_template=False,  # type: ignore[arg-type]
    ).score
    assert not torch.allclose(plain[0].double(), want[0], rtol=1e-3)  # the rules matter here


@pytest.mark.parametrize("rule", ["norm", "attention", "gate_half", "activation_identity"])
def test_each_rule_is_needed_to_match_the_hand_computation(rule: str) -> None:
    model, tokenizer = _hand_llama(), make_tokenizer(chat_template=False)
    ids = encode_pairs(model, tokenizer, ["abc"], [10], chat_template=False).token_ids[0]
    _, expected = _hand_relp(model, ids, 10, 20)
    without = RelPRules(**{rule: False})
    got = attribution_scores(
        model, tokenizer, ["abc"], 10, contrasts=20, rules=without, chat_template=False
    ).score
    assert not torch.allclose(got.double(), expected[:, -1], rtol=1e-3, atol=1e-6)


# ---- what each rule touches, on every family ------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_rules_keep_the_forward_pass_and_each_acts_where_it_should(family: str) -> None:
    model, tokenizer = make_tiny(family)
    args = (model, tokenizer, PROMPTS[:2], ["a", "b"])

    def run(rules: RelPRules) -> tuple[torch.Tensor, torch.Tensor]:
        out = attribution_scores(*args, contrasts="c", rules=rules)
        return out.score, out.metric

    plain, plain_metric = run(RelPRules.plain())
    full, full_metric = run(RelPRules())
    torch.testing.assert_close(full_metric, plain_metric, rtol=0, atol=0)  # same forward values
    assert torch.isfinite(full).all()
    for rule in ("norm", "attention", "gate_half", "activation_identity"):
        only, _ = run(RelPRules(**{**vars(RelPRules.plain()), rule: True}))
        changed = not torch.allclose(only[0], plain[0], rtol=1e-4, atol=1e-7)
        # the half rule applies to gated MLPs only; GPT-2 and GPT-NeoX have none
        assert changed == (rule != "gate_half" or family in GATED), rule
        if rule in ("attention", "gate_half", "activation_identity"):  # nothing after the last
            torch.testing.assert_close(only[-1], plain[-1])  # layer's neurons at the last token


def test_batched_pairs_sum_the_single_pairs(tiny_llama: tuple[PreTrainedModel, object]) -> None:
    model, tokenizer = tiny_llama
    targets, contrasts = ["a", "b", 7], ["c", 9, "d"]
    for positions in ("last", "prompt"):
        batched = attribution_scores(
            model,
            tokenizer,
            PROMPTS,
            targets,
            contrasts=contrasts,
            positions=positions,
            batch_size=3,  # type: ignore[arg-type]
        )
        singles = [
            attribution_scores(
                model,
                tokenizer,
                [p],
                t,
                contrasts=c,
                positions=positions,  # type: ignore[arg-type]
            )
            for p, t, c in zip(PROMPTS, targets, contrasts, strict=True)
        ]
        torch.testing.assert_close(
            batched.score, sum(s.score for s in singles), rtol=1e-4, atol=1e-5
        )
        torch.testing.assert_close(batched.metric, torch.cat([s.metric for s in singles]))


def test_sdpa_model_is_switched_and_restored() -> None:
    eager, tokenizer = make_tiny("qwen2")
    sdpa = AutoModelForCausalLM.from_config(tiny_config("qwen2"), attn_implementation="sdpa")
    sdpa.load_state_dict(eager.state_dict())
    sdpa.eval()
    a = attribution_scores(eager, tokenizer, PROMPTS, "a", contrasts="b")
    b = attribution_scores(sdpa, tokenizer, PROMPTS, "a", contrasts="b")
    torch.testing.assert_close(a.score, b.score, rtol=1e-4, atol=1e-5)
    assert sdpa.config._attn_implementation == "sdpa"
    assert eager.config._attn_implementation == "eager"


def test_an_error_leaves_no_hooks_and_the_attention_restored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model, tokenizer = make_tiny("gemma2")
    before = count_hooks(model)

    def boom(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(neurosteer.methods.relp_pass.torch.autograd, "grad", boom)
    with pytest.raises(RuntimeError, match="boom"):
        attribution_scores(model, tokenizer, PROMPTS, "a")
    assert count_hooks(model) == before
    assert model.config._attn_implementation == "eager"


def test_attention_that_bypasses_the_interface_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model, tokenizer = make_tiny("llama")
    monkeypatch.setattr(neurosteer.methods.relp_pass, "detached_attention", _attention_never_called)
    with pytest.raises(UnsupportedModelError, match="0 of 4 attention layers"):
        attribution_scores(model, tokenizer, PROMPTS[:1], "a")


@contextlib.contextmanager
def _attention_never_called(_model: nn.Module) -> Iterator[list[int]]:
    yield [0]  # counts no call: as if the model's attention ignored the interface


# ---- the circuit, the targets ---------------------------------------------------------------


def test_attribute_makes_an_ordinary_circuit(
    tiny_llama: tuple[PreTrainedModel, object], tmp_path: Path
) -> None:
    model, tokenizer = tiny_llama
    circuit = attribute(model, tokenizer, PROMPTS, "a", contrasts="b", top_k=10, keep_table=True)
    scores = attribution_scores(model, tokenizer, PROMPTS, "a", contrasts="b").score
    assert circuit.settings.method == "relp"
    assert len(circuit) == 10
    assert circuit.settings.attribution == (
        "positions=last; rules=norm,attention,gate_half,activation_identity; metric=target-contrast"
    )
    assert set(circuit.prompts) == {"prompts", "targets", "contrasts"}
    assert not {0, 1} & set(circuit.layers.tolist())
    torch.testing.assert_close(circuit.delta, scores[circuit.layers, circuit.neurons])
    torch.testing.assert_close(circuit.delta, circuit.positive_mean - circuit.negative_mean)
    magnitudes = circuit.delta.abs()
    assert (magnitudes[:-1] >= magnitudes[1:]).all()  # rank order
    assert float(magnitudes[-1]) >= float(scores[2:].abs().flatten().sort().values[-10])
    loaded = Circuit.load(circuit.save(tmp_path / "relp.circuit"))
    assert loaded.settings == circuit.settings
    torch.testing.assert_close(loaded.reselect(top_k=10).neurons, circuit.neurons)
    assert compare_circuits(loaded, circuit).overlap == 10
    ids = torch.tensor([[BOS_ID, 40, 41, 42]])
    with torch.no_grad():
        plain = model(ids).logits
        with steer(model, loaded, 0.0):
            ablated = model(ids).logits
        copy = copy_module.deepcopy(model)  # the fixture is shared: bake a copy
        loaded.bake(copy, 0.0)
        baked = copy(ids).logits
    assert not torch.allclose(plain, ablated)
    torch.testing.assert_close(baked, ablated)
    positive = attribute(model, tokenizer, PROMPTS, "a", top_k=5, positive_only=True)
    assert (positive.delta > 0).all()
    assert torch.equal(positive.negative_mean, torch.zeros(5))  # no contrast


def test_targets_are_the_first_token_that_continues_the_prompt(
    tiny_llama: tuple[PreTrainedModel, object],
) -> None:
    model, tokenizer = tiny_llama
    vocab = tokenizer.get_vocab()
    pairs = encode_pairs(model, tokenizer, ["Hi", "Hi"], [" Paris", "xyz"], [5, "y"])
    assert pairs.targets == [vocab["\u0120"], vocab["x"]]  # a leading space is its own token
    assert pairs.contrasts == [5, vocab["y"]]
    # A text outside the vocabulary would score the unknown token: refused, as probe refuses it.
    with pytest.raises(InputError, match="not in this tokenizer's vocabulary"):
        encode_pairs(model, tokenizer, ["Hi"], ["x"], ["\u00e9"])
    with pytest.raises(InputError, match="outside the vocabulary"):
        encode_pairs(model, tokenizer, ["Hi"], [VOCAB])
    with pytest.raises(InputError, match="2 prompts but 3 targets"):
        check_pairs(["a", "b"], ["x", "y", "z"])
    with pytest.raises(InputError, match="empty"):
        check_pairs(["a"], [""])
    with pytest.raises(InputError, match="no prompts"):
        check_pairs([], "x")
    assert check_pairs(["a", "b"], "x", 3) == (["a", "b"], ["x", "x"], [3, 3])


# ---- the command line -----------------------------------------------------------------------


def _cli(args: list[object]) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_discover_relp_mode_from_options_and_from_pair_files(
    tiny_llama_dir: Path, tmp_path: Path
) -> None:
    model, tokenizer = load_model(str(tiny_llama_dir))
    want = attribute(model, tokenizer, PROMPTS[:2], [" a", "b"], contrasts=["c", " d"], top_k=6)
    out = tmp_path / "opts.circuit"
    pairs = ["--prompt", PROMPTS[0], "--target", " a", "--contrast", "c"]
    pairs += ["--prompt", PROMPTS[1], "--target", "b", "--contrast", " d"]
    result = _cli(["discover", tiny_llama_dir, *pairs, "--top-k", 6, "-o", out])
    assert result.exit_code == 0, result.output
    assert "top 6 neurons by |attribution|" in result.stdout
    got = Circuit.load(out)
    torch.testing.assert_close(got.delta, want.delta)
    assert got.settings == want.settings
    records = [
        {"prompt": PROMPTS[0], "target": " a", "contrast": "c"},
        {"Prompt": PROMPTS[1], "TARGET": "b", "contrast": " d"},
    ]
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    csv_file = tmp_path / "pairs.csv"
    csv_file.write_text(f'prompt,target,contrast\n"{PROMPTS[0]}", a,c\n{PROMPTS[1]},b, d\n')
    for i, source in enumerate((jsonl, csv_file)):
        path = tmp_path / f"file{i}.circuit"
        result = _cli(["discover", tiny_llama_dir, "--pairs", source, "--top-k", 6, "-o", path])
        assert result.exit_code == 0, result.output
        torch.testing.assert_close(Circuit.load(path).delta, want.delta)
    shown = _cli(["inspect", out]).stdout
    assert "attribution: positions=last" in " ".join(shown.split())


RELP_ERRORS = {
    "both modes": (["-p", "{pos}", "--prompt", "Hi", "--target", "a"], "not both"),
    "targets differ": (["--prompt", "Hi", "--prompt", "Yo", "--target", "a"], "2 --prompt but 1"),
    "contrasts differ": (
        ["--prompt", "Hi", "--target", "a", "--contrast", "b", "--contrast", "c"],
        "1 --prompt but 2 --contrast",
    ),
    "target without prompt": (["--target", "a"], "need a --prompt"),
    "neither mode": ([], "--positive and --negative"),
    "target outside the vocabulary": (
        ["--prompt", "Hi", "--target", "\u00e9"],
        "not in this tokenizer's vocabulary",
    ),
    "positions without relp": (["-p", "{pos}", "-n", "{pos}", "--positions", "prompt"], "RelP"),
    "pairs and prompt": (["--pairs", "{pos}", "--prompt", "Hi", "--target", "a"], "not both"),
    "neutral in relp": (["--prompt", "Hi", "--target", "a", "--neutral", "{pos}"], "neutral"),
    "pair file of an unknown kind": (["--pairs", "{pos}"], "unknown pair file kind"),
    "pair without a target": (["--pairs", "{bad}"], "bad.jsonl:2' has no target"),
}


@pytest.mark.parametrize("case", sorted(RELP_ERRORS))
def test_discover_mode_errors_are_one_line(case: str, tiny_llama_dir: Path, tmp_path: Path) -> None:
    pos = tmp_path / "pos.txt"
    pos.write_text("Hi\n")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "Hi", "target": "a"}\n{"prompt": "Yo"}\n')
    args, message = RELP_ERRORS[case]
    out = tmp_path / "x.circuit"
    given = [a.format(pos=pos, bad=bad) for a in args]
    result = _cli(["discover", tiny_llama_dir, *given, "-o", out])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error:")
    assert message in lines[0]
    assert not out.exists()


# ---- the organism ---------------------------------------------------------------------------


def test_relp_on_a_refusal_overlaps_the_contrastive_circuit() -> None:
    """RelP from refused prompts (target: each refusal's first token) against the demo's
    contrastive circuit (48 neurons of layers 2-5): measured overlap 22 of 48 from 8 prompts and
    15 from one prompt; a random 48 of the 2,048 candidates overlaps 48 * 48 / 2048 = 1.1."""
    model, tokenizer = load_model(str(INSTRUCT_DIR))
    sets = demo_prompt_sets()
    contrastive = discover(
        model,
        tokenizer,
        list(sets.train_harmful),
        list(sets.train_benign),
        top_k=48,
        neutral=organism_neutral(),
    )
    harmful = list(sets.train_harmful[:12])
    answers = generate(model, tokenizer, harmful, max_new_tokens=2)
    refused = [
        (p, a.split()[0])
        for p, a in zip(harmful, answers, strict=True)
        if a.split()[0] in ("i", "sorry", "refused")
    ]
    assert len(refused) >= 6
    prompts, targets = [p for p, _ in refused], [t for _, t in refused]
    many = attribute(model, tokenizer, prompts, targets, top_k=48)
    one = attribute(model, tokenizer, prompts[:1], targets[0], top_k=48)
    expected_random = 48 * 48 / int(contrastive.candidates().sum())
    assert compare_circuits(many, contrastive).overlap >= 10 > 8 * expected_random
    assert compare_circuits(one, contrastive).overlap >= 8
    assert set(many.neurons_per_layer()) <= {3, 4, 5}  # the organism's gate: layers 4 and 5


def test_frozen_parameters_give_the_same_attribution() -> None:
    model, tokenizer = make_tiny("phi3")
    before = attribution_scores(model, tokenizer, PROMPTS, "a", contrasts="b", positions="prompt")
    model.requires_grad_(False)  # nothing in the graph needs a gradient but the neurons
    after = attribution_scores(model, tokenizer, PROMPTS, "a", contrasts="b", positions="prompt")
    torch.testing.assert_close(after.score, before.score)


def test_circuit_files_without_the_attribution_field_still_load(
    tiny_llama: tuple[PreTrainedModel, object], tmp_path: Path
) -> None:
    model, tokenizer = tiny_llama
    path = attribute(model, tokenizer, PROMPTS, "a", top_k=3).save(tmp_path / "c.circuit")
    meta = json.loads((path / "circuit.json").read_text())
    del meta["settings"]["attribution"]  # as written before the field existed
    (path / "circuit.json").write_text(json.dumps(meta))
    assert Circuit.load(path).settings.attribution is None


def test_bfloat16_model_keeps_its_forward_values() -> None:
    model, tokenizer = make_tiny("gemma3_text", dtype=torch.bfloat16)
    rules = attribution_scores(model, tokenizer, PROMPTS, "a", contrasts="b")
    plain = attribution_scores(
        model, tokenizer, PROMPTS, "a", contrasts="b", rules=RelPRules.plain()
    )
    assert torch.equal(rules.metric, plain.metric)
    assert torch.isfinite(rules.score).all()
    assert rules.score.dtype == torch.float32
