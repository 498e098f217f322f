"""A cheap fingerprint of a model's weights, and what a baked checkpoint says it carries.

Two models of the same architecture (a base and an instruct checkpoint) share their config and
every tensor shape; only the values tell them apart. Hashing every byte of a 1 GB checkpoint
is too slow to do on every load, so a fingerprint hashes a small fixed sample of the values:

    files    SHA-256 of each weight file's name, size and header (safetensors header, GGUF
             header + metadata + tensor index) and of a few byte ranges spread over every
             tensor's data (`_RANGES_PER_TENSOR` x `_RANGE_BYTES` bytes each; files without a
             tensor index, such as pytorch .bin pickles, over the whole file). It does not
             depend on the dtype the model is loaded in. `load_model` records it.
    params   SHA-256 of every parameter's name, shape and `_VALUES_PER_PARAM` values at evenly
             spaced flat indices, rounded to bfloat16 first, so that float32 and bfloat16 loads
             of one checkpoint agree (float16 loads and dequantized GGUF files need not). It
             serves models built in Python, which have no files.

Two fingerprints are compared kind by kind (`WeightsFingerprint.same_as`): the files kind
where both have it, else the params kind; with no kind in common they cannot be compared. The
sample sees any checkpoint whose values change throughout (fine-tuning, another seed,
quantization); an edit confined to a few values of one tensor can pass unseen, which is why a
baked checkpoint also names its circuit (`baked_record`).
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import nn

from neurosteer.model.gguf.reader import GGUFHeader, read_header

_FILES_ATTRIBUTE = "neurosteer_weight_files"
_BAKED_ATTRIBUTE = "neurosteer_baked"
_RANGES_PER_TENSOR = 4
_RANGE_BYTES = 32
_WHOLE_FILE_RANGES = 256
_VALUES_PER_PARAM = 16
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
BAKED_FILE = "neurosteer.json"
"""The provenance file of a checkpoint baked by `neurosteer.save_baked` (written there)."""
GGUF_PROVENANCE_KEY = "neurosteer.provenance"


@dataclass(frozen=True)
class WeightsFingerprint:
    """A sample-based fingerprint of a model's weights (see the module docstring).

    Attributes:
        files: hex SHA-256 of the weight files (None for a model not loaded from files).
        params: hex SHA-256 of sampled parameter values (None when they cannot be read, as
            on the meta device).
    """

    files: str | None = None
    params: str | None = None

    def same_as(self, other: WeightsFingerprint) -> bool | None:
        """True/False by the first kind both have (files, then params); None when neither."""
        if self.files is not None and other.files is not None:
            return self.files == other.files
        if self.params is not None and other.params is not None:
            return self.params == other.params
        return None

    def short(self) -> str:
        """Up to 12 hex digits of the kind that is set, e.g. "files 3f2a9c01d4e5"."""
        if self.files is not None:
            return f"files {self.files[:12]}"
        return f"params {self.params[:12]}" if self.params is not None else "unknown"

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> WeightsFingerprint | None:
        """The inverse of `dataclasses.asdict`; None stays None (records of older versions)."""
        if not data:
            return None
        return cls(files=data.get("files"), params=data.get("params"))


def weights_fingerprint(source: nn.Module | str | Path) -> WeightsFingerprint:
    """The fingerprint of a model, a checkpoint folder or a GGUF file.

    A model loaded by `neurosteer.load_model` carries its files' fingerprint; any model gets
    the params kind from its values. A path gets the files kind only.

    Raises:
        InputError: a path with no weight files (or a GGUF file that does not parse).
    """
    if isinstance(source, nn.Module):
        files = getattr(source, _FILES_ATTRIBUTE, None)
        return WeightsFingerprint(
            files=files if isinstance(files, str) else None, params=_params_digest(source)
        )
    return WeightsFingerprint(files=files_digest(weight_files(Path(source))))


def same_weights(recorded: WeightsFingerprint, model: nn.Module) -> bool | None:
    """`recorded.same_as(weights_fingerprint(model))`, reading the model's values only when
    the files kind cannot decide (steering calls this on every `steer`)."""
    files = getattr(model, _FILES_ATTRIBUTE, None)
    if recorded.files is not None and isinstance(files, str):
        return recorded.files == files
    return recorded.same_as(weights_fingerprint(model))


def remember_files(model: nn.Module, files: list[Path]) -> None:
    """Record on `model` the fingerprint of the files it was just loaded from, and what a
    baked checkpoint among them says it carries (`baked_on`)."""
    if files:
        setattr(model, _FILES_ATTRIBUTE, files_digest(files))
        record = baked_record(files[0] if files[0].suffix == ".gguf" else files[0].parent)
        if record is not None:
            setattr(model, _BAKED_ATTRIBUTE, record)


def baked_on(model: nn.Module) -> dict[str, Any] | None:
    """The provenance record of the checkpoint `model` was loaded from, if it was baked."""
    record = getattr(model, _BAKED_ATTRIBUTE, None)
    return record if isinstance(record, dict) else None


def mark_baked(model: nn.Module, record: dict[str, Any] | None) -> None:
    """Record on `model` that a circuit is baked into its weights in memory (None: none is)."""
    setattr(model, _BAKED_ATTRIBUTE, record)


def weight_files(path: Path) -> list[Path]:
    """The weight files of a checkpoint folder (safetensors, else pytorch), or a GGUF file
    itself, sorted by name.

    Raises:
        InputError: nothing that holds weights.
    """
    from neurosteer.errors import InputError

    if path.is_file():
        return [path]
    found = sorted(p for p in path.glob("*") if p.suffix in _WEIGHT_SUFFIXES and p.is_file())
    safetensors = [p for p in found if p.suffix == ".safetensors"]
    chosen = safetensors or found
    if not chosen:
        raise InputError(f"'{path}' holds no weight files (.safetensors, .bin or .gguf)")
    return chosen


def files_digest(files: list[Path]) -> str:
    """Hex SHA-256 of each file's name, size, header and sampled tensor bytes."""
    digest = hashlib.sha256()
    for file in files:
        size = file.stat().st_size
        digest.update(f"{file.name}\0{size}\0".encode())
        with file.open("rb") as handle:
            header_end, spans = _layout(file, handle, size)
            handle.seek(0)
            digest.update(handle.read(header_end))
            for start, end in spans:
                for offset in _spread(start, end):
                    handle.seek(offset)
                    digest.update(handle.read(_RANGE_BYTES))
    return digest.hexdigest()


