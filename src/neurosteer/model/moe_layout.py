"""Where the neurons of a mixture-of-experts model live.

A neuron of an MoE layer is (layer, expert, j): coordinate j of the input of expert e's down
projection. Circuits keep the dense form (layer, neuron) with the neuron index flattened per
layer, so selection, `reselect`, `random_like`, sweeps and searches need no special case:

    routed expert e, neuron j   ->  e * I + j                 (I: one expert's width)
    shared expert(s), neuron j  ->  E * I + j                 (after the E routed experts)
    a dense layer, neuron j     ->  j                         (DeepSeek-V3's first layers)

A layer's width is the sum of its blocks; layers may differ (dense vs MoE), so tables are
[n_layers, max width] and the neurons past a layer's width are never candidates
(`MoeLayout.valid_mask`). `MoeLayout.describe` turns a flat index back into "E5 n301".

Two storages are resolved, as transformers 5 keeps them: fused 3-D parameters
(`experts.down_proj` [E, H, I], or [E, I, H] when the class says `is_transposed`, as gpt-oss)
whose compute goes through transformers' `ExpertsInterface`, and experts kept as separate
modules (an `nn.ModuleList` of MLPs, each with its own down projection).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from neurosteer.errors import UnsupportedModelError

BlockKind = Literal["routed", "shared", "dense"]
Storage = Literal["fused", "modules", "linear"]

_EXPERTS_NAME = re.compile(r"^(experts|expert|moe_experts|local_experts)$", re.IGNORECASE)
_SHARED_NAME = re.compile(r"^(shared_experts?|shared_mlp|shared)$", re.IGNORECASE)


@dataclass(frozen=True)
class NeuronBlock:
    """A run of a layer's flat neuron indices that one weight (or one expert set) holds.

    Attributes:
        kind: "routed" (the router's experts), "shared" (always-on shared experts, with or
            without their own gate) or "dense" (the MLP of a layer without experts).
        path: from the decoder layer to the down projection ("linear": an `nn.Linear` or
            Conv1D whose input is the neurons) or to the experts module ("fused", "modules").
        start: the block's first flat index within its layer.
        n_experts: E for routed blocks, else 1.
        width: neurons per expert (I), or the projection's input width.
        storage: "fused" 3-D expert parameters, "modules" (one module per expert, whose down
            projection sits at `down`), or "linear" (one projection).
        transposed: fused: `down_proj` is [E, I, H] (else [E, H, I]); linear: a Conv1D.
        down: for "modules", the path from one expert module to its down projection.
    """

    kind: BlockKind
    path: str
    start: int
    n_experts: int
    width: int
    storage: Storage
    transposed: bool = False
    down: str = ""

    @property
    def size(self) -> int:
        """Flat indices the block holds (n_experts × width)."""
        return self.n_experts * self.width

    def split(self, flat: torch.Tensor) -> dict[int, torch.Tensor]:
        """{expert: [n] int64 neuron indices within the expert} of the flat layer indices
        `flat` that fall in this block (experts without any are left out)."""
        inside = flat[(flat >= self.start) & (flat < self.start + self.size)] - self.start
        experts = inside // self.width
        return {int(e): inside[experts == e] % self.width for e in torch.unique(experts).tolist()}


@dataclass(frozen=True)
class LayerNeurons:
    """The neuron blocks of one decoder layer, in flat-index order."""

    mlp_path: str
    blocks: tuple[NeuronBlock, ...]

    @property
    def width(self) -> int:
        return sum(b.size for b in self.blocks)

    @property
    def has_experts(self) -> bool:
        return any(b.kind == "routed" for b in self.blocks)


@dataclass(frozen=True)
class MoeLayout:
    """Per-layer neuron blocks of a mixture-of-experts model (`ModelLayout.moe`)."""

    layers: tuple[LayerNeurons, ...]

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(layer.width for layer in self.layers)

    @property
    def n_neurons(self) -> int:
        return sum(self.widths)

    def valid_mask(self, d_mlp: int) -> torch.Tensor:
        """[n_layers, d_mlp] bool: True where a layer has a neuron (False on the padding)."""
        widths = torch.tensor(self.widths)
        return torch.arange(d_mlp)[None, :] < widths[:, None]

    def describe(self, layer: int, neuron: int) -> str:
        """The neuron's name inside its layer: "E5 n301", "S n12" (shared), "n7" (dense)."""
        return describe_neuron(self.table(), layer, neuron)

    def table(self) -> list[list[list[int | str]]]:
        """The per-layer block table a circuit records: [[kind, start, n_experts, width], ...]
        per layer (plain JSON; read back by `describe_neuron`)."""
        return [
            [[b.kind, b.start, b.n_experts, b.width] for b in layer.blocks] for layer in self.layers
        ]


