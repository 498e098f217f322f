"""Write a copy of a GGUF file with a circuit baked into its down projections.

The copy is written tensor by tensor, never loading the model: the metadata entries are copied
byte for byte (an earlier bake's `neurosteer.*` entries are replaced), the provenance is added
as `neurosteer.*` entries, and every tensor except the down projections holding circuit
neurons is copied byte for byte. Those few are rewritten by `quants.scale_neurons` (same type
where it holds the edit exactly, otherwise the fallback type, or the same type with an
approximate edit when asked; see `neurosteer.export.gguf_quants`), and each one's distance from
the exact edit is reported. Mixture-of-experts circuits edit the stacked expert tensors
`ffn_down_exps` expert by expert and the shared experts' `ffn_down_shexp` by the same rule
(`neurosteer.export.gguf_experts`). Peak memory is about one tensor. The result loads in
llama.cpp and in transformers like the original.
"""

from __future__ import annotations

import json
import logging
import mmap
import struct
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from neurosteer._io import atomic_file, check_writable
from neurosteer._version import __version__
from neurosteer.errors import CircuitMismatchError, InputError
from neurosteer.export.gguf_experts import Targets, moe_tensors, scale_expert_neurons
from neurosteer.export.gguf_quants import (
    EditError,
    Fallback,
    ScaledTensor,
    check_fallback,
    scale_neurons,
)
from neurosteer.interventions.protocol import check_strength
from neurosteer.methods.baking import provenance
from neurosteer.methods.circuit import Circuit, as_circuits
from neurosteer.model.environment import environment
from neurosteer.model.fingerprint import GGUF_PROVENANCE_KEY, baked_record, weights_fingerprint
from neurosteer.model.gguf.reader import (
    STRING,
    GGUFHeader,
    TensorInfo,
    align,
    read_header,
    type_name,
)
from neurosteer.model.moe_layout import index_outside_message

logger = logging.getLogger(__name__)

PREFIX = "neurosteer."
FLOAT64 = 12
COPY_CHUNK = 64 * 2**20


@dataclass(frozen=True)
class ChangedTensor:
    """One rewritten down projection: its types before and after, and how far the stored edit
    is from the exact one (`error`; `max_error` is its largest value, in weight units).
    `experts` is the number of experts with circuit neurons in a stacked expert tensor
    (`ffn_down_exps`); 0 for a 2-D tensor."""

    name: str
    source_type: str
    stored_type: str
    neurons: int
    requantized_blocks: int
    max_error: float
    error: EditError
    experts: int = 0


@dataclass(frozen=True)
class GGUFBakeReport:
    """What `bake_gguf` wrote.

    Attributes:
        path: the new file.
        changed: the rewritten tensors, in file order.
        copied: the number of tensors copied byte for byte.
        peak_bytes: a bound on the tensor bytes held in memory at once: one tensor as stored,
            its float32 values and its new bytes.
    """

    path: Path
    changed: tuple[ChangedTensor, ...]
    copied: int
    peak_bytes: int


def down_projection_name(layer: int) -> str:
    """llama.cpp's name of a layer's MLP output projection."""
    return f"blk.{layer}.ffn_down.weight"


