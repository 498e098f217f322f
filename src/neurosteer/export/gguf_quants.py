"""Scale neurons inside one stored (possibly quantized) down-projection tensor, and say how far
the stored edit is from the exact one.

In a GGUF file the MLP output projection `blk.N.ffn_down.weight` has ggml shape
(d_mlp, d_model): ne0 = d_mlp is contiguous, so each of the d_model rows holds one value per
neuron, and neuron j is value j of every row. Quantization blocks (32 or 256 values) run along
a row, so scaling neuron j touches one block per row and leaves every other block as it is.

The exact edit ("target") is the decoded original values with the neurons' values multiplied by
m in float32. How each storage type is handled (the rule `scale_neurons` applies):

* F32, F16, BF16: the neuron's values are scaled and rounded to the type; every other value
  keeps its bytes. The type keeps its own precision, as every other weight of the file does.
* Block types whose codes are known here (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K): in
  each block holding a circuit neuron, the neuron's code is set to the point of the block's
  own grid (its scales and mins unchanged) nearest the target; every other value of the block
  keeps its bits. When every neuron lands on its target (as m = 0 does on the grids that hold
  zero: Q8_0, Q4_0, Q5_0, Q6_K) the tensor keeps its type: the edit is exact. Otherwise,
  by default, the whole tensor is stored in the fallback type (see below), which holds the
  edit exactly; with `keep_type` the type is kept and the edit is approximate: each neuron is
  off by up to half its block's step. Where the target lies outside the block's range the
  code edit is off by more; for the types gguf-py can re-quantize (Q4_0 to Q8_0) the block is
  then re-quantized if that comes closer, which moves the block's other values too. The
  errors are reported either way (`EditError`).
* Every other type (Q2_K, Q3_K, i-quants, ...): the tensor is decoded, scaled and stored in the
  fallback type, with or without `keep_type`.

"Exact" means: each value within 2^-11 of its own size (the rounding of F16) plus 2^-20 of its
block's largest value (float32 arithmetic). The fallback is F16 by default: it holds every value
that exactly, at 2 bytes a value. Q8_0 (about 1.06 bytes a value) is the smaller choice; it
adds up to half a Q8_0 step (1/254 of each 32-value block's largest value), which is reported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from neurosteer.errors import InputError
from neurosteer.model.gguf.reader import block_size, require_gguf, type_name

Fallback = Literal["F16", "Q8_0"]
FALLBACKS: tuple[Fallback, ...] = ("F16", "Q8_0")

F32, F16, BF16, Q8_0 = 0, 1, 30, 8
ELEMENTWISE = (F32, F16, BF16)
#: Block types that gguf-py can quantize (a whole block may be re-quantized in `keep_type`).
REQUANTIZABLE = (2, 3, 6, 7, 8)  # Q4_0, Q4_1, Q5_0, Q5_1, Q8_0
#: Headroom for the rounding of an f16 block scale, relative to the block's largest value.
SCALE_ROUNDING = 2.0**-10
#: A value is exact within this much of its own size (F16's rounding) ...
EXACT_RELATIVE = 2.0**-11
#: ... plus this much of its block's largest value (float32 arithmetic in the decoders) ...
EXACT_BLOCK = 2.0**-20
#: ... plus F16's smallest step (its subnormals: a weight under 6e-5 stored in F16 is rounded to
#: a multiple of 2**-24, which is not within EXACT_RELATIVE of its size).
EXACT_ABSOLUTE = 2.0**-24


@dataclass(frozen=True)
class EditError:
    """How far a stored edit is from the exact one, in weight units (largest absolute values).

    Attributes:
        neurons: |stored − target| over the circuit neurons' values.
        blocks: |stored − original| over the other values of the blocks holding a neuron (in
            the file's own block size; 0 when their bits are kept).
        rest: |stored − original| over every other value of the tensor (0 when kept byte for
            byte; F16 or Q8_0 rounding after a fallback).
        edit: |target − original| over the neurons' values: the size of the exact edit.
        exact: every value within the exact tolerance (module docstring) of its target.
    """

    neurons: float
    blocks: float
    rest: float
    edit: float
    exact: bool

    @property
    def largest(self) -> float:
        """The largest error over the whole tensor."""
        return max(self.neurons, self.blocks, self.rest)

    @property
    def relative(self) -> float:
        """The neurons' error as a fraction of the edit (0 when the edit is empty)."""
        return self.neurons / self.edit if self.edit > 0 else 0.0


@dataclass(frozen=True)
class ScaledTensor:
    """A down-projection tensor with its circuit neurons scaled.

    Attributes:
        data: the new tensor bytes, uint8 [n_bytes].
        ggml_type: the type they are stored in (the original one, or the fallback).
        requantized_blocks: blocks rewritten in the original type (0 otherwise).
        error: how far the stored values are from the exact edit.
    """

    data: np.ndarray
    ggml_type: int
    requantized_blocks: int
    error: EditError

    @property
    def max_error(self) -> float:
        """The largest |stored − target| over the tensor's values, in weight units."""
        return self.error.largest


def check_fallback(fallback: str) -> None:
    """Raise `InputError` unless `fallback` is one of `FALLBACKS`."""
    if fallback not in FALLBACKS:
        raise InputError(f"unknown fallback type {fallback!r}; use one of: {', '.join(FALLBACKS)}")


def scale_neurons(
    raw: np.ndarray,
    ggml_type: int,
    shape: tuple[int, ...],
    neurons: np.ndarray,
    multiplier: float,
    *,
    fallback: Fallback = "F16",
    keep_type: bool = False,
) -> ScaledTensor:
    """Scale the values of `neurons` (indices along ne0) of one stored tensor by `multiplier`.

    Args:
        raw: the tensor's bytes as stored, uint8 [n_bytes].
        ggml_type: its ggml type id.
        shape: its ggml shape, (d_mlp, d_model) for a down projection.
        neurons: int64 [n] distinct indices in [0, d_mlp).
        multiplier: the scale (finite).
        fallback: "F16" or "Q8_0", for edits the type cannot hold (module docstring).
        keep_type: keep a block type whose codes are known even where the edit is approximate.

    Raises:
        InputError: an unknown fallback, or a multiplier that overflows the stored type.
    """
    check_fallback(fallback)
    n_ff = shape[0]
    rows = int(np.prod(shape[1:], dtype=np.int64))
    table = np.ascontiguousarray(raw).reshape(rows, -1)  # [d_model, bytes per row]
    neurons = np.asarray(neurons, dtype=np.int64)
    if ggml_type in ELEMENTWISE:
        return _scale_elementwise(table, ggml_type, neurons, multiplier)
    if ggml_type in _CODES:
        kept = _edit_blocks(table, ggml_type, neurons, multiplier, keep_type)
        if kept is not None:
            return kept
    return _fallback(table, ggml_type, n_ff, neurons, multiplier, fallback)


def _fallback(
    table: np.ndarray,
    ggml_type: int,
    n_ff: int,
    neurons: np.ndarray,
    multiplier: float,
    fallback: Fallback,
) -> ScaledTensor:
    """The whole tensor decoded, scaled and stored in the fallback type."""
    gguf = require_gguf()
    try:
        values = gguf.quants.dequantize(table, gguf.GGMLQuantizationType(ggml_type))
    except NotImplementedError:
        raise InputError(
            f"the gguf package cannot decode {type_name(ggml_type)} tensors; upgrade it "
            "(pip install -U gguf)"
        ) from None
    original = values.reshape(table.shape[0], n_ff)
    target = original.copy()
    target[:, neurons] *= np.float32(multiplier)
    target_type = Q8_0 if fallback == "Q8_0" and n_ff % block_size(Q8_0)[0] == 0 else F16
    qtype = gguf.GGMLQuantizationType(target_type)
    _check_finite(target, target_type)
    stored = np.asarray(gguf.quants.quantize(target, qtype)).view(np.uint8)
    decoded = gguf.quants.dequantize(stored, qtype).reshape(target.shape)
    _check_finite(decoded, target_type)
    error = _whole_tensor_error(original, target, decoded, neurons, block_size(ggml_type)[0])
    return ScaledTensor(stored.reshape(-1), target_type, 0, error)


def _whole_tensor_error(
    original: np.ndarray, target: np.ndarray, stored: np.ndarray, neurons: np.ndarray, block: int
) -> EditError:
    """The `EditError` of values [rows, n_ff] stored anew; blocks of `block` values."""
    n_ff = original.shape[1]
    is_neuron = np.zeros(n_ff, dtype=bool)
    is_neuron[neurons] = True
    in_block = np.isin(np.arange(n_ff) // block, np.unique(neurons // block)) & ~is_neuron
    rest = ~is_neuron & ~in_block
    diff = np.abs(stored - target)
    return EditError(
        neurons=_largest(diff[:, is_neuron]),
        blocks=_largest(diff[:, in_block]),
        rest=_largest(diff[:, rest]),
        edit=_largest(np.abs(target - original)[:, is_neuron]),
        exact=bool(np.all(diff <= _exact_tolerance(target, block))),
    )


def _exact_tolerance(target: np.ndarray, block: int) -> np.ndarray:
    """Per value [rows, n_ff] (n_ff a multiple of `block`): what counts as exact."""
    blocks = np.abs(target).reshape(target.shape[0], -1, block)
    top = np.repeat(blocks.max(axis=-1), block, axis=-1)
    relative = np.float32(EXACT_RELATIVE) * np.abs(target)
    return relative + np.float32(EXACT_BLOCK) * top + np.float32(EXACT_ABSOLUTE)


def _scale_elementwise(
    table: np.ndarray, ggml_type: int, neurons: np.ndarray, multiplier: float
) -> ScaledTensor:
    gguf = require_gguf()
    qtype = gguf.GGMLQuantizationType(ggml_type)
    columns = table.reshape(table.shape[0], -1, block_size(ggml_type)[1])[:, neurons]
    original = gguf.quants.dequantize(columns.reshape(table.shape[0], -1), qtype)
    target = original * np.float32(multiplier)
    _check_finite(target, ggml_type)
    stored = np.asarray(gguf.quants.quantize(target, qtype)).view(np.uint8)
    decoded = gguf.quants.dequantize(stored, qtype)
    _check_finite(decoded, ggml_type)
    out = table.copy()
    view = out.reshape(table.shape[0], -1, block_size(ggml_type)[1])
    view[:, neurons] = stored.reshape(table.shape[0], len(neurons), -1)
    error = EditError(
        neurons=_largest(np.abs(decoded.reshape(target.shape) - target)),
        blocks=0.0,
        rest=0.0,
        edit=_largest(np.abs(target - original)),
        exact=True,  # held to the type's own precision, like every other weight of the file
    )
    return ScaledTensor(out.reshape(-1), ggml_type, 0, error)


# ---------------------------------------------------------------- block types: where codes live

#: (byte, shift, bits) pieces of one value's code, low bits first.
Pieces = list[tuple[int, int, int]]


@dataclass(frozen=True)
class _Codes:
    """Where a block type keeps the code of value k of a block, and the codes' range.

    Each value decodes as a * code + b, with a and b set by the block's scales and mins alone,
    so a code can be changed without moving any other value of the block.
    """

    pieces: Callable[[int], Pieces]
    low: int
    high: int


def _nibble(base: int, k: int) -> tuple[int, int, int]:
    """Value k of a 32-value block of packed nibbles: k low, k + 16 high."""
    return (base + k % 16, 4 * (k // 16), 4)


def _k_nibble(base: int, k: int) -> tuple[int, int, int]:
    """Value k of a Q4_K/Q5_K super-block: per 64 values, 32 bytes of low then high nibbles."""
    return (base + 32 * (k // 64) + k % 32, 4 * (k % 64 // 32), 4)


def _q6_k(k: int) -> Pieces:
    half, j = divmod(k, 128)
    quarter, lane = divmod(j, 32)
    low = (64 * half + 32 * (quarter % 2) + lane, 4 * (quarter // 2), 4)
    return [low, (128 + 32 * half + lane, 2 * quarter, 2)]


_CODES: dict[int, _Codes] = {
    2: _Codes(lambda k: [_nibble(2, k)], 0, 15),  # Q4_0
    3: _Codes(lambda k: [_nibble(4, k)], 0, 15),  # Q4_1
    6: _Codes(lambda k: [_nibble(6, k), (2 + k // 8, k % 8, 1)], 0, 31),  # Q5_0
    7: _Codes(lambda k: [_nibble(8, k), (4 + k // 8, k % 8, 1)], 0, 31),  # Q5_1
    8: _Codes(lambda k: [(2 + k, 0, 8)], -128, 127),  # Q8_0: signed bytes
    12: _Codes(lambda k: [_k_nibble(16, k)], 0, 15),  # Q4_K
    13: _Codes(  # Q5_K
        lambda k: [_k_nibble(48, k), (16 + k % 32, 2 * (k // 64) + k % 64 // 32, 1)], 0, 31
    ),
    14: _Codes(_q6_k, 0, 63),  # Q6_K
}


def _write_codes(
    blocks: np.ndarray, where: np.ndarray, index: np.ndarray, codes: np.ndarray, spec: _Codes
) -> np.ndarray:
    """A copy of `blocks` [rows, t, bytes] with value `index[i]` of block `where[i]` set to
    `codes[:, i]` (int64 [rows, n]); all other bits unchanged."""
    out = blocks.copy()
    for i, (b, k) in enumerate(zip(where.tolist(), index.tolist(), strict=True)):
        code = codes[:, i]
        used = 0
        for at, shift, bits in spec.pieces(k):
            mask = (1 << bits) - 1
            kept = out[:, b, at] & np.uint8(0xFF ^ (mask << shift))
            out[:, b, at] = kept | (((code >> used) & mask) << shift).astype(np.uint8)
            used += bits
    return out


def _edit_blocks(
    table: np.ndarray, ggml_type: int, neurons: np.ndarray, multiplier: float, keep_type: bool
) -> ScaledTensor | None:
    """Rewrite only the blocks holding a neuron; None when the edit is not exact and not
    `keep_type`."""
    gguf = require_gguf()
    qtype = gguf.GGMLQuantizationType(ggml_type)
    block, type_size = block_size(ggml_type)
    spec = _CODES[ggml_type]
    rows = table.shape[0]
    blocks = table.reshape(rows, -1, type_size)  # [d_model, blocks per row, bytes per block]
    touched, where = np.unique(neurons // block, return_inverse=True)
    index = neurons % block
    original_blocks = blocks[:, touched]  # [rows, t, type_size]

    def decode(candidate: np.ndarray) -> np.ndarray:
        values = gguf.quants.dequantize(candidate.reshape(-1, type_size), qtype)
        return values.reshape(rows, len(touched), block)

    original = decode(original_blocks)
    target = original.copy()
    target[:, where, index] *= np.float32(multiplier)
    _check_finite(target, ggml_type)
    # each value is a * code + b: read a and b off two decodes, then take the nearest code
    ones = np.ones((rows, len(neurons)), dtype=np.int64)
    at_zero = decode(_write_codes(original_blocks, where, index, 0 * ones, spec))[:, where, index]
    at_one = decode(_write_codes(original_blocks, where, index, ones, spec))[:, where, index]
    step = at_one - at_zero
    with np.errstate(divide="ignore", invalid="ignore"):
        nearest = np.where(step != 0, np.round((target[:, where, index] - at_zero) / step), 0)
    codes = nearest.clip(spec.low, spec.high).astype(np.int64)
    edited = _write_codes(original_blocks, where, index, codes, spec)
    stored = decode(edited)
    tolerance = _exact_tolerance(target.reshape(rows, -1), block).reshape(target.shape)
    if not bool(np.all(np.abs(stored - target) <= tolerance)):
        if not keep_type:
            return None
        if ggml_type in REQUANTIZABLE:
            edited, stored = _closer_requantized(edited, stored, target, qtype)
    _check_finite(stored, ggml_type)
    out = blocks.copy()
    out[:, touched] = edited
    is_neuron = np.zeros((len(touched), block), dtype=bool)
    is_neuron[where, index] = True
    error = EditError(
        neurons=_largest(np.abs(stored - target)[:, is_neuron]),
        blocks=_largest(np.abs(stored - original)[:, ~is_neuron]),
        rest=0.0,
        edit=_largest(np.abs(target - original)[:, is_neuron]),
        exact=bool(np.all(np.abs(stored - target) <= tolerance)),
    )
    return ScaledTensor(out.reshape(-1), ggml_type, rows * len(touched), error)


def _closer_requantized(
    edited: np.ndarray, stored: np.ndarray, target: np.ndarray, qtype: object
) -> tuple[np.ndarray, np.ndarray]:
    """Per block [rows, t], the code edit, or the block re-quantized where the edit is off by
    more than half the block's step (its target outside the grid's range) and re-quantizing
    comes closer at the block's worst value (it moves the block's other values too)."""
    gguf = require_gguf()
    shape = target.shape
    fresh = np.asarray(gguf.quants.quantize(target.reshape(-1, shape[-1]), qtype))
    fresh = fresh.view(np.uint8).reshape(edited.shape)
    fresh_values = gguf.quants.dequantize(fresh.reshape(-1, edited.shape[-1]), qtype)
    fresh_values = fresh_values.reshape(shape)
    step = np.abs(edited[..., :2].copy().view(np.float16).astype(np.float32))[..., 0]
    edit_error = np.abs(stored - target).max(axis=-1)
    worse = edit_error > 0.5 * step + SCALE_ROUNDING * np.abs(target).max(axis=-1)
    worse &= edit_error > np.abs(fresh_values - target).max(axis=-1)
    worse &= np.isfinite(fresh_values).all(axis=-1)
    return (
        np.where(worse[..., None], fresh, edited),
        np.where(worse[..., None], fresh_values, stored),
    )


def _check_finite(values: np.ndarray, ggml_type: int) -> None:
    limit = float(np.finfo(np.float16).max) if ggml_type == F16 else float("inf")
    if not np.isfinite(values).all() or (values.size and float(np.abs(values).max()) > limit):
        raise InputError(
            f"the multiplier makes weights overflow {type_name(ggml_type)}; use a smaller one"
        )


def _largest(values: np.ndarray) -> float:
    return float(values.max()) if values.size else 0.0
