"""Stage 1: the layout resolver finds the neuron site of every family, and refuses clearly."""

from __future__ import annotations

import pytest
from tiny_models import D_MLP, HIDDEN, MOE_FAMILIES, N_LAYERS, SITES, make_tiny
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


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_mixture_of_experts_is_refused_with_a_clear_error(family: str) -> None:
    model, _ = make_tiny(family)
    with pytest.raises(UnsupportedModelError, match="mixture-of-experts"):
        resolve_layout(model)


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