def describe_neuron(table: list[list[list[int | str]]], layer: int, neuron: int) -> str:
    """ "E5 n301" (routed expert 5), "S n12" (shared experts) or "n7" (dense) for a flat index,
    from a block table as `MoeLayout.table` writes it.

    Raises:
        IndexError: the layer or neuron is outside the table.
    """
    for kind, start, n_experts, width in table[layer]:
        start, n_experts, width = int(start), int(n_experts), int(width)
        if start <= neuron < start + n_experts * width:
            offset = neuron - start
            if kind == "routed":
                return f"E{offset // width} n{offset % width}"
            return f"S n{offset}" if kind == "shared" else f"n{offset}"
    raise IndexError(f"neuron {neuron} is outside layer {layer}'s blocks")


def index_outside_message(
    layer: int, index: int, width: int, blocks: list[list[int | str]] | None = None
) -> str:
    """The one-line error for a circuit's neuron index past its layer's width, e.g. "this
    circuit holds neuron 650 of layer 5, which has 640 neurons (routed 8 experts x 64 +
    shared 128); ...". `blocks` is the layer's row of a `MoeLayout.table` (None: dense)."""
    split = ""
    if blocks:
        parts = [
            f"routed {b[2]} experts x {b[3]}"
            if b[0] == "routed"
            else f"{b[0]} {int(b[2]) * int(b[3])}"
            for b in blocks
        ]
        split = f" ({' + '.join(parts)})"
    return (
        f"this circuit holds neuron {index} of layer {layer}, which has {width} neurons{split}; "
        "the circuit file is damaged or from another model: discover it again on this model"
    )


def is_moe(layers: nn.ModuleList, mlp_path: str | None) -> bool:
    """Whether any decoder layer's MLP holds experts."""
    return any(_experts_child(_mlp(layer, mlp_path)[1]) is not None for layer in layers)


def resolve_moe(
    layers: nn.ModuleList, model_type: str, hidden: int | None, mlp_path: str | None
) -> MoeLayout:
    """The neuron blocks of every decoder layer of an MoE model.

    Args:
        layers: the decoder layers.
        model_type: for messages.
        hidden: the residual width (the output width of every down projection).
        mlp_path: override for the MLP's path inside a layer (default: the child named
            mlp / feed_forward / ffn / block_sparse_moe ...).

    Raises:
        UnsupportedModelError: one line naming the layer and what could not be found (the
            experts' down projection, its width, a shared expert's projection), or an experts
            module whose compute does not go through transformers' `ExpertsInterface`.
    """
    return MoeLayout(
        tuple(
            _layer_neurons(i, layer, model_type, hidden, mlp_path) for i, layer in enumerate(layers)
        )
    )


_MLP_NAMES = re.compile(r"^(mlp|feed_forward|ffn|ff|mlp_block|block_sparse_moe|moe)$", re.I)


def _mlp(layer: nn.Module, mlp_path: str | None) -> tuple[str, nn.Module | None]:
    if mlp_path is not None:
        try:
            return mlp_path, layer.get_submodule(mlp_path)
        except AttributeError:
            return mlp_path, None
    for name, child in layer.named_children():
        if _MLP_NAMES.match(name):
            return name, child
    return "", None


def _experts_child(mlp: nn.Module | None) -> tuple[str, nn.Module] | None:
    if mlp is None:
        return None
    for name, child in mlp.named_children():
        if _EXPERTS_NAME.match(name):
            return name, child
    return None


