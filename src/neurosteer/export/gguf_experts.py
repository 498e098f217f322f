"""The GGUF bake of mixture-of-experts circuits: which tensors hold the neurons, and the edit
of a 3-D expert tensor.

llama.cpp stores a layer's routed experts stacked in one tensor, `blk.N.ffn_down_exps.weight`,
of ggml shape (I, d_model, E) (numpy [E, d_model, I]): expert e's down projection is slice e,
and, as in a dense `ffn_down`, ne0 = I is contiguous, so neuron j of expert e is value j of each
of the slice's d_model rows. A shared expert is a 2-D `blk.N.ffn_down_shexp.weight` (I_s,
d_model) like a dense down projection, and a dense layer inside an MoE model (DeepSeek-V3's
first ones) keeps `blk.N.ffn_down.weight`. A circuit's flat neuron index (`neurosteer.model.
moe_layout`: e * I + j for routed experts, then the shared ones) maps onto them one to one.

The type rule is the dense one (`neurosteer.export.gguf_quants`), per tensor, since a GGUF
tensor has one type: each expert slice holding circuit neurons gets the dense edit of its
rows (quantization blocks run along a row, within one expert); the tensor keeps its type when
every slice's edit is exact in it (or with `keep_type`), else the whole tensor, every expert,
is stored in the fallback type. Slices are processed one at a time, so the float32 values held
at once are one expert's.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from neurosteer.errors import CircuitMismatchError, InputError
from neurosteer.export.gguf_quants import (
    _CODES,
    ELEMENTWISE,
    EditError,
    Fallback,
    ScaledTensor,
    _edit_blocks,
    _fallback,
    _scale_elementwise,
    check_fallback,
)
from neurosteer.methods.circuit import Circuit
from neurosteer.model.gguf.reader import GGUFHeader
from neurosteer.model.moe_layout import index_outside_message

#: {tensor name: {expert: int64 neuron indices}}; a 2-D tensor has the one key 0.
Targets = dict[str, dict[int, np.ndarray]]

#: llama.cpp's tensor of each kind of neuron block (`neurosteer.model.moe_layout.BlockKind`).
TENSOR_OF_KIND = {
    "routed": "blk.{layer}.ffn_down_exps.weight",
    "shared": "blk.{layer}.ffn_down_shexp.weight",
    "dense": "blk.{layer}.ffn_down.weight",
}


def moe_tensors(header: GGUFHeader, circuit: Circuit) -> Targets:
    """{tensor name: {expert: neuron indices}} of the tensors that bake an MoE circuit.

    Every block of every layer (`ModelInfo.neuron_blocks`) must have its tensor in the file,
    of the block's shape: routed (I, d_model, E), shared and dense (width, d_model).

    Raises:
        CircuitMismatchError: the file has another layer count, or a neuron index lies past its
            layer's blocks.
        InputError: a block's tensor is missing or of another shape (the message names it).
    """
    blocks = circuit.model.neuron_blocks
    assert blocks is not None
    n_layers = header.value(f"{header.architecture}.block_count")
    if n_layers != len(blocks):
        raise CircuitMismatchError(
            f"this circuit was found on {circuit.model.name_or_path} ({len(blocks)} layers) and "
            f"'{header.path.name}' has {n_layers} layers; discover a circuit on this model"
        )
    for layer, layer_blocks in enumerate(blocks):
        for kind, _start, n_experts, width in layer_blocks:
            _check_tensor(header, str(kind), layer, int(n_experts), int(width), circuit)
    targets: Targets = {}
    for layer, flat in circuit.by_layer().items():
        end = 0
        for kind, start, n_experts, width in blocks[layer]:
            start, n_experts, width = int(start), int(n_experts), int(width)
            end = max(end, start + n_experts * width)
            inside = flat[(flat >= start) & (flat < start + n_experts * width)].numpy() - start
            if len(inside):
                name = TENSOR_OF_KIND[str(kind)].format(layer=layer)
                experts = inside // width
                targets[name] = {
                    int(e): (inside[experts == e] % width).astype(np.int64)
                    for e in np.unique(experts)
                }
        if len(flat) and int(flat.max()) >= end:
            message = index_outside_message(layer, int(flat.max()), end, blocks[layer])
            raise CircuitMismatchError(message)
    return targets


def _check_tensor(
    header: GGUFHeader, kind: str, layer: int, n_experts: int, width: int, circuit: Circuit
) -> None:
    """Raise `InputError` naming the tensor unless the file holds it with the block's shape."""
    if kind not in TENSOR_OF_KIND:
        raise InputError(f"the circuit's layer {layer} has a neuron block of unknown kind {kind!r}")
    name = TENSOR_OF_KIND[kind].format(layer=layer)
    d_model = circuit.model.d_model
    shape = (width, d_model, n_experts) if kind == "routed" else (width, d_model)
    tensor = header.tensor(name)
    if tensor is None:
        raise InputError(
            f"cannot edit {name} in '{header.path.name}': the file has no such tensor, which "
            f"holds the circuit's {kind} neurons of layer {layer}; its experts are stored "
            "otherwise, so bake the safetensors checkpoint and convert it with llama.cpp"
        )
    if tuple(tensor.shape) != shape:
        raise InputError(
            f"cannot edit {name} in '{header.path.name}': it has ggml shape {tensor.shape} and "
            f"the circuit's {kind} neurons of layer {layer} need {shape}; the circuit was found "
            "on another model, so discover one on this file"
        )


