"""A circuit as a llama.cpp LoRA adapter (.gguf), for `--lora` / `--lora-scaled`.

The file follows llama.cpp's adapter convention (what its `convert_lora_to_gguf.py` writes):
`general.type = "adapter"`, `general.architecture` = the base model's, `adapter.type = "lora"`,
`adapter.lora.alpha`, and for each changed projection two tensors beside the base tensor's name,
`blk.N.ffn_down.weight.lora_a` (ggml shape (d_mlp, rank), i.e. [rank, d_mlp] row-major, PEFT's
lora_A) and `blk.N.ffn_down.weight.lora_b` (ggml (rank, d_model), PEFT's lora_B).

llama.cpp multiplies B·A by the user's scale times alpha / rank, with one alpha per file. So
every layer is padded with zero rows and columns to one rank R (the largest per-layer neuron
count) and alpha = R: the factor is then exactly the scale s, and the neurons are scaled by
m' = 1 + s·(m − 1) as in `neurosteer.export.lora`. The padding costs R − r zero rows per layer.
lora_a is stored in F16 (its 0s and 1s are exact there, at half the bytes), lora_b in F32 (the
weight columns times m − 1, unrounded).

The factors come from the base weights as the engine will use them: from the GGUF file itself
(its stored, possibly quantized, down projections decoded to float32), or from a loaded model.
"""

from __future__ import annotations

import json
import mmap
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from neurosteer._io import atomic_file, check_writable
from neurosteer._version import __version__
from neurosteer.errors import InputError, UnsupportedModelError
from neurosteer.export.gguf import _family, circuit_tensors, down_projection_name
from neurosteer.export.lora import (
    LoraFactors,
    LoraReport,
    layer_neurons,
    lora_factors,
    neuron_columns,
)
from neurosteer.interventions.protocol import check_strength
from neurosteer.methods.baking import provenance
from neurosteer.methods.circuit import Circuit
from neurosteer.model.fingerprint import baked_record, weights_fingerprint
from neurosteer.model.gguf.reader import GGUFHeader, read_header, require_gguf
from neurosteer.model.layout import ModelLayout

#: The metadata key of the JSON record of what the adapter was made from.
LORA_RECORD_KEY = "neurosteer.lora"


def save_lora_gguf(
    source: nn.Module | str | Path,
    circuit: Circuit,
    multiplier: float | None,
    output: str | Path,
    *,
    force: bool = False,
    layout: ModelLayout | None = None,
) -> LoraReport:
    """Write the circuit at `multiplier` as a llama.cpp LoRA adapter file.

    Args:
        source: the base model: a GGUF file (its stored down projections are read, nothing
            else is loaded) or a loaded model of a family llama.cpp knows.
        circuit: the circuit to export.
        multiplier: m at adapter scale 1; None: the circuit's default strength.
        output: the .gguf file to write, atomically; refused if it exists unless `force`.
        layout: for a loaded model, as for `bake` (default: the circuit's recorded paths).

    Raises:
        InputError: a non-finite multiplier, an empty circuit, an output refused by
            `check_writable` (the source itself included), or a GGUF file without the
            circuit's down projections.
        CircuitMismatchError: the circuit does not fit the model, or is already baked into it.
        UnsupportedModelError: a loaded model of a family llama.cpp has no architecture for.

    Example:
        >>> save_lora_gguf("qwen.gguf", circuit, 0.0, "refusal-lora.gguf")
        # llama-server -m qwen.gguf --lora-scaled refusal-lora.gguf 0.5
    """
    m = check_strength(multiplier, circuit.default_strength)
    if not len(circuit):
        raise InputError("this circuit has no neurons, so there is nothing to export")
    inputs = [] if isinstance(source, nn.Module) else [source]
    target = check_writable(output, force=force, inputs=inputs)
    if isinstance(source, nn.Module):
        arch = llama_cpp_architecture(source)
        d_mlp, columns = _model_columns(source, circuit, layout)
        weights = asdict(weights_fingerprint(source))
    else:
        header = read_header(source)
        arch = header.architecture
        d_mlp, columns = _file_columns(header, circuit)
        weights = asdict(weights_fingerprint(header.path))
    rank = max(int(c.shape[1]) for c in columns.values())
    by_layer = layer_neurons(circuit)
    factors = [
        lora_factors(layer, columns[layer], by_layer[layer], d_mlp, m, rank=rank)
        for layer in sorted(columns)
    ]
    record = provenance(circuit, m) | {"source_weights": weights, "rank": rank}
    with atomic_file(target, force=force, inputs=inputs) as staging:
        _write(staging, arch, rank, factors, json.dumps(record, sort_keys=True))
    ranks = {layer: int(c.shape[1]) for layer, c in columns.items()}
    return LoraReport(target, ranks, rank, m, target.stat().st_size)