def _layer_neurons(
    index: int, layer: nn.Module, model_type: str, hidden: int | None, mlp_path: str | None
) -> LayerNeurons:
    name, mlp = _mlp(layer, mlp_path)
    where = f"layer {index} of this {model_type} model"
    if mlp is None:
        raise UnsupportedModelError(
            f"could not find the MLP of {where}; pass site_path= (--site) naming it, e.g. 'mlp'"
        )
    found = _experts_child(mlp)
    if found is None:  # a dense layer inside an MoE model
        down, width, transposed = _down_projection(mlp, hidden, f"the MLP '{name}' of {where}")
        block = NeuronBlock("dense", f"{name}.{down}", 0, 1, width, "linear", transposed)
        return LayerNeurons(name, (block,))
    experts_name, experts = found
    routed = _routed_block(experts, f"{name}.{experts_name}", hidden, where)
    blocks = [routed]
    start = routed.size
    for child_name, child in mlp.named_children():
        if not _SHARED_NAME.match(child_name):
            continue
        down, width, transposed = _down_projection(
            child, hidden, f"the shared expert '{name}.{child_name}' of {where}"
        )
        path = f"{name}.{child_name}.{down}"
        blocks.append(NeuronBlock("shared", path, start, 1, width, "linear", transposed))
        start += width
    return LayerNeurons(name, tuple(blocks))


def _routed_block(experts: nn.Module, path: str, hidden: int | None, where: str) -> NeuronBlock:
    """The routed-experts block of one layer (fused 3-D parameters or one module per expert)."""
    if isinstance(experts, nn.ModuleList) and len(experts) > 0:
        down, width, transposed = _down_projection(experts[0], hidden, f"expert 0 of {where}")
        return NeuronBlock("routed", path, 0, len(experts), width, "modules", transposed, down)
    down_w = getattr(experts, "down_proj", None)
    if not isinstance(down_w, torch.Tensor) or down_w.dim() != 3:
        raise UnsupportedModelError(
            f"the experts '{path}' of {where} ({type(experts).__name__}) hold no 3-D "
            "down_proj [experts, hidden, width] and are not a list of expert modules; "
            "their neurons cannot be found"
        )
    if not hasattr(experts, "is_transposed") or not hasattr(experts, "has_gate"):
        raise UnsupportedModelError(
            f"the experts '{path}' of {where} ({type(experts).__name__}) do not dispatch "
            "through transformers' ExpertsInterface (use_experts_implementation), so their "
            "neurons cannot be hooked; upgrade transformers or the model's code"
        )
    transposed = bool(experts.is_transposed)
    n_experts, a, b = (int(s) for s in down_w.shape)
    width, out = (a, b) if transposed else (b, a)
    if hidden is not None and out != hidden:
        raise UnsupportedModelError(
            f"the experts '{path}' of {where} have down_proj {tuple(down_w.shape)}, whose "
            f"output is not the hidden size {hidden}; their neurons cannot be found"
        )
    return NeuronBlock("routed", path, 0, n_experts, width, "fused", transposed)


def linear_shape(module: nn.Module) -> tuple[int, int, bool] | None:
    """(input width, output width, is Conv1D) of an `nn.Linear` or Conv1D; None otherwise."""
    if isinstance(module, Conv1D):
        d_in, d_out = module.weight.shape  # Conv1D stores [in, out]
        return int(d_in), int(d_out), True
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features, False
    return None


def _down_projection(mlp: nn.Module, hidden: int | None, what: str) -> tuple[str, int, bool]:
    """(name, input width, is Conv1D) of the MLP's last projection back to the hidden size."""
    found: tuple[str, int, bool] | None = None
    for name, child in mlp.named_children():
        shape = linear_shape(child)
        if shape is not None and (hidden is None or shape[1] == hidden):
            found = (name, shape[0], shape[2])
    if found is None:
        raise UnsupportedModelError(
            f"could not find the down projection of {what} ({type(mlp).__name__}: no linear "
            f"child back to the hidden size {hidden}); its neurons cannot be found"
        )
    return found