def scale_expert_neurons(
    raw: np.ndarray,
    ggml_type: int,
    shape: tuple[int, ...],
    by_expert: Mapping[int, np.ndarray],
    multiplier: float,
    *,
    fallback: Fallback = "F16",
    keep_type: bool = False,
) -> ScaledTensor:
    """Scale neurons of a stacked expert tensor, expert by expert, by `multiplier`.

    Args:
        raw: the tensor's bytes as stored, uint8 [n_bytes].
        ggml_type: its ggml type id.
        shape: its ggml shape (I, d_model, E).
        by_expert: {expert: int64 [n] distinct indices in [0, I)}.
        multiplier: the scale (finite).
        fallback, keep_type: as for `neurosteer.export.gguf_quants.scale_neurons`; the choice
            between the own type and the fallback is made for the whole tensor.

    Raises:
        InputError: an unknown fallback, an expert outside [0, E), or a multiplier that
            overflows the stored type.
    """
    check_fallback(fallback)
    n_ff, d_model, n_experts = shape
    if any(not 0 <= e < n_experts for e in by_expert):
        raise InputError(f"an expert index outside the tensor's {n_experts} experts")
    table = np.ascontiguousarray(raw).reshape(n_experts, d_model, -1)
    if ggml_type in ELEMENTWISE or ggml_type in _CODES:
        kept = _kept_type(table, ggml_type, by_expert, multiplier, keep_type)
        if kept is not None:
            return kept
    slices = []
    for e in range(n_experts):
        neurons = by_expert.get(e, np.empty(0, dtype=np.int64))
        slices.append(_fallback(table[e], ggml_type, n_ff, neurons, multiplier, fallback))
    return _stack(slices, slices[0].ggml_type)


def _kept_type(
    table: np.ndarray,
    ggml_type: int,
    by_expert: Mapping[int, np.ndarray],
    multiplier: float,
    keep_type: bool,
) -> ScaledTensor | None:
    """The edit in the tensor's own type (experts without neurons keep their bytes); None when
    a block type cannot hold some expert's edit exactly and not `keep_type`."""
    slices = []
    for e in range(table.shape[0]):
        neurons = by_expert.get(e)
        if neurons is None or not len(neurons):
            slices.append(ScaledTensor(table[e].reshape(-1), ggml_type, 0, _NO_ERROR))
            continue
        neurons = np.asarray(neurons, dtype=np.int64)
        if ggml_type in ELEMENTWISE:
            scaled = _scale_elementwise(table[e], ggml_type, neurons, multiplier)
        else:
            edited = _edit_blocks(table[e], ggml_type, neurons, multiplier, keep_type)
            if edited is None:
                return None
            scaled = edited
        slices.append(scaled)
    return _stack(slices, ggml_type)


_NO_ERROR = EditError(neurons=0.0, blocks=0.0, rest=0.0, edit=0.0, exact=True)


def _stack(slices: list[ScaledTensor], ggml_type: int) -> ScaledTensor:
    """One tensor of the experts' slices, in order; its error is the largest of theirs."""
    errors = [s.error for s in slices]
    error = EditError(
        neurons=max(e.neurons for e in errors),
        blocks=max(e.blocks for e in errors),
        rest=max(e.rest for e in errors),
        edit=max(e.edit for e in errors),
        exact=all(e.exact for e in errors),
    )
    data = np.concatenate([s.data.reshape(-1) for s in slices])
    return ScaledTensor(data, ggml_type, sum(s.requantized_blocks for s in slices), error)
