"""Stage 1: the layout resolver finds the neuron site of every family, and refuses clearly."""

from __future__ import annotations

import pytest
from tiny_models import (
    D_MLP,
    HIDDEN,
    MOE_EXPERTS,
    MOE_FAMILIES,
    MOE_WIDTH,
    N_LAYERS,
    SITES,
    make_tiny,
)
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from neurosteer import UnsupportedModelError, resolve_layout


def test_every_family_resolves_to_its_mlp_output_projection(
    tiny_model: tuple[PreTrainedModel, PreTrainedTokenizerFast], tiny_family: str
) -> None:
    model, _ = tiny_model
    layout = resolve_layout(model)
    truth = SITES[tiny_family]
    assert (layout.layers_path, layout.site_path) == (truth.layers_path, truth.site_path)
    assert (layout.n_layers, layout.d_mlp, layout.d_model) == (N_LAYERS, D_MLP, HIDDEN)
    assert layout.orientation == ("rows" if truth.conv1d else "columns")
    sites = layout.site_modules(model)
    assert len(sites) == N_LAYERS
    assert sites[2] is model.get_submodule(f"{truth.layers_path}.2.{truth.site_path}")


#: (routed width, shared width, dense first layers) of each tiny MoE family
_MOE_SHAPES = {
    "mixtral": (MOE_WIDTH, 0, 0),
    "qwen2_moe": (MOE_WIDTH, 41, 0),
    "qwen3_moe": (MOE_WIDTH, 0, 0),
    "olmoe": (MOE_WIDTH, 0, 0),
    "deepseek_v3": (MOE_WIDTH, 2 * MOE_WIDTH, 1),
    "gpt_oss": (MOE_WIDTH, 0, 0),
    "qwen3_5_moe_text": (MOE_WIDTH, 41, 0),
}


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_mixture_of_experts_resolves_per_expert(family: str) -> None:
    model, _ = make_tiny(family)
    layout = resolve_layout(model)
    width, shared, dense = _MOE_SHAPES[family]
    assert layout.moe is not None
    assert layout.site_path == "mlp"
    moe_width = MOE_EXPERTS * width + shared
    assert layout.moe.widths == (D_MLP,) * dense + (moe_width,) * (N_LAYERS - dense)
    assert layout.d_mlp == moe_width
    assert layout.n_neurons == sum(layout.moe.widths)
    blocks = layout.moe.layers[-1].blocks
    assert (blocks[0].kind, blocks[0].storage, blocks[0].n_experts) == ("routed", "fused", 5)
    assert blocks[0].transposed == (family == "gpt_oss")  # gpt-oss keeps down_proj [E, I, H]
    assert [b.start for b in blocks] == [0, MOE_EXPERTS * width][: len(blocks)]
    assert layout.moe.describe(N_LAYERS - 1, 3 * width + 4) == "E3 n4"
    if shared:
        assert layout.moe.describe(N_LAYERS - 1, MOE_EXPERTS * width + 2) == "S n2"
    if dense:
        assert layout.moe.layers[0].blocks[0].kind == "dense"
        assert layout.moe.describe(0, 7) == "n7"


def test_overrides_are_used_and_checked(
    tiny_llama: tuple[PreTrainedModel, PreTrainedTokenizerFast],
) -> None:
    model, _ = tiny_llama
    layout = resolve_layout(model, layers_path="model.layers", site_path="mlp.down_proj")
    assert layout.d_mlp == D_MLP
    # the up projection is a legal (if odd) site: an override is taken as given
    up = resolve_layout(model, site_path="mlp.up_proj")
    assert (up.d_mlp, up.d_model) == (HIDDEN, D_MLP)
    with pytest.raises(UnsupportedModelError, match=r"llama.*layers_path"):
        resolve_layout(model, layers_path="model.blocks")
    with pytest.raises(UnsupportedModelError, match="not a linear projection"):
        resolve_layout(model, site_path="mlp.act_fn")


class _Opaque(nn.Module):
    """A model with no decoder-layer list at all."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3, 5)


def test_unknown_layout_names_the_model_and_the_override() -> None:
    with pytest.raises(UnsupportedModelError, match=r"_Opaque.*site_path"):
        resolve_layout(_Opaque())


#: site overrides that name something other than an MoE model's MLP block: the dense down
#: projection (which an MoE block lacks, or DeepSeek-V3 has only in its dense first layer), the
#: experts' module and their fused tensor, and a shared expert's projection (which would leave
#: the routed experts out)
_NOT_MOE_SITES = ("mlp.down_proj", "mlp.experts", "mlp.experts.down_proj")


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_a_dense_site_on_a_moe_model_names_the_block_instead(family: str) -> None:
    model, _ = make_tiny(family)
    width, shared, dense = _MOE_SHAPES[family]
    shared_site = {"qwen2_moe": "mlp.shared_expert.down_proj"}.get(family)
    for site in (*_NOT_MOE_SITES, *([shared_site] if shared_site else [])):
        with pytest.raises(UnsupportedModelError) as caught:
            resolve_layout(model, site_path=site)
        message = str(caught.value)
        assert "\n" not in message
        assert message.startswith(f"'{site}' is not a neuron site of this {family} model")
        assert "is a mixture of experts with no single down projection" in message
        assert f"routed: {MOE_EXPERTS} experts x {width} in 'mlp.experts'" in message
        assert (" at 'mlp.shared_" in message) == bool(shared)
        assert ("), while layer 0 is dense, at 'mlp.down_proj';" in message) == bool(dense)
        # a circuit's layout error quotes the message up to its first semicolon
        blocks_end = message.rindex(" at 'mlp.shared_" if shared else " in 'mlp.experts'")
        assert message.index(";") > blocks_end
        assert message.endswith("leave site_path (--site) out, or pass 'mlp'")
        assert "pass the paths yourself" not in message  # no advice that points back at it
    # the advice works: the block it names gives the layout found without an override
    assert resolve_layout(model, site_path="mlp") == resolve_layout(model)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox"])
@pytest.mark.parametrize("site", ["mlp.experts", "block_sparse_moe", "mlp"])
def test_a_moe_site_on_a_dense_model_names_its_projection(family: str, site: str) -> None:
    model, _ = make_tiny(family)
    truth = SITES[family].site_path
    with pytest.raises(UnsupportedModelError) as caught:
        resolve_layout(model, site_path=site)
    message = str(caught.value)
    assert f"'{site}'" in message
    assert f"this {family} model" in message
    mlp = type(model.get_submodule(f"{SITES[family].layers_path}.0.mlp")).__name__
    assert f"its MLP 'mlp' ({mlp}) is dense, with no experts" in message
    assert f"its neuron site is '{truth}' ({D_MLP} neurons)" in message
    assert message.endswith(f"leave site_path (--site) out to use it, or pass '{truth}'")
    assert "pass the paths yourself" not in message
    assert resolve_layout(model, site_path=truth) == resolve_layout(model)


def test_a_wrong_layers_path_names_the_layers_found_without_it(
    tiny_llama: tuple[PreTrainedModel, PreTrainedTokenizerFast],
) -> None:
    model, _ = tiny_llama
    advice = (
        "; its decoder layers are 'model.layers': leave layers_path (--layers-path) out to use "
        "them, or pass 'model.layers'"
    )
    for path, problem in [
        ("model.blocks", "no module 'model.blocks' (decoder layers) in this llama model"),
        ("model.norm", "'model.norm' in this llama model is not a non-empty list of layers"),
    ]:
        with pytest.raises(UnsupportedModelError) as caught:
            resolve_layout(model, layers_path=path)
        assert str(caught.value) == problem + advice