def _layout(file: Path, handle: BinaryIO, size: int) -> tuple[int, list[tuple[int, int]]]:
    """(end of the header, [(start, end) byte span of each tensor's data]) of a weight file;
    a file without a readable index is one span after its first 64 KiB."""
    if file.suffix == ".gguf":
        header = gguf_header(file)
        starts = sorted(header.data_offset + t.offset for t in header.tensors)
        return header.index_end, list(zip(starts, [*starts[1:], size], strict=True))
    if file.suffix == ".safetensors" and size >= 8:
        (length,) = struct.unpack("<Q", handle.read(8))
        if 8 + length <= size:
            index = json.loads(handle.read(length))
            spans = [
                (8 + length + int(v["data_offsets"][0]), 8 + length + int(v["data_offsets"][1]))
                for k, v in sorted(index.items())
                if k != "__metadata__"
            ]
            return 8 + length, spans
    head = min(size, 1 << 16)
    return head, [(head, size)] * (_WHOLE_FILE_RANGES // _RANGES_PER_TENSOR)


def _spread(start: int, end: int) -> list[int]:
    """`_RANGES_PER_TENSOR` offsets evenly spread over [start, end) (fewer for tiny spans)."""
    last = max(start, end - _RANGE_BYTES)
    n = _RANGES_PER_TENSOR
    return sorted({start + (last - start) * i // max(n - 1, 1) for i in range(n)})


def sample_indices(n: int, k: int) -> torch.Tensor:
    """[min(n, k)] int64: `k` evenly spaced indices into `n` values, the first 0 and the last
    n - 1, computed in integers (a float32 `linspace` rounds past n - 1 once n > 2**24, as an
    embedding of 152k x 896 values is)."""
    if n <= k:
        return torch.arange(n)
    return torch.arange(k, dtype=torch.int64) * (n - 1) // (k - 1)


@torch.no_grad()
def _params_digest(model: nn.Module) -> str | None:
    """Hex SHA-256 of each parameter's name, shape and sampled values (bfloat16 bits); None
    when a parameter has no values (the meta device)."""
    named = sorted(model.named_parameters(), key=lambda item: item[0])
    if any(param.is_meta for _, param in named):
        return None
    digest = hashlib.sha256()
    for (name, param), sample in zip(named, _sampled_bits([p for _, p in named]), strict=True):
        digest.update(f"{name}\0{tuple(param.shape)}\0".encode())
        digest.update(sample)
    return digest.hexdigest()


def _sampled_bits(params: list[nn.Parameter]) -> list[bytes]:
    """Each parameter's `sample_indices` values as bfloat16 bits (int16 bytes), gathered with
    one conversion and one copy to the CPU per (device, dtype) instead of per parameter."""
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, param in enumerate(params):
        groups.setdefault((param.device, param.dtype), []).append(i)
    out: list[bytes] = [b""] * len(params)
    for (device, _), members in groups.items():
        samples = [
            params[i].detach().reshape(-1)[_device_indices(params[i].numel(), device)]
            for i in members
        ]
        raw = torch.cat(samples).to(torch.bfloat16).view(torch.int16).cpu().numpy().tobytes()
        start = 0
        for i, sample in zip(members, samples, strict=True):
            out[i] = raw[start : start + 2 * sample.numel()]
            start += 2 * sample.numel()
    return out


@lru_cache(maxsize=512)
def _device_indices(n: int, device: torch.device) -> torch.Tensor:
    """`sample_indices(n, _VALUES_PER_PARAM)` on `device` (parameters of one size share it)."""
    return sample_indices(n, _VALUES_PER_PARAM).to(device)


def baked_record(path: Path) -> dict[str, Any] | None:
    """What a baked checkpoint (a folder with `neurosteer.json`, or a GGUF file with
    `neurosteer.provenance`) records about its circuit; None for any other checkpoint."""
    text: Any = None
    if path.is_dir() and (path / BAKED_FILE).is_file():
        text = (path / BAKED_FILE).read_text(encoding="utf-8", errors="replace")
    elif path.suffix.lower() == ".gguf" and path.is_file():
        text = gguf_header(path).value(GGUF_PROVENANCE_KEY)
    if not isinstance(text, str):
        return None
    try:
        data = json.loads(text)
    except ValueError:  # a damaged record says nothing reliable; treat it as absent
        return None
    return data if isinstance(data, dict) else None


def gguf_header(path: Path) -> GGUFHeader:
    """`read_header`, kept for the same unchanged file (a 150k-token vocabulary takes about a
    second to skip, and a load reads the header for the fingerprint, the baked record and the
    circuit's shape check)."""
    stat = path.stat()
    return _cached_header(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=4)
def _cached_header(path: str, _size: int, _mtime_ns: int) -> GGUFHeader:
    return read_header(path)
