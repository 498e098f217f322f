"""Where the neurons live in a model.

A *neuron* is one coordinate of the input of a decoder layer's MLP output projection
(`down_proj`, GPT-2's `c_proj`, GPT-NeoX's `dense_4h_to_h`, ...). This module finds, once per
model, the decoder layers, that projection ("the neuron site"), `d_mlp` and how the site's
weight is oriented, and returns them as a small frozen `ModelLayout`. Nothing here registers
hooks or changes weights.

The resolver is generic rather than a table of model types: the decoder layers are the
homogeneous `nn.ModuleList` whose length is the config's layer count, the MLP is the layer
child whose name says so, and the site is the MLP's last projection back to the hidden size.
Llama-like families that are not listed anywhere therefore work too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from neurosteer.errors import UnsupportedModelError
from neurosteer.model.moe_layout import MoeLayout, is_moe, linear_shape, resolve_moe
from neurosteer.model.site_advice import dense_site_advice, moe_site_message

Orientation = Literal["columns", "rows"]

_MLP_NAME = re.compile(r"^(mlp|feed_forward|ffn|ff|mlp_block)$", re.IGNORECASE)
_MOE_HINTS = ("experts", "router", "gate_network")
_OVERRIDE_HINT = (
    "pass the paths yourself, e.g. resolve_layout(model, layers_path='model.layers', "
    "site_path='mlp.down_proj') or --layers-path/--site on the command line"
)


@dataclass(frozen=True)
class ModelLayout:
    """Where the MLP neurons of a decoder-only model sit.

    Attributes:
        model_type: the config's `model_type` (e.g. "llama", "gpt2").
        layers_path: dotted path from the model to its decoder-layer `ModuleList`.
        site_path: dotted path from one decoder layer to its MLP output projection.
        n_layers: number of decoder layers.
        d_mlp: neurons per layer (input width of the output projection).
        d_model: residual-stream width (output width of the output projection).
        orientation: "columns" when neuron j is column j of the site's weight (`nn.Linear`,
            weight [d_model, d_mlp]); "rows" for GPT-2's Conv1D (weight [d_mlp, d_model]).
        moe: for a mixture-of-experts model, where each layer's neurons sit (experts, shared
            experts, dense layers; `neurosteer.model.moe_layout`); `site_path` is then the
            MLP block and `d_mlp` the widest layer. None for dense models.
    """

    model_type: str
    layers_path: str
    site_path: str
    n_layers: int
    d_mlp: int
    d_model: int
    orientation: Orientation
    moe: MoeLayout | None = None

    @property
    def n_neurons(self) -> int:
        """Neurons of the model (all experts of all layers for an MoE model)."""
        return self.n_layers * self.d_mlp if self.moe is None else self.moe.n_neurons

    def valid_mask(self) -> torch.Tensor:
        """[n_layers, d_mlp] bool: the indices that are neurons (an MoE layer narrower than
        the widest ends early; every index of a dense model)."""
        if self.moe is None:
            return torch.ones(self.n_layers, self.d_mlp, dtype=torch.bool)
        return self.moe.valid_mask(self.d_mlp)

    def require_dense(self, what: str) -> None:
        """Refuse a method that reads the neurons as one site input on an MoE model.

        Raises:
            UnsupportedModelError: this is a mixture-of-experts layout.
        """
        if self.moe is not None:
            raise UnsupportedModelError(
                f"{what} is not available for mixture-of-experts models ({self.model_type}) "
                "yet; use discover, steer, bake and sweep, which work per expert"
            )

    def layer_modules(self, model: nn.Module) -> list[nn.Module]:
        """The decoder layers, in order (their outputs are the residual stream)."""
        return list(_get(model, self.layers_path))  # type: ignore[call-overload]

    def site_modules(self, model: nn.Module) -> list[nn.Module]:
        """The neuron sites (MLP output projections), one per layer, in order."""
        return [_get(layer, self.site_path) for layer in self.layer_modules(model)]


def resolve_layout(
    model: nn.Module, *, layers_path: str | None = None, site_path: str | None = None
) -> ModelLayout:
    """Find the decoder layers and the neuron site of a Hugging Face causal LM.

    Args:
        model: a loaded model (any `PreTrainedModel` with decoder layers).
        layers_path: override for the decoder-layer list, e.g. "model.layers".
        site_path: override for the neuron site inside one layer: a dense model's MLP output
            projection (e.g. "mlp.down_proj"), or a mixture-of-experts model's MLP block (e.g.
            "mlp"), whose experts' own down projections are then found.

    Raises:
        UnsupportedModelError: the layout cannot be found, or an override does not fit the
            model (e.g. a down projection named on an MoE model); the message names the path
            this model has.

    Example:
        >>> layout = resolve_layout(model)
        >>> layout.site_path, layout.d_mlp
        ('mlp.down_proj', 8192)
    """
    config = getattr(model, "config", None)
    text_config = config.get_text_config() if config is not None else None
    model_type = str(getattr(text_config, "model_type", None) or type(model).__name__)

    expected = _config_layer_count(text_config)
    if layers_path is None:
        layers_path = _find_layers(model, expected, model_type)
        layers = _get(model, layers_path)
    else:
        layers = _given_layers(model, layers_path, model_type, expected)
    assert isinstance(layers, nn.ModuleList)
    hidden = _config_hidden_size(text_config)
    if is_moe(layers, site_path):
        return _moe_layout(layers, layers_path, model_type, text_config, site_path)
    if site_path is not None and is_moe(layers, None):  # a dense site named on an MoE model
        raise UnsupportedModelError(moe_site_message(layers, site_path, model_type, hidden))
    first = layers[0]
    if site_path is None:
        site_path = _find_site(first, model_type, hidden)
        site = _get(first, site_path)
    else:
        site = _given_site(first, site_path, model_type, hidden)
    d_mlp, d_model, orientation = _site_shape(site)
    return ModelLayout(
        model_type=model_type,
        layers_path=layers_path,
        site_path=site_path,
        n_layers=len(layers),
        d_mlp=d_mlp,
        d_model=d_model,
        orientation=orientation,
    )


def _get(root: nn.Module, path: str) -> nn.Module:
    return root.get_submodule(path) if path else root


def _given_layers(
    model: nn.Module, path: str, model_type: str, expected: int | None
) -> nn.ModuleList:
    """The decoder-layer list at the path the caller gave.

    Raises:
        UnsupportedModelError: no such module, or not a non-empty `nn.ModuleList`; the message
            names the layers this model has (found without the override), if any.
    """
    try:
        layers = _get(model, path)
    except AttributeError:
        problem = f"no module '{path}' (decoder layers) in this {model_type} model"
    else:
        if isinstance(layers, nn.ModuleList) and len(layers) > 0:
            return layers
        problem = f"'{path}' in this {model_type} model is not a non-empty list of layers"
    try:
        found = _find_layers(model, expected, model_type)
    except UnsupportedModelError:
        advice = "none are found without it either; name them as print(model) shows them"
    else:
        advice = (
            f"its decoder layers are '{found}': leave layers_path (--layers-path) out to use "
            f"them, or pass '{found}'"
        )
    raise UnsupportedModelError(f"{problem}; {advice}")


def _given_site(layer: nn.Module, path: str, model_type: str, hidden: int | None) -> nn.Module:
    """The module at the site path the caller gave, inside `layer`.

    Raises:
        UnsupportedModelError: no such module, or not a linear projection; the message names
            the site this model has (found without the override), not the override again.
    """
    try:
        site = _get(layer, path)
    except AttributeError:
        problem = f"no module '{path}' in a decoder layer of this {model_type} model"
    else:
        if linear_shape(site) is not None:
            return site
        problem = (
            f"'{path}' in this {model_type} model is a {type(site).__name__}, not a linear "
            "projection"
        )
    try:
        found: str | None = _find_site(layer, model_type, hidden)
    except UnsupportedModelError:
        found = None
    raise UnsupportedModelError(f"{problem}; {dense_site_advice(layer, found)}")


def _config_layer_count(text_config: object) -> int | None:
    for name in ("num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(text_config, name, None)
        if isinstance(value, int):
            return value
    return None


def _config_hidden_size(text_config: object) -> int | None:
    for name in ("hidden_size", "n_embd", "d_model"):
        value = getattr(text_config, name, None)
        if isinstance(value, int):
            return value
    return None


def _moe_layout(
    layers: nn.ModuleList,
    layers_path: str,
    model_type: str,
    text_config: object,
    mlp_path: str | None,
) -> ModelLayout:
    """The layout of a mixture-of-experts model: `site_path` is the MLP block, `d_mlp` the
    widest layer, `moe` the per-layer neuron blocks."""
    hidden = _config_hidden_size(text_config)
    moe = resolve_moe(layers, model_type, hidden, mlp_path)
    mlp_paths = {layer.mlp_path for layer in moe.layers}
    if len(mlp_paths) != 1:
        raise UnsupportedModelError(
            f"the MLPs of this {model_type} model sit at several paths ({sorted(mlp_paths)}); "
            "pass site_path= (--site) naming one"
        )
    return ModelLayout(
        model_type=model_type,
        layers_path=layers_path,
        site_path=mlp_paths.pop(),
        n_layers=len(layers),
        d_mlp=max(moe.widths),
        d_model=hidden or 0,
        orientation="columns",
        moe=moe,
    )


def _find_layers(model: nn.Module, expected: int | None, model_type: str) -> str:
    """The shallowest homogeneous ModuleList with the config's layer count."""
    candidates: list[tuple[int, str]] = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(child) for child in module}) != 1:
            continue
        if expected is not None and len(module) != expected:
            continue
        candidates.append((name.count("."), name))
    if not candidates:
        raise UnsupportedModelError(
            f"could not find the decoder layers of this {model_type} model "
            f"(expected a list of {expected} identical layers); " + _OVERRIDE_HINT
        )
    return min(candidates)[1]