def llama_cpp_architecture(model: nn.Module) -> str:
    """llama.cpp's `general.architecture` for a loaded model ("qwen2", "gemma3", "gptneox").

    Raises:
        UnsupportedModelError: no llama.cpp architecture of that name.
    """
    gguf = require_gguf()
    model_type = str(getattr(getattr(model, "config", None), "model_type", "") or "")
    arch = _family(model_type)
    if not model_type or arch not in set(gguf.MODEL_ARCH_NAMES.values()):
        raise UnsupportedModelError(
            f"llama.cpp has no architecture for model type {model_type or '(none)'!r}; export "
            "a PEFT adapter instead (an output folder, not a .gguf file)"
        )
    return arch


def _model_columns(
    model: nn.Module, circuit: Circuit, layout: ModelLayout | None
) -> tuple[int, dict[int, torch.Tensor]]:
    """(d_mlp, {layer: [d_model, r] W[:, C]}) of a loaded model."""
    layout, columns = neuron_columns(model, circuit, layout)
    return layout.d_mlp, columns


def _file_columns(header: GGUFHeader, circuit: Circuit) -> tuple[int, dict[int, torch.Tensor]]:
    """(d_mlp, {layer: [d_model, r] float32 W[:, C]}) decoded from the file's down projections.

    Raises:
        InputError, CircuitMismatchError: as `neurosteer.export.gguf.circuit_tensors`, and a
            file that already has this circuit baked in.
    """
    gguf = require_gguf()
    circuit_tensors(header, circuit)  # the checks: shape, family, tensors present
    circuit.refuse_baked(baked_record(header.path), f"'{header.path.name}'")
    columns: dict[int, torch.Tensor] = {}
    d_mlp = 0
    with _mapped(header.path) as data:
        for layer, neurons in layer_neurons(circuit).items():
            tensor = header.tensor(down_projection_name(layer))
            assert tensor is not None  # circuit_tensors checked it
            d_mlp, d_model = tensor.shape[0], int(np.prod(tensor.shape[1:]))
            start = header.data_offset + tensor.offset
            raw = np.frombuffer(data[start : start + tensor.nbytes()], dtype=np.uint8)
            qtype = gguf.GGMLQuantizationType(tensor.ggml_type)
            values = gguf.quants.dequantize(raw.reshape(d_model, -1), qtype)  # [d_model, d_mlp]
            picked = values[:, neurons.numpy()]
            columns[layer] = torch.from_numpy(np.ascontiguousarray(picked, np.float32))
    return d_mlp, columns


@contextmanager
def _mapped(path: Path) -> Iterator[mmap.mmap]:
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        yield data


def _write(path: Path, arch: str, rank: int, factors: list[LoraFactors], record: str) -> None:
    """Write the adapter file: metadata, then per layer lora_a [rank, d_mlp] (F16, exact: only
    0 and 1) and lora_b [d_model, rank] (F32)."""
    gguf = require_gguf()
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(rank))
    writer.add_string("neurosteer.version", __version__)
    writer.add_string(LORA_RECORD_KEY, record)
    for f in factors:
        name = down_projection_name(f.layer)
        writer.add_tensor(f"{name}.lora_a", f.a.numpy().astype(np.float16))
        writer.add_tensor(f"{name}.lora_b", f.b.numpy())
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
