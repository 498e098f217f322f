"""Read a GGUF file's header, metadata and tensor index, and name the file.

A GGUF file is, in order: a fixed header (magic, version, counts), the metadata key/value
entries, the tensor index (name, ggml shape, ggml type and data offset of every tensor), padding
to the file's alignment, then the tensor data. This reader parses everything before the data
and remembers the byte range of each metadata entry, so that a baked copy can carry every entry
over byte for byte. Only the values a caller asks for are decoded (a 150k-token vocabulary is
skipped over, not built), which keeps reading a header well under a second.

It needs no third-party package; the `gguf` package is imported only where quantization types
are needed (`require_gguf`).
"""

from __future__ import annotations

import hashlib
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from neurosteer.errors import InputError, ModelLoadError

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
INSTALL_HINT = "GGUF support needs the gguf package: pip install 'neurosteer[gguf]'"

# GGUF metadata value types (gguf-py's GGUFValueType) and their fixed sizes / struct codes.
STRING, ARRAY = 8, 9
_SCALARS: dict[int, str] = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}


def require_gguf() -> ModuleType:
    """The `gguf` package, or a `ModelLoadError` with the one-line install hint."""
    try:
        import gguf
    except ImportError:
        raise ModelLoadError(INSTALL_HINT) from None
    return gguf


@dataclass(frozen=True)
class FileIdentity:
    """Which single-file checkpoint a circuit was found on.

    Attributes:
        name: the file name (no folder: the same file moved elsewhere keeps its identity).
        size: the file size in bytes.
        header_sha256: SHA-256 of everything before the tensor data (header, metadata and
            tensor index): it changes with any metadata, shape, type or layout change, and is
            cheap to compute for a file of any size.
    """

    name: str
    size: int
    header_sha256: str


@dataclass(frozen=True)
class MetadataEntry:
    """One metadata key/value entry; `start`/`end` are its byte range in the file."""

    key: str
    value_type: int
    value: Any  # scalars and strings; None for arrays (see `length`)
    length: int  # number of elements of an array, 1 otherwise
    start: int
    end: int


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of the index.

    Attributes:
        name: e.g. "blk.3.ffn_down.weight".
        shape: ggml order, ne0 first: ne0 is the contiguous (fastest) axis, so a weight
            [d_model, d_mlp] in PyTorch terms has shape (d_mlp, d_model) here.
        ggml_type: the ggml type id (0 F32, 1 F16, 8 Q8_0, 14 Q6_K, ...).
        offset: where its data starts, in bytes from the start of the data section.
    """

    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int

    @property
    def type_name(self) -> str:
        return type_name(self.ggml_type)

    def nbytes(self) -> int:
        """Bytes of data (needs the gguf package for the block sizes of quantized types)."""
        block, type_size = block_size(self.ggml_type)
        count = 1
        for n in self.shape:
            count *= n
        if self.shape[0] % block:
            raise InputError(
                f"tensor {self.name} has rows of {self.shape[0]} values, not a multiple of the "
                f"{block}-value blocks of {self.type_name}; the file is corrupt"
            )
        return count // block * type_size


@dataclass(frozen=True)
class GGUFHeader:
    """Everything in a GGUF file before its tensor data.

    Attributes:
        path: the file.
        version: the GGUF format version (2 or 3).
        metadata: the entries in file order, by key.
        tensors: the tensor index in file order.
        metadata_start, metadata_end: byte range of the metadata entries.
        index_end: where the tensor index ends (the data follows after padding).
        data_offset: where the tensor data starts.
        alignment: the data alignment (`general.alignment`, 32 by default).
        file_size: the file size in bytes.
    """

    path: Path
    version: int
    metadata: dict[str, MetadataEntry]
    tensors: tuple[TensorInfo, ...]
    metadata_start: int
    metadata_end: int
    index_end: int
    data_offset: int
    alignment: int
    file_size: int

    @property
    def architecture(self) -> str:
        return str(self.value("general.architecture", ""))

    def value(self, key: str, default: Any = None) -> Any:
        """A scalar or string metadata value, or `default` when the key is absent."""
        entry = self.metadata.get(key)
        return default if entry is None or entry.value is None else entry.value

    def tensor(self, name: str) -> TensorInfo | None:
        return next((t for t in self.tensors if t.name == name), None)

    def identity(self) -> FileIdentity:
        """The file's name, size and the SHA-256 of its header and tensor index."""
        with self.path.open("rb") as f:
            digest = hashlib.sha256(f.read(self.index_end)).hexdigest()
        return FileIdentity(name=self.path.name, size=self.file_size, header_sha256=digest)


def read_header(path: str | Path) -> GGUFHeader:
    """Parse a GGUF file's header, metadata and tensor index (not the tensor data).

    Raises:
        InputError: the file is missing, not a GGUF file, of an unknown version, big-endian,
            or truncated.
    """
    file = Path(path)
    if not file.is_file():
        raise InputError(f"GGUF file '{file}' does not exist")
    size = file.stat().st_size
    if size < 24:
        raise InputError(f"'{file}' is not a GGUF file (only {size} bytes)")
    with file.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        try:
            return _parse(file, buf, size)
        except struct.error:
            raise InputError(
                f"'{file}' is truncated or corrupt (its header runs past its end)"
            ) from None


