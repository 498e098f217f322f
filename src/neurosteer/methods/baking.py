"""Write an intervention into the weights.

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
from dataclasses import asdict, fields, is_dataclass
from pathlib import Path
from typing import Any

from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from neurosteer._compat import renamed_keywords
from neurosteer._io import atomic_directory
from neurosteer._version import __version__
from neurosteer.interventions.handles import BakeHandle, require_editable
from neurosteer.interventions.protocol import Bound, Intervention, check_strength
from neurosteer.methods.circuit import Circuit, as_circuits, bake_circuits, circuits_provenance
from neurosteer.methods.steering import Steerable
from neurosteer.model.environment import environment
from neurosteer.model.fingerprint import BAKED_FILE, weights_fingerprint
from neurosteer.model.layout import ModelLayout

PROVENANCE_FILE = BAKED_FILE


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
        strength: in the intervention's own unit (`neurosteer.interventions.protocol`'s table): for
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
            written. For offloaded models use `neurosteer.export.streaming.bake_streaming` on the
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
        record = provenance(intervention, value) | {
            "source_weights": asdict(source),
            "environment": environment(model),
        }
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
    return circuits_provenance(
        as_circuits(intervention), strength, one=isinstance(intervention, Circuit)
    )


def _settings(intervention: Intervention) -> dict[str, Any]:
    """{"type": class name, plus each plain (number, text) field of a dataclass}."""
    values: dict[str, Any] = {}
    if is_dataclass(intervention):
        for f in fields(intervention):
            value = getattr(intervention, f.name)
            if isinstance(value, (bool, int, float, str)):
                values[f.name] = value
    return {"type": type(intervention).__name__, **values}
