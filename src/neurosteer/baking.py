"""Stage 6 of the pipeline: write a steering multiplier into the weights.

Scaling neuron j by m at every position is the same as scaling column j of the output
projection's weight [d_model, d_mlp] by m (row j of GPT-2's Conv1D weight [d_mlp, d_model]);
the bias is added after the product and stays as it is. A baked model is therefore an
ordinary checkpoint any engine can serve, with no hooks and no overhead.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from neurosteer._io import atomic_directory
from neurosteer._version import __version__
from neurosteer.circuit import Circuit
from neurosteer.errors import InputError
from neurosteer.layout import ModelLayout, resolve_layout

PROVENANCE_FILE = "neurosteer.json"


class BakeHandle:
    """Undo for in-place weight edits: it keeps what was there, never divides by m."""

    def __init__(self) -> None:
        self._steps: list[Callable[[], None]] = []

    @property
    def active(self) -> bool:
        return bool(self._steps)

    def on_undo(self, step: Callable[[], None]) -> None:
        """Register a restoring step; steps run in reverse order of registration."""
        self._steps.append(step)

    def keep_slice(self, weight: torch.Tensor, axis: int, index: torch.Tensor) -> torch.Tensor:
        """Save `weight`'s slices `index` along `axis` for undo; returns a copy of them."""
        original = weight.index_select(axis, index).clone()

        def restore() -> None:
            weight.index_copy_(axis, index, original)

        self.on_undo(restore)
        return original

    def undo(self) -> None:
        """Restore the original weights exactly (idempotent)."""
        with torch.no_grad():
            while self._steps:
                self._steps.pop()()


def bake(
    model: nn.Module,
    circuit: Circuit,
    multiplier: float = 0.0,
    *,
    layout: ModelLayout | None = None,
) -> BakeHandle:
    """Scale the circuit's neurons by `multiplier` in the weights, in place.

    Equivalent to `steer(model, circuit, multiplier)` at every position, with no hooks.

    Example:
        >>> handle = bake(model, circuit, multiplier=0.0)
        >>> model.save_pretrained("steered-model")
        >>> handle.undo()
    """
    if not math.isfinite(multiplier):
        raise InputError(f"the multiplier must be a finite number, got {multiplier!r}")
    layout = layout or resolve_layout(model)
    circuit.check_fits(layout)
    sites = layout.site_modules(model)
    axis = 1 if layout.orientation == "columns" else 0
    handle = BakeHandle()
    try:
        with torch.no_grad():
            for layer, neurons in circuit.by_layer().items():
                weight = sites[layer].weight
                assert isinstance(weight, torch.Tensor)
                if weight.device.type == "meta":
                    raise InputError(
                        f"layer {layer}'s weights are offloaded (on the meta device); load the "
                        "model without offload (e.g. on the CPU) to bake it"
                    )
                index = neurons.to(weight.device)
                original = handle.keep_slice(weight, axis, index)
                weight.index_copy_(axis, index, original * multiplier)
    except BaseException:
        handle.undo()
        raise
    return handle


def save_baked(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: str | Path,
    *,
    circuit: Circuit,
    multiplier: float,
    force: bool = False,
    layout: ModelLayout | None = None,
) -> Path:
    """Bake, save a standard checkpoint (model + tokenizer), and undo: the model is unchanged.

    The folder loads with plain `AutoModelForCausalLM.from_pretrained`; `neurosteer.json`
    beside the weights records which circuit and multiplier made it.
    """
    out = Path(out_dir)
    with atomic_directory(out, force=force) as staging:
        handle = bake(model, circuit, multiplier, layout=layout)
        try:
            model.save_pretrained(staging)
        finally:
            handle.undo()
        tokenizer.save_pretrained(staging)
        record = provenance(circuit, multiplier)
        (staging / PROVENANCE_FILE).write_text(json.dumps(record, indent=2, sort_keys=True))
    return out


def provenance(circuit: Circuit, multiplier: float) -> dict[str, Any]:
    """What a baked checkpoint records about how it was made (`neurosteer.json`)."""
    return {
        "library_version": __version__,
        "multiplier": multiplier,
        "circuit": {
            "model": asdict(circuit.model),
            "settings": asdict(circuit.settings),
            "prompts": {k: asdict(v) for k, v in sorted(circuit.prompts.items())},
            "neurons": {str(layer): idx.tolist() for layer, idx in circuit.by_layer().items()},
        },
    }
