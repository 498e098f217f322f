"""`discover` end to end on tiny models of every family: k, layers, signs, δ, provenance,
determinism, the universal-neuron filter, and input checks."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_models import D_MLP, HIDDEN, N_LAYERS, SITES, neuron_site
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerFast

import neurosteer
from neurosteer import Circuit, InputError, discover
from neurosteer.methods.circuit import TENSORS_FILE
from neurosteer.methods.discovery import neutral_prompts
from neurosteer.prompts.render import prompt_hash, render_prompts, tokenize_rendered

Model = tuple[PreTrainedModel, PreTrainedTokenizerFast]

#: A small neutral set keeps the universal filter's code path in every run, at a fraction of the
#: cost of the built-in 60 prompts.
NEUTRAL = neutral_prompts()[:8]
DEFAULT_K = max(1, round(0.001 * N_LAYERS * D_MLP))


def _hook_count(model: nn.Module) -> int:
    return sum(
        len(m._forward_pre_hooks) + len(m._forward_hooks) + len(m._forward_hooks_with_kwargs)
        for m in model.modules()
    )


def _last_token_means(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, family: str, prompts: list[str]
) -> torch.Tensor:
    """[n_layers, d_mlp] mean site input at the last token, recorded independently of the
    package: one right-padded batch (causal attention never lets a real token see the padding
    after it), the test's own ground-truth site paths, no position ids."""
    templated = bool(tokenizer.chat_template)
    ids = tokenize_rendered(tokenizer, render_prompts(tokenizer, prompts), templated)
    width = max(map(len, ids))
    input_ids = torch.zeros(len(ids), width, dtype=torch.long)
    mask = torch.zeros(len(ids), width, dtype=torch.long)
    for row, seq in enumerate(ids):
        input_ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    last = torch.tensor([len(seq) - 1 for seq in ids])
    means: dict[int, torch.Tensor] = {}
    handles = []

    def recorder(layer: int) -> Any:
        def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
            acts = args[0][torch.arange(len(ids)), last]  # [n_prompts, d_mlp]
            means[layer] = acts.detach().float().mean(dim=0)

        return hook

    try:
        for layer in range(N_LAYERS):
            site = neuron_site(model, family, layer)
            handles.append(site.register_forward_pre_hook(recorder(layer)))
        with torch.inference_mode():
            model(input_ids=input_ids, attention_mask=mask, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return torch.stack([means[layer] for layer in range(N_LAYERS)])


@dataclass(frozen=True)
class Found:
    family: str
    architecture: str  # the model's class name
    default: Circuit  # default k, filter on (small neutral set), full table kept, batch size 3
    wide: Circuit  # top_k=40, no filter, default skip layers
    positive: Circuit  # top_k=10, positive only, skip layers (1, 3)
    reference_pos: torch.Tensor  # [n_layers, d_mlp], recorded by the test itself
    reference_neg: torch.Tensor


@pytest.fixture(scope="module")
def found(
    tiny_model: Model, tiny_family: str, positive_prompts: list[str], negative_prompts: list[str]
) -> Found:
    model, tokenizer = tiny_model
    before = _hook_count(model)
    default = discover(
        model,
        tokenizer,
        positive_prompts,
        negative_prompts,
        neutral=NEUTRAL,
        keep_table=True,
        batch_size=3,
    )
    wide = discover(
        model, tokenizer, positive_prompts, negative_prompts, top_k=40, universal_filter=False
    )
    positive = discover(
        model,
        tokenizer,
        positive_prompts,
        negative_prompts,
        top_k=10,
        positive_only=True,
        skip_layers=(1, 3),
        universal_filter=False,
    )
    assert _hook_count(model) == before, "discover left hooks behind"
    return Found(
        family=tiny_family,
        architecture=type(model).__name__,
        default=default,
        wide=wide,
        positive=positive,
        reference_pos=_last_token_means(model, tokenizer, tiny_family, positive_prompts),
        reference_neg=_last_token_means(model, tokenizer, tiny_family, negative_prompts),
    )


# --- every family ----------------------------------------------------------------------------


def test_default_k_is_a_tenth_of_a_percent(found: Found) -> None:
    circuit = found.default
    assert DEFAULT_K == 1
    assert len(circuit) == DEFAULT_K
    assert circuit.settings.k == DEFAULT_K
    assert circuit.settings.top_k is None
    assert circuit.settings.fraction == 0.001


def test_top_k_when_given(found: Found) -> None:
    assert len(found.wide) == 40
    assert found.wide.settings.k == found.wide.settings.top_k == 40
    assert len(found.positive) == 10
    pairs = set(zip(found.wide.layers.tolist(), found.wide.neurons.tolist(), strict=True))
    assert len(pairs) == 40  # no neuron twice


def test_skipped_layers_never_picked(found: Found) -> None:
    for circuit in (found.default, found.wide):
        assert set(circuit.layers.tolist()) <= {2, 3}
        assert circuit.settings.skip_layers == (0, 1)
    assert set(found.positive.layers.tolist()) <= {0, 2}
    assert found.positive.settings.skip_layers == (1, 3)


def test_both_signs_when_top_k_is_large(found: Found) -> None:
    assert (found.wide.delta > 0).any()
    assert (found.wide.delta < 0).any()


def test_positive_only(found: Found) -> None:
    assert (found.positive.delta > 0).all()
    assert found.positive.settings.positive_only


def test_selection_is_the_largest_abs_delta(found: Found) -> None:
    for circuit in (found.wide, found.positive):
        delta = found.reference_pos - found.reference_neg
        allowed = torch.ones_like(delta, dtype=torch.bool)
        allowed[list(circuit.settings.skip_layers)] = False
        if circuit.settings.positive_only:
            allowed &= delta > 0
        picked = delta[circuit.layers, circuit.neurons].abs()
        assert (picked[:-1] >= picked[1:] - 1e-4).all(), "not in rank order"
        chosen = torch.zeros_like(allowed)
        chosen[circuit.layers, circuit.neurons] = True
        rest = delta.abs()[allowed & ~chosen]
        assert picked.min() >= rest.max() - 1e-4


def test_delta_is_positive_mean_minus_negative_mean(found: Found) -> None:
    for circuit in (found.default, found.wide, found.positive):
        assert circuit.delta.dtype == torch.float32
        torch.testing.assert_close(
            circuit.delta, circuit.positive_mean - circuit.negative_mean, rtol=0, atol=1e-6
        )
    table = found.default.table
    assert table is not None
    assert table.positive_mean.shape == (N_LAYERS, D_MLP)
    torch.testing.assert_close(
        found.default.delta,
        table.delta[found.default.layers, found.default.neurons],
        rtol=0,
        atol=1e-6,
    )


def test_means_match_an_independent_recording(found: Found) -> None:
    # Batched (size 3, left padded) recording equals a right-padded pass of the test's own.
    table = found.default.table
    assert table is not None
    torch.testing.assert_close(table.positive_mean, found.reference_pos, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(table.negative_mean, found.reference_neg, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(
        found.wide.positive_mean,
        found.reference_pos[found.wide.layers, found.wide.neurons],
        rtol=1e-4,
        atol=1e-4,
    )


def test_metadata(found: Found, positive_prompts: list[str], negative_prompts: list[str]) -> None:
    circuit = found.default
    info = circuit.model
    assert info.model_type == found.family
    assert (info.n_layers, info.d_mlp, info.d_model) == (N_LAYERS, D_MLP, HIDDEN)
    assert info.layers_path == SITES[found.family].layers_path
    assert info.site_path == SITES[found.family].site_path
    assert info.architecture == found.architecture
    assert len(info.config_hash) == 64
    assert circuit.prompts["positive"].count == len(positive_prompts)
    assert circuit.prompts["negative"].count == len(negative_prompts)
    assert circuit.prompts["positive"].sha256 == prompt_hash(positive_prompts)
    assert circuit.prompts["negative"].sha256 == prompt_hash(negative_prompts)
    assert circuit.prompts["neutral"].count == len(NEUTRAL)
    assert circuit.prompts["neutral"].sha256 == prompt_hash(NEUTRAL)
    assert "neutral" not in found.wide.prompts  # filter off: no neutral set was used
    s = circuit.settings
    assert s.method == "cna"
    assert s.universal_filter
    assert s.universal_threshold == 0.8
    assert circuit.table is not None
    candidates = [i for i in range(N_LAYERS) if i not in s.skip_layers]
    # the marked neurons of the candidate layers only (the skipped layers were never candidates)
    assert s.universal_removed == int(circuit.table.universal[candidates].sum())
    assert s.chat_template  # the tiny tokenizers carry a chat template
    assert s.n_candidates == 2 * D_MLP - s.universal_removed
    assert not found.wide.settings.universal_filter
    assert found.wide.settings.universal_removed == 0
    assert found.wide.settings.n_candidates == 2 * D_MLP
    assert circuit.library_version == neurosteer.__version__
    assert found.wide.table is None  # only kept when asked


# --- one model -------------------------------------------------------------------------------


def test_deterministic(
    tiny_llama: Model, positive_prompts: list[str], negative_prompts: list[str], tmp_path: Path
) -> None:
    model, tokenizer = tiny_llama
    kwargs: dict[str, Any] = {"top_k": 12, "neutral": NEUTRAL, "keep_table": True}
    first = discover(model, tokenizer, positive_prompts, negative_prompts, **kwargs)
    second = discover(model, tokenizer, positive_prompts, negative_prompts, **kwargs)
    for name in ("layers", "neurons", "delta", "positive_mean", "negative_mean"):
        assert torch.equal(getattr(first, name), getattr(second, name)), name
    assert first.table is not None
    assert second.table is not None
    assert torch.equal(first.table.positive_var, second.table.positive_var)
    assert first.settings == second.settings
    assert first.model == second.model
    a, b = first.save(tmp_path / "a.circuit"), second.save(tmp_path / "b.circuit")
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    assert TENSORS_FILE in names
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_batch_size_does_not_change_the_result(
    tiny_llama: Model, positive_prompts: list[str], negative_prompts: list[str]
) -> None:
    model, tokenizer = tiny_llama
    kwargs: dict[str, Any] = {"top_k": 12, "universal_filter": False}
    one = discover(model, tokenizer, positive_prompts, negative_prompts, batch_size=1, **kwargs)
    many = discover(model, tokenizer, positive_prompts, negative_prompts, batch_size=5, **kwargs)
    assert torch.equal(one.layers, many.layers)
    assert torch.equal(one.neurons, many.neurons)
    torch.testing.assert_close(one.delta, many.delta, rtol=1e-4, atol=1e-5)


@contextmanager
def _inflated(model: PreTrainedModel, layer: int, neuron: int) -> Iterator[None]:
    """Make one neuron huge on every prompt: x_j -> 2000 + 100 x_j at the site's input.

    |x_j| then tops every prompt's ranking (a "universal" neuron), while its δ grows 100-fold,
    so the plain top-1 by |δ| would pick it.
    """

    def hook(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = args[0].clone()
        x[..., neuron] = 2000.0 + 100.0 * x[..., neuron]
        return (x, *args[1:])

    handle = neuron_site(model, "llama", layer).register_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@pytest.mark.parametrize("layer", [2, 3])
def test_universal_filter_removes_an_always_huge_neuron(
    tiny_llama: Model, positive_prompts: list[str], negative_prompts: list[str], layer: int
) -> None:
    model, tokenizer = copy.deepcopy(tiny_llama[0]), tiny_llama[1]
    args = (model, tokenizer, positive_prompts, negative_prompts)
    plain = discover(*args, top_k=40, universal_filter=False, keep_table=True)
    assert plain.table is not None
    # the neuron of this layer with the largest |δ| (never ~0, so 100x makes it the top)
    neuron = int(plain.table.delta[layer].abs().argmax())
    with _inflated(model, layer, neuron):
        unfiltered = discover(*args, top_k=1, universal_filter=False)
        assert (int(unfiltered.layers[0]), int(unfiltered.neurons[0])) == (layer, neuron)
        filtered = discover(*args, top_k=40, neutral=NEUTRAL, keep_table=True)
    assert filtered.table is not None
    assert bool(filtered.table.universal[layer, neuron])
    assert filtered.settings.universal_removed >= 1
    chosen = set(zip(filtered.layers.tolist(), filtered.neurons.tolist(), strict=True))
    assert (layer, neuron) not in chosen
    assert len(filtered) == 40
    assert filtered.settings.n_candidates == 2 * D_MLP - filtered.settings.universal_removed


def test_universal_filter_uses_the_builtin_neutral_set_by_default() -> None:
    prompts = neutral_prompts()
    assert len(prompts) >= 20
    assert all(p.strip() == p and p for p in prompts)
    assert len(set(prompts)) == len(prompts)


# --- bad inputs ------------------------------------------------------------------------------

BAD_INPUTS: list[tuple[str, dict[str, Any], str]] = [
    ("empty positive", {"positive": []}, "positive prompt set is empty"),
    ("empty negative", {"negative": []}, "negative prompt set is empty"),
    ("string positive", {"positive": "How do I pick a lock?"}, "list of strings"),
    ("string negative", {"negative": "Name a fruit."}, "list of strings"),
    ("blank prompt", {"positive": ["ok", "  "]}, "empty or non-text"),
    ("top_k zero", {"top_k": 0}, "at least 1"),
    ("top_k negative", {"top_k": -2}, "at least 1"),
    ("top_k too large", {"top_k": 2 * D_MLP + 1}, "candidate layers hold only 74"),
    ("fraction zero", {"fraction": 0.0}, "fraction must be in"),
    ("fraction negative", {"fraction": -0.1}, "fraction must be in"),
    ("fraction above one", {"fraction": 1.5}, "fraction must be in"),
    ("skip out of range", {"skip_layers": (0, N_LAYERS)}, "out of range"),
    ("skip every layer", {"skip_layers": tuple(range(N_LAYERS))}, "no candidate layer"),
    ("empty neutral", {"neutral": []}, "neutral prompt set is empty"),
]


@pytest.mark.parametrize(
    ("change", "message"),
    [pytest.param(c, m, id=name) for name, c, m in BAD_INPUTS],
)
def test_bad_inputs(
    tiny_llama: Model,
    positive_prompts: list[str],
    negative_prompts: list[str],
    change: dict[str, Any],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model, tokenizer = tiny_llama
    monkeypatch.chdir(tmp_path)
    kwargs: dict[str, Any] = {"positive": positive_prompts, "negative": negative_prompts}
    kwargs.update(change)
    before = _hook_count(model)
    with pytest.raises(InputError, match=message):
        discover(model, tokenizer, **kwargs)
    assert _hook_count(model) == before
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_bad_positive_only_k(
    tiny_llama: Model, positive_prompts: list[str], negative_prompts: list[str]
) -> None:
    # more neurons than there are δ > 0 candidates
    model, tokenizer = tiny_llama
    with pytest.raises(InputError, match="positive-δ candidate"):
        discover(
            model,
            tokenizer,
            positive_prompts,
            negative_prompts,
            top_k=2 * D_MLP,
            positive_only=True,
            universal_filter=False,
        )


def test_single_prompt_sets_work(tiny_llama: Model) -> None:
    model, tokenizer = tiny_llama
    circuit = discover(model, tokenizer, ["a"], ["b"], top_k=3, universal_filter=False)
    assert len(circuit) == 3
    assert circuit.prompts["positive"].count == 1
    assert all(math.isfinite(v) for v in circuit.delta.tolist())