def _parse(file: Path, buf: mmap.mmap, size: int) -> GGUFHeader:
    if buf[:4] != MAGIC:
        raise InputError(f"'{file}' is not a GGUF file (it does not start with 'GGUF')")
    (version,) = struct.unpack_from("<I", buf, 4)
    if version not in (2, 3):
        swapped = struct.unpack_from(">I", buf, 4)[0]
        if swapped in (2, 3):
            raise InputError(f"'{file}' is a big-endian GGUF file; only little-endian is supported")
        raise InputError(f"'{file}' has GGUF version {version}; versions 2 and 3 are supported")
    n_tensors, n_kv = struct.unpack_from("<QQ", buf, 8)
    pos = 24
    metadata: dict[str, MetadataEntry] = {}
    for _ in range(n_kv):
        start = pos
        key, pos = _read_string(buf, pos)
        (value_type,) = struct.unpack_from("<I", buf, pos)
        value, length, pos = _read_value(buf, pos + 4, value_type)
        metadata[key] = MetadataEntry(key, value_type, value, length, start, pos)
    metadata_end = pos
    tensors = []
    for _ in range(n_tensors):
        name, pos = _read_string(buf, pos)
        (n_dims,) = struct.unpack_from("<I", buf, pos)
        shape = struct.unpack_from(f"<{n_dims}Q", buf, pos + 4)
        pos += 4 + 8 * n_dims
        ggml_type, offset = struct.unpack_from("<IQ", buf, pos)
        pos += 12
        tensors.append(TensorInfo(name, tuple(int(n) for n in shape), ggml_type, offset))
    alignment_entry = metadata.get("general.alignment")
    alignment = int(alignment_entry.value) if alignment_entry is not None else DEFAULT_ALIGNMENT
    if alignment < 1 or alignment & (alignment - 1):
        raise InputError(f"'{file}' has general.alignment {alignment}, not a power of two")
    data_offset = align(pos, alignment)
    if data_offset > size:
        raise InputError(f"'{file}' is truncated (no tensor data after its index)")
    return GGUFHeader(
        path=file,
        version=version,
        metadata=metadata,
        tensors=tuple(tensors),
        metadata_start=24,
        metadata_end=metadata_end,
        index_end=pos,
        data_offset=data_offset,
        alignment=alignment,
        file_size=size,
    )


def _read_string(buf: mmap.mmap, pos: int) -> tuple[str, int]:
    (n,) = struct.unpack_from("<Q", buf, pos)
    end = pos + 8 + n
    if end > len(buf):
        raise struct.error("string past the end")
    return buf[pos + 8 : end].decode("utf-8", errors="replace"), end


def _skip_string(buf: mmap.mmap, pos: int) -> int:
    (n,) = struct.unpack_from("<Q", buf, pos)
    return pos + 8 + n


def _read_value(buf: mmap.mmap, pos: int, value_type: int) -> tuple[Any, int, int]:
    """(value, length, position after it); arrays are skipped over and give None."""
    if value_type in _SCALARS:
        code = _SCALARS[value_type]
        return struct.unpack_from(code, buf, pos)[0], 1, pos + struct.calcsize(code)
    if value_type == STRING:
        text, end = _read_string(buf, pos)
        return text, 1, end
    if value_type == ARRAY:
        item_type, count = struct.unpack_from("<IQ", buf, pos)
        pos += 12
        if item_type in _SCALARS:
            pos += count * struct.calcsize(_SCALARS[item_type])
        elif item_type == STRING:
            for _ in range(count):
                pos = _skip_string(buf, pos)
        else:  # arrays of arrays
            for _ in range(count):
                _, _, pos = _read_value(buf, pos, item_type)
        if pos > len(buf):
            raise struct.error("array past the end")
        return None, int(count), pos
    raise InputError(f"unknown GGUF metadata value type {value_type}; the file is corrupt")


def align(offset: int, alignment: int) -> int:
    """`offset` rounded up to a multiple of `alignment`."""
    return offset + (-offset % alignment)


def type_name(ggml_type: int) -> str:
    """ "Q6_K" for 14, ...; "type N" when the gguf package does not know the id."""
    gguf = require_gguf()
    try:
        return str(gguf.GGMLQuantizationType(ggml_type).name)
    except ValueError:
        return f"type {ggml_type}"


def block_size(ggml_type: int) -> tuple[int, int]:
    """(values per block, bytes per block) of a ggml type."""
    gguf = require_gguf()
    try:
        block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(ggml_type)]
    except (KeyError, ValueError):
        raise InputError(
            f"unknown ggml tensor type {ggml_type}; a newer gguf package may know it "
            "(pip install -U gguf)"
        ) from None
    return int(block), int(type_size)