def _find_site(layer: nn.Module, model_type: str, hidden: int | None) -> str:
    """The MLP's last projection whose output width is the hidden size."""
    mlp_name = next((n for n, _ in layer.named_children() if _MLP_NAME.match(n)), None)
    if mlp_name is None:
        raise UnsupportedModelError(
            f"could not find the MLP of a {model_type} decoder layer (children: "
            f"{', '.join(n for n, _ in layer.named_children())}); " + _OVERRIDE_HINT
        )
    mlp = layer.get_submodule(mlp_name)
    if any(hasattr(mlp, hint) for hint in _MOE_HINTS):
        raise UnsupportedModelError(
            f"{model_type} has a mixture-of-experts MLP ({type(mlp).__name__}) but no child "
            "named 'experts' holding them, so its neurons cannot be found; " + _OVERRIDE_HINT
        )
    projections = [
        name
        for name, child in mlp.named_children()
        if (shape := linear_shape(child)) is not None and (hidden is None or shape[1] == hidden)
    ]
    if not projections:
        raise UnsupportedModelError(
            f"could not find the output projection of the {model_type} MLP "
            f"({type(mlp).__name__}); " + _OVERRIDE_HINT
        )
    # Registration order follows the forward pass in every family we know (up/gate, then down).
    return f"{mlp_name}.{projections[-1]}"


