"""Stage 6 of the pipeline: write an intervention into the weights.

`bake(model, x, strength)` takes what `steer` takes (a circuit, several, or an
`Intervention` whose edit is exact) and returns a `BakeHandle` that undoes it; `save_baked`
writes the result as a plain checkpoint.

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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, fields, is_dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from neurosteer._compat import deprecated_name, renamed_keywords
from neurosteer._io import atomic_directory
from neurosteer._version import __version__
from neurosteer.circuit import Circuit, as_circuits
from neurosteer.errors import InputError
from neurosteer.fingerprint import BAKED_FILE, baked_on, mark_baked, weights_fingerprint
from neurosteer.hooks.edits import scale_values
from neurosteer.intervention import Bound, Intervention, check_strength
from neurosteer.layout import ModelLayout
from neurosteer.steering import Steerable

PROVENANCE_FILE = BAKED_FILE


class BakeHandle:
    """Undo for in-place weight edits: it keeps what was there, never divides by m."""

    def __init__(self) -> None:
        self._steps: list[Callable[[], None]] = []

    @property
    def active(self) -> bool:
        """Deprecated (removed in the next release): whether there is anything to undo."""
        deprecated_name("BakeHandle.active", "call undo(), which is idempotent")
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


@renamed_keywords({"circuit": "intervention", "multiplier": "strength"})
def bake(
    model: nn.Module,
    intervention: Steerable,
    strength: float | None = None,
    *,
    layout: ModelLayout | None = None,
) -> BakeHandle:
    """Write an intervention (or one or several circuits) into the weights, in place.

    Equivalent to `steer(model, intervention, strength)` at every position, with no hooks:
    a circuit's neurons are scaled in the output projection's weight (column j of
    [d_model, d_mlp], row j of GPT-2's Conv1D [d_mlp, d_model]); a direction is projected out
    of every residual writer (`DirectionAblation.bake`). Each edited weight slice becomes
    `(W.float() * float32(m)).to(W.dtype)`: the rounding rule of the steering hooks, so hook
    and bake agree to the tensor dtype's rounding (bit-close in float32; in bfloat16 m = 0.3
    is applied as 0.3 by both, not as bfloat16(0.3)). Weights keep their dtype and device.

    Args:
        model: the model to edit (its weights must be in memory, not offloaded).
        intervention: a `Circuit`, a list of circuits (applied one after another; on shared
            neurons the multipliers multiply, as with `steer`), or any `Intervention` whose
            edit is exact in the weights.
        strength: in the intervention's own unit (`neurosteer.intervention`'s table): for
            circuits the multiplier m (0 ablates, 1 leaves the weights as they are, 2
            doubles). None: the intervention's default (m = 0 for circuits).
        layout: a `ModelLayout` to use; for circuits it must use their recorded paths
            (`Circuit.layout_on`, the default).

    Returns:
        A `BakeHandle`; `undo()` restores the original weights exactly.

    Raises:
        InputError: a non-finite strength, an empty list or something that is not an
            intervention, or offloaded weights (nothing is changed).
        CircuitMismatchError: a circuit does not fit the model, or its recorded paths do not
            resolve on it (`CircuitLayoutError`).
        UnsupportedModelError: an intervention that cannot be baked exactly (CAA and
            MLP-output steering; directional ablation on families that normalise sublayer
            outputs): use `steer`.

    Example:
        >>> handle = bake(model, circuit, 0.0)
        >>> model.save_pretrained("steered-model")
        >>> handle.undo()
    """
    if isinstance(intervention, Intervention):  # a circuit too: Circuit.bake → bake_circuits
        return intervention.bake(model, strength, layout=layout)
    return bake_circuits(model, as_circuits(intervention), strength, layout=layout)


def bake_circuits(
    model: nn.Module,
    circuits: Sequence[Circuit],
    strength: float | None = None,
    *,
    layout: ModelLayout | None = None,
) -> BakeHandle:
    """`bake` for one or several circuits (what `Circuit.bake` runs)."""
    if not circuits:
        raise InputError("bake() needs at least one circuit")
    m = check_strength(strength, circuits[0].default_strength)
    plans = []
    for circuit in circuits:
        c_layout = circuit.layout_on(model, layout)
        plans.append((c_layout, c_layout.site_modules(model), circuit.by_layer()))
    edited = [sites[layer] for _, sites, by_layer in plans for layer in by_layer]
    require_editable(model, edited, "bake the circuit")
    handle = BakeHandle()
    before = baked_on(model)
    handle.on_undo(lambda: mark_baked(model, before))
    try:
        with torch.no_grad():
            for c_layout, sites, by_layer in plans:
                axis = 1 if c_layout.orientation == "columns" else 0
                for layer, neurons in by_layer.items():
                    weight = sites[layer].weight
                    assert isinstance(weight, torch.Tensor)
                    index = neurons.to(weight.device)
                    original = handle.keep_slice(weight, axis, index)
                    weight.index_copy_(axis, index, scale_values(original, m))
    except BaseException:
        handle.undo()
        raise
    # Steering this model with one of these circuits now would apply it twice (see
    # `Circuit.layout_on`); the mark goes with `handle.undo()`.
    mark_baked(model, provenance(list(circuits), m))
    return handle


@renamed_keywords(
    {"circuit": "intervention", "multiplier": "strength"},
    old_positional=(
        "model",
        "tokenizer",
        "out_dir",
    ),  # 0.1: save_baked(model, tok, out_dir, *, circuit, multiplier)
)
def save_baked(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    intervention: Steerable,
    strength: float | None,
    out_dir: str | Path,
    *,
    force: bool = False,
    layout: ModelLayout | None = None,
) -> Path:
    """Bake, save a standard checkpoint (model + tokenizer), and undo: the model is unchanged.

    Like every writer (`bake_streaming`, the GGUF bake) it takes the source, what to apply,
    the strength and then the output path, which `neurosteer._io.check_writable` checks.
    The folder loads with plain `AutoModelForCausalLM.from_pretrained`; `neurosteer.json`
    beside the weights records what was baked and at which strength.

    Args:
        model, tokenizer: the model to bake (weights in memory) and its tokenizer.
        intervention, strength: as for `bake` (None: the intervention's default strength).
        out_dir: the folder to write, atomically; refused if it exists unless `force`.
        layout: as for `bake`.

    Raises:
        InputError: any of the model's weights is offloaded (a saved copy would not hold the
            edit), or `out_dir` exists without `force` or has no parent folder; nothing is
            written. For offloaded models use `neurosteer.streaming.bake_streaming` on the
            saved checkpoint. Also the errors of `bake`.
    """
    default = (
        intervention.default_strength
        if isinstance(intervention, Intervention)
        else as_circuits(intervention)[0].default_strength
    )
    value = check_strength(strength, default)
    require_editable(model, [model], "save a baked checkpoint")
    source = weights_fingerprint(model)
    with atomic_directory(out_dir, force=force) as staging:
        handle = bake(model, intervention, value, layout=layout)
        try:
            model.save_pretrained(staging)
        finally:
            handle.undo()
        tokenizer.save_pretrained(staging)
        record = provenance(intervention, value) | {"source_weights": asdict(source)}
        (staging / PROVENANCE_FILE).write_text(json.dumps(record, indent=2, sort_keys=True))
    return Path(out_dir)


def provenance(intervention: Steerable, strength: float) -> dict[str, Any]:
    """What a baked checkpoint records about how it was made (`neurosteer.json`).

    Circuits are recorded in full ("circuit", or "circuits" for several), with the strength
    also under "multiplier" (its meaning for circuits); any other intervention by its type and
    plain settings ("intervention").
    """
    record: dict[str, Any] = {"library_version": __version__, "strength": strength}
    while isinstance(intervention, Bound):
        intervention = intervention.intervention
    if isinstance(intervention, Intervention) and not isinstance(intervention, Circuit):
        return record | {"intervention": _settings(intervention)}
    circuits = [_circuit_record(c) for c in as_circuits(intervention)]
    record["multiplier"] = strength
    if isinstance(intervention, Circuit):
        return record | {"circuit": circuits[0]}
    return record | {"circuits": circuits}


def _settings(intervention: Intervention) -> dict[str, Any]:
    """{"type": class name, plus each plain (number, text) field of a dataclass}."""
    values: dict[str, Any] = {}
    if is_dataclass(intervention):
        for f in fields(intervention):
            value = getattr(intervention, f.name)
            if isinstance(value, (bool, int, float, str)):
                values[f.name] = value
    return {"type": type(intervention).__name__, **values}


def _circuit_record(circuit: Circuit) -> dict[str, Any]:
    return {
        "model": asdict(circuit.model),
        "settings": asdict(circuit.settings),
        "prompts": {k: asdict(v) for k, v in sorted(circuit.prompts.items())},
        "neurons": {str(layer): idx.tolist() for layer, idx in circuit.by_layer().items()},
    }