def bake_gguf(
    source: str | Path,
    circuit: Circuit | Sequence[Circuit],
    strength: float | None,
    output: str | Path,
    *,
    force: bool = False,
    fallback: Fallback = "F16",
    keep_type: bool = False,
) -> GGUFBakeReport:
    """Write `output`, a copy of the GGUF file `source` with the circuits' neurons scaled.

    The GGUF writer of `neurosteer.bake`: it takes what `steer` takes (one circuit or several,
    and the multiplier as the strength).

    Args:
        source: a .gguf file (any llama.cpp architecture with `blk.N.ffn_down.weight`; for
            an MoE circuit, `blk.N.ffn_down_exps.weight` and `blk.N.ffn_down_shexp.weight`).
        circuit: a circuit or several (no neuron in two of them); each one's layer count,
            d_mlp and family must match the file.
        strength: the multiplier m written into the weights (0 ablates, 1 leaves them as they
            are); None takes the first circuit's default strength.
        output: the file to write (atomically); refused if it exists unless `force`.
        fallback: "F16" or "Q8_0", the type of a changed tensor whose own type cannot hold
            the edit exactly.
        keep_type: keep each changed tensor's own type even where the edit is then
            approximate (its error is in the report; block types whose codes are known only).

    Raises:
        InputError: not a GGUF file, no down projection for a circuit layer (an expert
            tensor missing or of another shape: the message names it), a non-finite
            multiplier, circuits sharing a neuron, or an output refused by `check_writable`
            (including the source file itself).
        CircuitMismatchError: the circuit was found on a model of another shape or family.

    Example:
        >>> report = bake_gguf("qwen.gguf", circuit, 0.0, "qwen-steered.gguf")
        >>> [(t.name, t.stored_type) for t in report.changed]
        [('blk.12.ffn_down.weight', 'F16'), ...]
    """
    circuits = as_circuits(circuit)
    multiplier = check_strength(strength, circuits[0].default_strength)
    check_fallback(fallback)
    target = check_writable(output, force=force, inputs=[source])
    header = read_header(source)
    targets = _targets(header, circuits)
    extra = _provenance_entries(header, circuit, multiplier, fallback, keep_type)
    with (
        atomic_file(target, force=force, inputs=[source]) as staging,
        header.path.open("rb") as f,
        mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as src,
        staging.open("wb") as out,
    ):
        changed, peak = _write(header, src, out, targets, multiplier, (fallback, keep_type), extra)
    copied = len(header.tensors) - len(changed)
    return GGUFBakeReport(path=target, changed=changed, copied=copied, peak_bytes=peak)


def _targets(header: GGUFHeader, circuits: Sequence[Circuit]) -> Targets:
    """The tensors the circuits rewrite (`bake_targets`, merged), once the file is known not to
    be baked with one of them already.

    Raises:
        InputError, CircuitMismatchError: as `bake_targets`, `_merge` and `refuse_baked`.
    """
    targets = _merge([bake_targets(header, c) for c in circuits])
    for c in circuits:
        c.refuse_baked(baked_record(header.path), f"'{header.path.name}'")
    return targets


def bake_targets(header: GGUFHeader, circuit: Circuit) -> Targets:
    """{tensor name: {expert: int64 neuron indices}} of the tensors a bake rewrites (a 2-D
    tensor has the one key 0), after the checks that the circuit fits the file.

    Raises:
        InputError, CircuitMismatchError: as `circuit_tensors` (dense circuits) or
            `neurosteer.export.gguf_experts.moe_tensors` (MoE circuits; a missing expert tensor
            is named), or a circuit of another family.
    """
    if circuit.model.neuron_blocks is None:
        return {name: {0: neurons} for name, neurons in circuit_tensors(header, circuit).items()}
    _check_family(header, circuit)
    return moe_tensors(header, circuit)


def _check_family(header: GGUFHeader, circuit: Circuit) -> None:
    info, arch = circuit.model, header.architecture
    if _family(info.model_type) != _family(arch):
        raise CircuitMismatchError(
            f"this circuit was found on a {info.model_type} model ({info.name_or_path}) and "
            f"'{header.path.name}' is a {arch} model; neuron indices do not carry over between "
            "families, so discover a circuit on this model"
        )


