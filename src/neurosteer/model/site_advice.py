"""What to tell a caller whose site override (`site_path=`, `--site`) does not fit the model.

A dense model's site is its MLP output projection ('mlp.down_proj'); a mixture-of-experts
model's is the MLP block holding the experts ('mlp'), from which every expert's own down
projection is found. A path of the one kind given to a model of the other gets an error that
says which kind this model is and names the site it does have, found without the override, so
the advice never points back at the value that failed.
"""

from __future__ import annotations

from torch import nn

from neurosteer.errors import UnsupportedModelError
from neurosteer.model.moe_layout import LayerNeurons, linear_shape, resolve_moe


def dense_site_advice(layer: nn.Module, found: str | None) -> str:
    """The second half of the error for a site override that is missing from a dense model's
    layer or is no linear projection: the site this model has, or how to find one.

    Args:
        layer: the first decoder layer.
        found: the site the resolver finds without an override (None: it finds none).
    """
    if found is None:
        children = ", ".join(name for name, _ in layer.named_children())
        return (
            f"no site is found without it either (a layer's children: {children}); name the "
            "MLP's output projection inside one layer, as print(model) shows it"
        )
    mlp_name = found.partition(".")[0]
    mlp = layer.get_submodule(mlp_name)
    shape = linear_shape(layer.get_submodule(found))
    width = f" ({shape[0]} neurons)" if shape is not None else ""
    return (
        f"its MLP '{mlp_name}' ({type(mlp).__name__}) is dense, with no experts, and its neuron "
        f"site is '{found}'{width}: leave site_path (--site) out to use it, or pass '{found}'"
    )


def moe_site_message(layers: nn.ModuleList, given: str, model_type: str, hidden: int | None) -> str:
    """The error for a site override that is not the MLP block of a mixture-of-experts model
    (e.g. 'mlp.down_proj', which an MoE block does not have): what the MLP is, where its
    neurons sit, and the block path to pass instead.

    Args:
        layers: the decoder layers (at least one holds experts).
        given: the site path the caller gave.
        model_type: for the message.
        hidden: the residual width, or None when the config does not say.
    """
    try:
        moe = resolve_moe(layers, model_type, hidden, None)
    except UnsupportedModelError:  # experts we cannot resolve: say only what the block is
        moe = None
    if moe is None:
        return (
            f"'{given}' is not a neuron site of this {model_type} model, whose MLP is a "
            "mixture of experts with no single down projection; leave site_path (--site) out"
        )
    moe_layer = next(layer for layer in moe.layers if layer.has_experts)
    index = moe.layers.index(moe_layer)
    block = layers[index].get_submodule(moe_layer.mlp_path)
    return (
        f"'{given}' is not a neuron site of this {model_type} model: its MLP "
        f"'{moe_layer.mlp_path}' ({type(block).__name__}) is a mixture of experts with no "
        f"single down projection, and its neurons are the inputs of each expert's own "
        f"({_where(moe_layer)}){_dense_layers(moe.layers)}; on an MoE model the site names the "
        f"MLP block, from which they are found: leave site_path (--site) out, or pass "
        f"'{moe_layer.mlp_path}'"
    )


def _where(layer: LayerNeurons) -> str:
    """ "routed: 5 experts x 23 in 'mlp.experts', shared: 41 at 'mlp.shared_expert.down_proj'"
    (no semicolon: a circuit's layout error quotes this message up to its first one)."""
    parts = []
    for block in layer.blocks:
        if block.kind == "routed":
            parts.append(f"routed: {block.n_experts} experts x {block.width} in '{block.path}'")
        else:
            parts.append(f"{block.kind}: {block.size} at '{block.path}'")
    return ", ".join(parts)


def _dense_layers(layers: tuple[LayerNeurons, ...]) -> str:
    """ ", while layer 0 is dense, at 'mlp.down_proj'" when some layers have no experts."""
    dense = [i for i, layer in enumerate(layers) if not layer.has_experts]
    if not dense:
        return ""
    numbers = ", ".join(map(str, dense))
    which = f"layer {numbers} is" if len(dense) == 1 else f"layers {numbers} are"
    return f", while {which} dense, at '{layers[dense[0]].blocks[0].path}'"
