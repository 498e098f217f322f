"""Checkpoint tensor names of MoE neurons, for the streaming bake.

transformers 5 fuses experts on load (`experts.down_proj` [E, H, I]) but may save them either
fused (gpt-oss: [E, I, H]) or converted back to one tensor per expert, as the checkpoint came
(Mixtral: `block_sparse_moe.experts.{e}.w2.weight`, Qwen-MoE: `mlp.experts.{e}.down_proj.weight`,
both [H, I]). A neuron edit then lands on the fused tensor's expert slice, or on the expert's
own tensor, with the same rounding as the in-memory bake.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from neurosteer.errors import InputError
from neurosteer.model.layout import ModelLayout
from neurosteer.model.moe_layout import NeuronBlock

_DOWN_NAMES = ("down_proj", "w2", "dense_4h_to_h", "c_proj", "fc2", "wo")


@dataclass(frozen=True)
class MoeEdit:
    """One tensor edit: scale `neurons` along `axis` of `name` (of `name`[expert] when fused)."""

    name: str
    expert: int | None  # the slice of a fused [E, ., .] tensor; None: the whole 2-D tensor
    axis: int
    neurons: torch.Tensor


def moe_edits(layout: ModelLayout, circuits: Sequence[object], names: set[str]) -> list[MoeEdit]:
    """The tensor edits that bake `circuits` (each with `by_layer()`) into a checkpoint whose
    tensor names are `names`.

    Raises:
        InputError: a block's tensor is not in the checkpoint under any known name (the message
            names the layer, block and expert).
    """
    assert layout.moe is not None
    edits: list[MoeEdit] = []
    for circuit in circuits:
        for layer, flat in circuit.by_layer().items():  # type: ignore[attr-defined]
            spec = layout.moe.layers[layer]
            prefix = f"{layout.layers_path}.{layer}."
            for part in spec.blocks:
                for expert, neurons in part.split(flat).items():
                    edits.append(_edit(prefix, spec.mlp_path, part, expert, neurons, names))
    return edits


def _edit(
    prefix: str, mlp: str, part: NeuronBlock, expert: int, neurons: torch.Tensor, names: set[str]
) -> MoeEdit:
    if part.storage == "linear":
        name = _first([f"{prefix}{part.path}.weight"], names)
        return MoeEdit(_found(name, prefix + part.path), None, 0 if part.transposed else 1, neurons)
    fused = _first([f"{prefix}{part.path}.down_proj"], names)
    if part.storage == "fused" and fused is not None:
        return MoeEdit(fused, expert, 0 if part.transposed else 1, neurons)
    experts = re.escape(part.path.rsplit(".", 1)[-1])
    pattern = re.compile(
        rf"^{re.escape(prefix)}[^.]+\.{experts}\.{expert}\.({'|'.join(_DOWN_NAMES)})\.weight$"
    )
    own = sorted(n for n in names if pattern.match(n))
    what = (
        f"{prefix}{mlp}.experts.{expert} ({part.path}.down_proj [E, ., .] or one tensor per expert)"
    )
    return MoeEdit(_found(own[0] if own else None, what), None, 1, neurons)


def _first(candidates: list[str], names: set[str]) -> str | None:
    for name in candidates:
        for option in (name, name.split(".", 1)[1]):  # some checkpoints drop the base prefix
            if option in names:
                return option
    return None


def _found(name: str | None, what: str) -> str:
    if name is None:
        raise InputError(
            f"the checkpoint has no tensor for {what}; its names do not follow the model's "
            "modules, so bake it in memory instead (without --streaming)"
        )
    return name