def circuit_tensors(header: GGUFHeader, circuit: Circuit) -> dict[str, np.ndarray]:
    """{tensor name: int64 neuron indices} of the down projections to rewrite.

    The GGUF counterpart of `Circuit.check_fits`: the file's layer count, d_mlp (ne0 of its
    down projections) and architecture must be the circuit's.
    """
    arch = header.architecture
    n_layers = header.value(f"{arch}.block_count")
    downs = [t for t in header.tensors if t.name.endswith(".ffn_down.weight")]
    if not isinstance(n_layers, int) or not downs:
        experts = any(t.name.endswith(".ffn_down_exps.weight") for t in header.tensors)
        raise InputError(
            f"'{header.path.name}' has no {arch}.block_count or no blk.N.ffn_down.weight "
            "tensors; "
            + (
                "it is a mixture-of-experts model: discover the circuit on it (a dense "
                "model's circuit does not fit)"
                if experts
                else "only llama.cpp models with MLP down projections can be baked"
            )
        )
    d_mlp = downs[0].shape[0]
    info = circuit.model
    if (n_layers, d_mlp) != (info.n_layers, info.d_mlp):
        raise CircuitMismatchError(
            f"this circuit was found on {info.name_or_path} ({info.model_type}, {info.n_layers} "
            f"layers x {info.d_mlp} neurons) and does not fit '{header.path.name}' ({arch}, "
            f"{n_layers} layers x {d_mlp} neurons); discover a circuit on this model"
        )
    _check_family(header, circuit)
    targets = {}
    for layer, neurons in circuit.by_layer().items():
        name = down_projection_name(layer)
        tensor = header.tensor(name)
        if tensor is None or len(tensor.shape) != 2 or tensor.shape[0] != d_mlp:
            raise InputError(
                f"'{header.path.name}' has no down projection {name} of {d_mlp} x d_model values"
            )
        if len(neurons) and int(neurons.max()) >= d_mlp:
            raise CircuitMismatchError(index_outside_message(layer, int(neurons.max()), d_mlp))
        targets[name] = neurons.numpy().astype(np.int64)
    return targets


def _merge(per_circuit: list[Targets]) -> Targets:
    """One {tensor name: {expert: neuron indices}} for several circuits, which may not share a
    neuron (hooks would scale a shared neuron twice; one write scales it once)."""
    merged: Targets = {}
    for targets in per_circuit:
        for name, by_expert in targets.items():
            into = merged.setdefault(name, {})
            for expert, neurons in by_expert.items():
                both = np.concatenate([into.get(expert, np.empty(0, np.int64)), neurons])
                if len(np.unique(both)) < len(both):
                    raise InputError(
                        f"the circuits share neurons in {name}; bake them one at a time, or "
                        "into one circuit"
                    )
                into[expert] = both
    return merged


def _family(model_type: str) -> str:
    """A model type and a llama.cpp architecture name of the same family compare equal
    ("gemma3_text" ~ "gemma3", "gpt_neox" ~ "gptneox", "qwen3_5_moe_text" ~ "qwen35moe";
    llama.cpp writes Mistral and Mixtral as "llama", DeepSeek-V3 as "deepseek2")."""
    name = model_type.lower().removesuffix("_text").replace("_", "").replace("-", "")
    return _SAME_ARCHITECTURE.get(name, name)


_SAME_ARCHITECTURE = {"mistral": "llama", "mixtral": "llama", "deepseekv3": "deepseek2"}


def _write(
    header: GGUFHeader,
    src: mmap.mmap,
    out: BinaryIO,
    targets: Targets,
    multiplier: float,
    storage: tuple[Fallback, bool],
    extra: list[bytes],
) -> tuple[tuple[ChangedTensor, ...], int]:
    """Write the new file: header and metadata, a placeholder index, the data, the real index."""
    kept = [e for e in header.metadata.values() if not e.key.startswith(PREFIX)]
    out.write(src[:8])  # magic and version
    out.write(struct.pack("<QQ", len(header.tensors), len(kept) + len(extra)))
    for entry in kept:
        out.write(src[entry.start : entry.end])
    out.write(b"".join(extra))
    index_start = out.tell()
    out.write(_index(header.tensors, {}))  # same length as the final index
    data_start = align(out.tell(), header.alignment)
    out.write(b"\0" * (data_start - out.tell()))

    placed: dict[str, tuple[int, int]] = {}  # name -> (new type, new offset)
    changed = []
    peak = 0
    for tensor in sorted(header.tensors, key=lambda t: t.offset):
        offset = align(out.tell() - data_start, header.alignment)
        out.write(b"\0" * (data_start + offset - out.tell()))
        start = header.data_offset + tensor.offset
        nbytes = tensor.nbytes()
        if tensor.name in targets and multiplier != 1.0:
            # a copy: a view would pin the map open if the rewrite raises
            raw = np.frombuffer(src[start : start + nbytes], dtype=np.uint8)
            scaled = _scale(raw, tensor, targets[tensor.name], multiplier, storage)
            out.write(scaled.data.tobytes())
            values = int(np.prod(tensor.shape))  # at most this many decoded float32 values
            peak = max(peak, nbytes + 4 * values + scaled.data.nbytes)
            placed[tensor.name] = (scaled.ggml_type, offset)
            changed.append(_record(tensor, targets[tensor.name], scaled))
            logger.info("%s: %s -> %s", tensor.name, tensor.type_name, type_name(scaled.ggml_type))
        else:
            for at in range(start, start + nbytes, COPY_CHUNK):
                out.write(src[at : min(at + COPY_CHUNK, start + nbytes)])
            placed[tensor.name] = (tensor.ggml_type, offset)
    out.seek(index_start)
    out.write(_index(header.tensors, placed))
    order = {t.name: i for i, t in enumerate(header.tensors)}
    return tuple(sorted(changed, key=lambda c: order[c.name])), peak


