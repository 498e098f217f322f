"""Stage 6 of the pipeline: write a steering multiplier into the weights.

Scaling neuron j by m at every position is the same as scaling column j of the output
projection's weight [d_model, d_mlp] by m (row j of GPT-2's Conv1D weight [d_mlp, d_model]);
the bias is added after the product and stays as it is. A baked model is therefore an
ordinary checkpoint any engine can serve, with no hooks and no overhead.

Precision: a bake applies m under the same rule as the steering hook (see
`neurosteer.hooks.edits`): m rounded to float32, the product computed in float32 and rounded
to the weight's dtype once. Hook and bake then differ only by where that one rounding falls
(activation or weight): bit-close in float32, within bfloat16's rounding in bfloat16.

Weights that accelerate offloads (a placeholder on the meta device, the values on the CPU or
disk) cannot be edited in place: every path that edits or saves weights checks
`require_editable` first and refuses before changing anything.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
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
from neurosteer.hooks.edits import scale_values
from neurosteer.layout import ModelLayout

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


def require_editable(model: nn.Module, modules: Iterable[nn.Module], action: str) -> None:
    """Refuse, before anything changes, if any parameter of `modules` is offloaded.

    An offloaded parameter (accelerate's `device_map` with CPU/disk offload, `cpu_offload`) is
    a placeholder on the meta device, or is swapped in by a hook only during the forward pass,
    so an in-place edit would be lost (and a saved checkpoint would hold the unedited values).

    Args:
        model: the model, used to name the parameters in the message.
        modules: the modules whose parameters (recursively) are to be edited or saved.
        action: what was asked for, for the message (e.g. "bake the circuit").

    Raises:
        InputError: naming the first offloaded parameter and what to do instead.
    """
    names = {id(m): name for name, m in model.named_modules()}
    offloaded: list[str] = []
    for top in modules:
        for sub_name, module in top.named_modules(prefix=names.get(id(top), "")):
            hooked = _offloaded_by_hook(module)
            for name, tensor in module.named_parameters(recurse=False):
                if hooked or tensor.device.type == "meta":
                    offloaded.append(f"{sub_name}.{name}" if sub_name else name)
    if offloaded:
        more = f" (and {len(offloaded) - 1} more)" if len(offloaded) > 1 else ""
        raise InputError(
            f"cannot {action}: '{offloaded[0]}'{more} is offloaded (accelerate keeps its values "
            "on the CPU or disk and only a placeholder in the model), so an in-place edit would "
            "change nothing; load the model without a device map or offloading (device_map=None, "
            "or no --device-map/--max-memory/--offload-folder), or bake a saved safetensors "
            "checkpoint shard by shard with bake_streaming (neurosteer bake --streaming)"
        )


def _offloaded_by_hook(module: nn.Module) -> bool:
    """Whether an accelerate hook on `module` swaps its weights in and out (offload=True)."""
    hook = getattr(module, "_hf_hook", None)
    if hook is None:
        return False
    hooks = getattr(hook, "hooks", None) or [hook]  # a SequentialHook holds several
    return any(bool(getattr(h, "offload", False)) for h in hooks)


def bake(
    model: nn.Module,
    circuit: Circuit,
    multiplier: float = 0.0,
    *,
    layout: ModelLayout | None = None,
) -> BakeHandle:
    """Scale the circuit's neurons by `multiplier` in the weights, in place.

    Equivalent to `steer(model, circuit, multiplier)` at every position, with no hooks. Each
    scaled weight slice becomes `(W.float() * float32(m)).to(W.dtype)`: the rounding rule of
    the steering hook, so hook and bake agree to the tensor dtype's rounding (bit-close in
    float32; in bfloat16 m = 0.3 is applied as 0.3 by both, not as bfloat16(0.3)).

    Args:
        model: the model to edit (its weights must be in memory, not offloaded).
        circuit: the neurons to scale; they are found at the circuit's recorded layer and
            site paths (`circuit.layout_on`).
        multiplier: 0 ablates, 1 leaves the weights as they are, 2 doubles.
        layout: a `ModelLayout` to use; it must use the circuit's paths.

    Raises:
        InputError: a non-finite multiplier, or offloaded weights (nothing is changed).
        CircuitMismatchError: the circuit does not fit the model, or its recorded paths do
            not resolve on it (`CircuitLayoutError`).

    Example:
        >>> handle = bake(model, circuit, multiplier=0.0)
        >>> model.save_pretrained("steered-model")
        >>> handle.undo()
    """
    if not math.isfinite(multiplier):
        raise InputError(f"the multiplier must be a finite number, got {multiplier!r}")
    layout = circuit.layout_on(model, layout)
    sites = layout.site_modules(model)
    by_layer = circuit.by_layer()
    require_editable(model, [sites[layer] for layer in by_layer], "bake the circuit")
    axis = 1 if layout.orientation == "columns" else 0
    handle = BakeHandle()
    try:
        with torch.no_grad():
            for layer, neurons in by_layer.items():
                weight = sites[layer].weight
                assert isinstance(weight, torch.Tensor)
                index = neurons.to(weight.device)
                original = handle.keep_slice(weight, axis, index)
                weight.index_copy_(axis, index, scale_values(original, multiplier))
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

    Raises:
        InputError: any of the model's weights is offloaded (a saved copy would not hold the
            edit); nothing is written. Use `neurosteer.streaming.bake_streaming` on the saved
            checkpoint instead. Also the errors of `bake`.
    """
    out = Path(out_dir)
    require_editable(model, [model], "save a baked checkpoint")
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
