"""The logit lens of single neurons: which tokens a neuron's output column promotes and
suppresses when read straight through the final norm's weight and the unembedding.

Neuron j of layer l writes a_j · w_j into the residual stream, w_j [d_model] the j-th column of
the layer's down projection (a row for GPT-2's Conv1D). Its direct effect on the next-token
logits, ignoring the later layers and the norm's 1/rms scale (a positive number shared by every
token), is

    logits_j = W_U (g ⊙ w_j)        [vocab]

with g the final norm's weight (1 + weight for Gemma's norms; LayerNorms centre w_j first).
Families that normalise the MLP's output before the residual add (Gemma 2/3, OLMo 2) also
multiply by that norm's weight. Positive entries are promoted per unit of activation,
negative ones suppressed; a negative activation swaps the two.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from neurosteer.errors import InputError
from neurosteer.model.layout import ModelLayout

logger = logging.getLogger(__name__)

_FINAL_NORM_NAMES = ("norm", "final_layernorm", "final_layer_norm", "ln_f", "norm_f")
_POST_MLP_NORM = "post_feedforward_layernorm"


@dataclass(frozen=True)
class NeuronLens:
    """The tokens one neuron's output column moves most, each as (token text, logit per unit
    of activation), strongest first.

    Attributes:
        promoted: the tokens with the largest logits (most positive first).
        suppressed: the tokens with the smallest logits (most negative first).
    """

    promoted: tuple[tuple[str, float], ...]
    suppressed: tuple[tuple[str, float], ...]


def neuron_logit_lens(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    layout: ModelLayout,
    layers: torch.Tensor,
    neurons: torch.Tensor,
    *,
    top: int = 8,
) -> list[NeuronLens]:
    """The promoted and suppressed tokens of each neuron ([k] `layers`, `neurons`).

    Tokens past the tokenizer's vocabulary (an unembedding padded to a round size) are left
    out; token texts are the tokenizer's decoding of the single token.

    Args:
        model, tokenizer, layout: the model the neurons belong to and where they sit.
        layers, neurons: [k] int64.
        top: tokens kept on each side.

    Returns:
        One `NeuronLens` per neuron, in the given order.

    Raises:
        InputError: `top` below 1, or a neuron outside the layout.
    """
    if top < 1:
        raise InputError(f"top must be at least 1, got {top}")
    if len(layers) and (int(layers.max()) >= layout.n_layers or int(neurons.max()) >= layout.d_mlp):
        raise InputError("a neuron lies outside this model's layers or MLP width")
    directions = residual_directions(model, layout, layers, neurons)  # [k, d_model]
    logits = unembed(model, directions, len(tokenizer))  # [k, vocab]
    found = []
    for row in logits:
        high, low = row.topk(top), (-row).topk(top)
        found.append(
            NeuronLens(
                promoted=_tokens(tokenizer, high.indices, high.values),
                suppressed=_tokens(tokenizer, low.indices, -low.values),
            )
        )
    return found


@torch.no_grad()
def residual_directions(
    model: nn.Module, layout: ModelLayout, layers: torch.Tensor, neurons: torch.Tensor
) -> torch.Tensor:
    """[k, d_model] float32: each neuron's output column as the final norm passes it on (the
    MLP-output norm's and the final norm's weights applied, LayerNorms centred)."""
    sites = layout.site_modules(model)
    layer_modules = layout.layer_modules(model)
    final = final_norm(model, layout)
    rows = []
    for layer, neuron in zip(layers.tolist(), neurons.tolist(), strict=True):
        weight = sites[layer].weight
        assert isinstance(weight, torch.Tensor)
        column = weight[:, neuron] if layout.orientation == "columns" else weight[neuron]
        direction = column.detach().float().cpu()
        post = getattr(layer_modules[layer], _POST_MLP_NORM, None)
        if isinstance(post, nn.Module):
            direction = _through_norm(post, direction)
        rows.append(direction if final is None else _through_norm(final, direction))
    if not rows:
        return torch.zeros(0, layout.d_model)
    return torch.stack(rows)


@torch.no_grad()
def unembed(model: nn.Module, directions: torch.Tensor, vocab: int) -> torch.Tensor:
    """[k, vocab] float32: `directions` [k, d_model] through the output embedding, its rows
    past `vocab` (padding) dropped."""
    head = model.get_output_embeddings()  # type: ignore[operator]
    if not isinstance(head, nn.Module) or not isinstance(head.weight, torch.Tensor):
        raise InputError("this model has no output embedding to read the logit lens through")
    weight = head.weight.detach()[:vocab].float().cpu()  # [vocab, d_model]
    return directions @ weight.T


def final_norm(model: nn.Module, layout: ModelLayout) -> nn.Module | None:
    """The norm applied after the last decoder layer: the child of the decoder layers' parent
    named like one (`norm`, `ln_f`, ...), else its last child whose class is a norm; None
    (with a warning) when there is none."""
    parent_path = layout.layers_path.rpartition(".")[0]
    parent = model.get_submodule(parent_path) if parent_path else model
    children = dict(parent.named_children())
    for name in _FINAL_NORM_NAMES:
        if isinstance(children.get(name), nn.Module):
            return children[name]
    norms = [m for m in children.values() if "norm" in type(m).__name__.lower()]
    if norms:
        return norms[-1]
    logger.warning("no final norm found beside %s; the logit lens skips it", layout.layers_path)
    return None


def _through_norm(norm: nn.Module, direction: torch.Tensor) -> torch.Tensor:
    """`direction` [d_model] times the norm's effective weight (centred first for a
    LayerNorm; Gemma's norms scale by 1 + weight)."""
    if isinstance(norm, nn.LayerNorm):
        direction = direction - direction.mean()
    weight = getattr(norm, "weight", None)
    if not isinstance(weight, torch.Tensor):
        return direction
    scale = weight.detach().float().cpu()
    if type(norm).__name__.startswith("Gemma"):
        scale = 1.0 + scale
    return direction * scale


def _tokens(
    tokenizer: PreTrainedTokenizerBase, ids: torch.Tensor, values: torch.Tensor
) -> tuple[tuple[str, float], ...]:
    return tuple(
        (str(tokenizer.decode([int(i)])), float(v))
        for i, v in zip(ids.tolist(), values.tolist(), strict=True)
    )


def lens_for(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    layout: ModelLayout,
    pairs: Sequence[tuple[int, int]],
    *,
    top: int = 8,
) -> dict[tuple[int, int], NeuronLens]:
    """{(layer, neuron): its lens} for the given pairs (`neuron_logit_lens` keyed)."""
    layers = torch.tensor([layer for layer, _ in pairs], dtype=torch.long)
    neurons = torch.tensor([n for _, n in pairs], dtype=torch.long)
    found = neuron_logit_lens(model, tokenizer, layout, layers, neurons, top=top)
    return dict(zip(pairs, found, strict=True))
