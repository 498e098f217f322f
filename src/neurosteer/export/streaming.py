"""For big checkpoints: bake circuits into safetensors shards without loading the model.

The layout comes from the config alone (the model is built on the meta device, no weights);
then each shard is handled on its own: shards without an output projection of the circuit are
copied byte for byte, the others are read, the circuit's columns (rows for Conv1D) scaled, and
written back with their metadata. Peak memory is about one shard. Config, tokenizer and index
files are copied unchanged, so the result is a plain checkpoint.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM

from neurosteer._compat import renamed_keywords
from neurosteer._io import atomic_directory, check_writable
from neurosteer.errors import InputError
from neurosteer.export.moe_streaming import moe_edits
from neurosteer.hooks.edits import scale_values
from neurosteer.interventions.protocol import check_strength
from neurosteer.methods.baking import PROVENANCE_FILE, provenance
from neurosteer.methods.circuit import Circuit, as_circuits
from neurosteer.model.environment import environment
from neurosteer.model.fingerprint import baked_record
from neurosteer.model.layout import ModelLayout, resolve_layout

logger = logging.getLogger(__name__)

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


@dataclass(frozen=True)
class StreamingReport:
    """What a streaming bake did.

    Attributes:
        shards: number of weight files.
        rewritten: the shards that held a circuit tensor (the rest were copied as they are).
        tensors: the names of the scaled tensors.
        peak_bytes: the most tensor bytes held in memory at once (about one shard).
    """

    shards: int
    rewritten: tuple[str, ...]
    tensors: tuple[str, ...]
    peak_bytes: int


# over 60 lines: a 9-line signature and 30-line docstring of public arguments; body 35 lines
@renamed_keywords({"multiplier": "strength"})
def bake_streaming(
    checkpoint: str | Path,
    circuit: Circuit | Sequence[Circuit],
    strength: float | None,
    out_dir: str | Path,
    *,
    force: bool = False,
    layout: ModelLayout | None = None,
) -> StreamingReport:
    """Write a copy of a local safetensors checkpoint with circuits baked in, shard by shard.

    Like every writer (`save_baked`, the GGUF bake) it takes the source, what to apply, the
    strength and then the output path, which `neurosteer._io.check_writable` checks.

    Args:
        checkpoint: a local folder written by `save_pretrained` (single or sharded safetensors).
        circuit: a circuit, or several (applied one after another, like `bake`); each must
            fit the checkpoint's shape.
        strength: the multiplier m written into the weights (0 ablates, 1 leaves them as
            they are); None: the circuits' default (0).
        out_dir: the folder to write; refused if it exists unless `force`, and always if it
            is, holds or lies inside `checkpoint`.
        layout: a `ModelLayout` to use; by default the circuit's recorded layer and site
            paths are resolved on a weightless copy of the model (`Circuit.layout_on`), and a
            given layout must use the same paths.

    The scaled slices are rounded like the in-memory bake (float32 product, one rounding to
    the checkpoint's dtype), so both give the same bits.

    Raises:
        InputError: not a local safetensors checkpoint, tensor names that do not follow the
            modules, a non-finite strength, an empty list, or an output path refused by
            `check_writable` (nothing is written).
        CircuitMismatchError: a circuit does not fit, or its paths do not resolve on the
            checkpoint's model (`CircuitLayoutError`).

    Example:
        >>> bake_streaming("Llama-3.1-70B-Instruct", circuit, 0.0, "llama-70b-no-refusal")
    """
    source = Path(checkpoint)
    circuits = as_circuits(circuit)
    m = check_strength(strength, circuits[0].default_strength)
    shard_of = _weight_map(source)
    check_writable(out_dir, force=force, inputs=[source])  # before the model is built
    model = skeleton(source)
    layouts = [c.layout_on(model, layout) for c in circuits]
    for c in circuits:
        c.refuse_baked(baked_record(source), f"'{source}'")
    if any(lay != layouts[0] for lay in layouts):
        raise InputError("the circuits sit at different layer or site paths; bake them one by one")
    by_shard: dict[str, dict[str, list[_Slice]]] = {}
    for name, edit in _edits(layouts[0], circuits, set(shard_of)):
        by_shard.setdefault(shard_of[name], {}).setdefault(name, []).append(edit)

    peak = 0
    with atomic_directory(out_dir, force=force, inputs=[source]) as staging:
        for item in sorted(source.iterdir()):
            if item.name in by_shard:
                shard = _rewrite_shard(item, staging / item.name, by_shard[item.name], m)
                peak = max(peak, shard)
            elif item.is_dir():
                shutil.copytree(item, staging / item.name)
            elif item.name != PROVENANCE_FILE:
                shutil.copyfile(item, staging / item.name)
        record = provenance(circuit, m) | {"streaming": True, "environment": environment()}
        (staging / PROVENANCE_FILE).write_text(json.dumps(record, indent=2, sort_keys=True))
    return StreamingReport(
        shards=len(set(shard_of.values())),
        rewritten=tuple(sorted(by_shard)),
        tensors=tuple(sorted({name for edits in by_shard.values() for name in edits})),
        peak_bytes=peak,
    )


def _weight_map(folder: Path) -> dict[str, str]:
    """{tensor name: shard file name} of a local safetensors checkpoint."""
    if not (folder / "config.json").is_file():
        raise InputError(f"'{folder}' is not a local checkpoint folder (no config.json)")
    if (folder / INDEX_FILE).is_file():
        index = json.loads((folder / INDEX_FILE).read_text())
        return {str(k): str(v) for k, v in index["weight_map"].items()}
    if (folder / SINGLE_FILE).is_file():
        with safe_open(str(folder / SINGLE_FILE), framework="pt") as f:
            return dict.fromkeys(f.keys(), SINGLE_FILE)
    raise InputError(
        f"'{folder}' has no safetensors weights ({SINGLE_FILE} or {INDEX_FILE}); "
        "streaming bake needs them (convert the checkpoint, or bake without --streaming)"
    )


def skeleton(folder: str | Path) -> torch.nn.Module:
    """A weightless copy of a local checkpoint's model, built on the meta device."""
    if not (Path(folder) / "config.json").is_file():
        raise InputError(f"'{folder}' is not a local checkpoint folder (no config.json)")
    config = AutoConfig.from_pretrained(folder)
    with torch.device("meta"):
        model: torch.nn.Module = AutoModelForCausalLM.from_config(config)
    return model


def layout_from_config(
    folder: str | Path, *, layers_path: str | None = None, site_path: str | None = None
) -> ModelLayout:
    """Resolve the layout on a weightless copy of the model built on the meta device."""
    return resolve_layout(skeleton(folder), layers_path=layers_path, site_path=site_path)


_Slice = tuple[int | None, int, torch.Tensor]
"""(expert slice of a fused 3-D tensor or None, axis, [n] neuron indices) of one edit."""


def _edits(
    layout: ModelLayout, circuits: Sequence[Circuit], names: set[str]
) -> list[tuple[str, _Slice]]:
    """(tensor name, slice to scale) of every edit, circuit by circuit."""
    if layout.moe is not None:
        return [(e.name, (e.expert, e.axis, e.neurons)) for e in moe_edits(layout, circuits, names)]
    axis = 1 if layout.orientation == "columns" else 0
    targets = _target_names(layout, circuits, names)
    return [(name, (None, axis, n)) for name, per in targets.items() for n in per]


def _target_names(
    layout: ModelLayout, circuits: Sequence[Circuit], names: set[str]
) -> dict[str, list[torch.Tensor]]:
    """{checkpoint tensor name: the neuron indices to scale, one tensor per circuit using it}
    of every output-projection weight to scale."""
    targets: dict[str, list[torch.Tensor]] = {}
    for circuit in circuits:
        for layer, neurons in circuit.by_layer().items():
            module_name = f"{layout.layers_path}.{layer}.{layout.site_path}.weight"
            # Some checkpoints (e.g. the original GPT-2) store names without the base prefix.
            candidates = [module_name, module_name.split(".", 1)[1]]
            found = next((c for c in candidates if c in names), None)
            if found is None:
                raise InputError(
                    f"the checkpoint has no tensor '{module_name}'; its names do not follow the "
                    "model's modules, so bake it in memory instead (without --streaming)"
                )
            targets.setdefault(found, []).append(neurons)
    return targets


def _rewrite_shard(
    source: Path,
    target: Path,
    scaled: dict[str, list[_Slice]],
    multiplier: float,
) -> int:
    """Copy one shard with the given tensors' neuron slices scaled; returns the bytes held."""
    with safe_open(str(source), framework="pt") as f:
        metadata = f.metadata()
        tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 - not a dict
    for name, per_circuit in scaled.items():
        weight = tensors[name]
        # The same operations as the in-memory bake (circuit by circuit), so both give the same
        # bits in any dtype.
        for expert, axis, neurons in per_circuit:
            part = weight if expert is None else weight[expert]  # a view: edits land in weight
            part.index_copy_(
                axis, neurons, scale_values(part.index_select(axis, neurons), multiplier)
            )
    save_file(tensors, str(target), metadata=metadata)
    logger.info("rewrote %s (%d tensors scaled)", source.name, len(scaled))
    return sum(t.numel() * t.element_size() for t in tensors.values())
