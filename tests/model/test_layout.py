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