def _scale(
    raw: np.ndarray,
    tensor: TensorInfo,
    by_expert: dict[int, np.ndarray],
    multiplier: float,
    storage: tuple[Fallback, bool],
) -> ScaledTensor:
    """The tensor's new bytes: a stacked expert tensor (3-D) expert by expert, else the dense
    edit of its one set of neurons."""
    fallback, keep_type = storage
    if len(tensor.shape) == 3:
        return scale_expert_neurons(
            raw,
            tensor.ggml_type,
            tensor.shape,
            by_expert,
            multiplier,
            fallback=fallback,
            keep_type=keep_type,
        )
    return scale_neurons(
        raw,
        tensor.ggml_type,
        tensor.shape,
        by_expert[0],
        multiplier,
        fallback=fallback,
        keep_type=keep_type,
    )


def _record(
    tensor: TensorInfo, by_expert: dict[int, np.ndarray], scaled: ScaledTensor
) -> ChangedTensor:
    return ChangedTensor(
        name=tensor.name,
        source_type=tensor.type_name,
        stored_type=type_name(scaled.ggml_type),
        neurons=sum(len(n) for n in by_expert.values()),
        requantized_blocks=scaled.requantized_blocks,
        max_error=scaled.max_error,
        error=scaled.error,
        experts=len(by_expert) if len(tensor.shape) == 3 else 0,
    )


def _index(tensors: tuple[TensorInfo, ...], placed: dict[str, tuple[int, int]]) -> bytes:
    """The tensor index; tensors not in `placed` keep their type with offset 0 (placeholder)."""
    parts = []
    for t in tensors:
        ggml_type, offset = placed.get(t.name, (t.ggml_type, 0))
        name = t.name.encode("utf-8")
        parts.append(struct.pack("<Q", len(name)) + name)
        parts.append(struct.pack(f"<I{len(t.shape)}Q", len(t.shape), *t.shape))
        parts.append(struct.pack("<IQ", ggml_type, offset))
    return b"".join(parts)


def _provenance_entries(
    header: GGUFHeader,
    circuit: Circuit | Sequence[Circuit],
    multiplier: float,
    fallback: Fallback,
    keep_type: bool,
) -> list[bytes]:
    """The `neurosteer.*` metadata entries, serialized: the library version, the multiplier,
    and a JSON record of the circuit, the source file, the fallback type and whether types were
    kept with approximate edits."""
    record = provenance(circuit, multiplier) | {
        "source": asdict(header.identity()),
        "source_weights": asdict(weights_fingerprint(header.path)),
        "fallback_type": fallback,
        "environment": environment(),
    }
    if keep_type:
        record["edit"] = "approximate, in the tensors' own types"
    text = json.dumps(record, sort_keys=True)
    values = {
        "neurosteer.multiplier": (FLOAT64, struct.pack("<d", multiplier)),
        GGUF_PROVENANCE_KEY: (STRING, _string(text)),
        "neurosteer.version": (STRING, _string(__version__)),
    }
    return [_string(k) + struct.pack("<I", t) + v for k, (t, v) in values.items()]


def _string(text: str) -> bytes:
    data = text.encode("utf-8")
    return struct.pack("<Q", len(data)) + data