def _site_shape(site: nn.Module) -> tuple[int, int, Orientation]:
    """(input width, output width, orientation) of a site its caller has found to be linear
    (`_find_site`, `_given_site`)."""
    shape = linear_shape(site)
    assert shape is not None, f"{type(site).__name__} is not a linear projection"
    d_in, d_out, is_conv1d = shape
    return d_in, d_out, "rows" if is_conv1d else "columns"


_ATTN_NAME = re.compile(r"^(self_attn|attn|attention|self_attention)$", re.IGNORECASE)


@dataclass(frozen=True, eq=False)
class ResidualWriters:
    """The modules whose outputs are added into the residual stream.

    Attributes:
        embeddings: the token (and learned position) embeddings.
        blocks: per layer, (what the attention adds, what the MLP adds).
        linear: True when every writer is a linear map (embedding, Linear, Conv1D), so that a
            direction can be projected out of the weights exactly; False for families that
            normalise each sublayer's output before adding it (Gemma 2/3, OLMo 2).
    """

    embeddings: tuple[nn.Module, ...]
    blocks: tuple[tuple[nn.Module, nn.Module], ...]
    linear: bool

    def all(self) -> list[nn.Module]:
        return [*self.embeddings, *(m for pair in self.blocks for m in pair)]


def residual_writers(model: nn.Module, layout: ModelLayout) -> ResidualWriters:
    """Find the residual-stream writers of a decoder-only model (for directional ablation)."""
    layers = layout.layer_modules(model)
    post_norm = hasattr(layers[0], "post_feedforward_layernorm")
    blocks: list[tuple[nn.Module, nn.Module]] = []
    for layer in layers:
        if post_norm:  # the sublayer outputs pass through these norms before the residual add
            blocks.append(
                (
                    layer.get_submodule("post_attention_layernorm"),
                    layer.get_submodule("post_feedforward_layernorm"),
                )
            )
            continue
        attn_name = next((n for n, _ in layer.named_children() if _ATTN_NAME.match(n)), None)
        if attn_name is None:
            raise UnsupportedModelError(
                f"could not find the attention module of a {layout.model_type} layer"
            )
        attn = layer.get_submodule(attn_name)
        outs = [
            child
            for child in attn.children()
            if (shape := linear_shape(child)) is not None and shape[1] == layout.d_model
        ]
        if not outs:
            raise UnsupportedModelError(
                f"could not find the attention output projection of a {layout.model_type} layer"
            )
        blocks.append((outs[-1], _get(layer, layout.site_path)))
    inputs = model.get_input_embeddings()  # type: ignore[operator]
    assert isinstance(inputs, nn.Module)
    inside = {id(m) for layer in layers for m in layer.modules()}
    positions = [
        m
        for m in model.modules()
        if isinstance(m, nn.Embedding)
        and m is not inputs
        and id(m) not in inside
        and m.embedding_dim == layout.d_model
    ]
    return ResidualWriters(
        embeddings=(inputs, *positions),
        blocks=tuple(blocks),
        linear=not post_norm and layout.moe is None,  # an MoE block is no linear writer
    )
