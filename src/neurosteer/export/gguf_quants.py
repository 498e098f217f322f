"""Scale neurons inside one stored (possibly quantized) down-projection tensor.

In a GGUF file the MLP output projection `blk.N.ffn_down.weight` has ggml shape
(d_mlp, d_model): ne0 = d_mlp is contiguous, so each of the d_model rows holds one value per
neuron, and neuron j is value j of every row. Quantization blocks (32 or 256 values) run along
a row, so scaling neuron j touches one block per row and leaves every other block as it is.

How each storage type is handled (the rule `scale_neurons` applies):

* F32, F16, BF16: the neuron's values are scaled and rounded to the type; every other value
  keeps its bytes.
* Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 (the block types gguf-py can quantize): only the blocks that
  hold a circuit neuron are rewritten; all other blocks keep their bytes. In such a block the
  neuron's code is first set anew on the block's own grid (scale d, and min for Q4_1/Q5_1,
  unchanged), so every other value of the block stays exactly as it was and the neuron's value
  is off by at most d/2 (m = 0 is exact on Q8_0, Q4_0 and Q5_0, whose grids hold zero). Where
  the new value lies outside the grid's range (e.g. m = 2 on the block's largest value), the
  block is re-quantized instead, which re-derives its scale and moves its other values too.
  Either way a block is accepted when no value in it is further from its target (the original
  value, or m times it for a neuron) than half the original block's quantization step |d| (the
  rounding error every value of that block already carries), plus 2^-10 of the block's largest
  value for the rounding of a new f16 scale. If any block fails, the whole tensor is stored in
  the fallback type.
* Every other type (K-quants such as Q4_K and Q6_K, i-quants, ...): gguf-py cannot quantize it,
  so the tensor is decoded, scaled and stored in the fallback type.

The fallback is F16 by default: it holds every decoded value to within 2^-11 of its size, far
below any quantization step, at 2 bytes a value. Q8_0 (about 1.06 bytes a value) is the smaller
choice; it adds up to half a Q8_0 step (1/254 of each 32-value block's largest value).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from neurosteer.errors import InputError
from neurosteer.model.gguf.reader import block_size, require_gguf, type_name

Fallback = Literal["F16", "Q8_0"]
FALLBACKS: tuple[Fallback, ...] = ("F16", "Q8_0")

F32, F16, BF16, Q8_0 = 0, 1, 30, 8
ELEMENTWISE = (F32, F16, BF16)
#: Block types whose blocks start with an f16 scale d and that gguf-py can quantize.
REQUANTIZABLE = (2, 3, 6, 7, 8)  # Q4_0, Q4_1, Q5_0, Q5_1, Q8_0
#: Headroom for the rounding of a re-derived f16 block scale, relative to the block's largest value.
SCALE_ROUNDING = 2.0**-10


@dataclass(frozen=True)
class ScaledTensor:
    """A down-projection tensor with its circuit neurons scaled.

    Attributes:
        data: the new tensor bytes, uint8 [n_bytes].
        ggml_type: the type they are stored in (the original one, or the fallback).
        requantized_blocks: blocks decoded and re-quantized in the original type (0 otherwise).
        max_error: the largest |stored − target| over the tensor's values, in weight units
            (target: the decoded original values with the neurons scaled in float32).
    """

    data: np.ndarray
    ggml_type: int
    requantized_blocks: int
    max_error: float


def scale_neurons(
    raw: np.ndarray,
    ggml_type: int,
    shape: tuple[int, ...],
    neurons: np.ndarray,
    multiplier: float,
    *,
    fallback: Fallback = "F16",
) -> ScaledTensor:
    """Scale the values of `neurons` (indices along ne0) of one stored tensor by `multiplier`.

    Args:
        raw: the tensor's bytes as stored, uint8 [n_bytes].
        ggml_type: its ggml type id.
        shape: its ggml shape, (d_mlp, d_model) for a down projection.
        neurons: int64 [n] distinct indices in [0, d_mlp).
        multiplier: the scale (finite).
        fallback: "F16" or "Q8_0", for types that cannot be kept (see the module docstring).

    Raises:
        InputError: an unknown fallback, or a multiplier that overflows the stored type.
    """
    if fallback not in FALLBACKS:
        raise InputError(f"unknown fallback type {fallback!r}; use one of: {', '.join(FALLBACKS)}")
    n_ff = shape[0]
    rows = int(np.prod(shape[1:], dtype=np.int64))
    table = np.ascontiguousarray(raw).reshape(rows, -1)  # [d_model, bytes per row]
    neurons = np.asarray(neurons, dtype=np.int64)
    if ggml_type in ELEMENTWISE:
        return _scale_elementwise(table, ggml_type, neurons, multiplier)
    if ggml_type in REQUANTIZABLE:
        kept = _requantize_blocks(table, ggml_type, neurons, multiplier)
        if kept is not None:
            return kept
    gguf = require_gguf()
    try:
        values = gguf.quants.dequantize(table, gguf.GGMLQuantizationType(ggml_type))
    except NotImplementedError:
        raise InputError(
            f"the gguf package cannot decode {type_name(ggml_type)} tensors; upgrade it "
            "(pip install -U gguf)"
        ) from None
    values = values.reshape(rows, n_ff)
    values[:, neurons] *= np.float32(multiplier)
    target_type = Q8_0 if fallback == "Q8_0" and n_ff % block_size(Q8_0)[0] == 0 else F16
    return _encode(values, target_type)


def _scale_elementwise(
    table: np.ndarray, ggml_type: int, neurons: np.ndarray, multiplier: float
) -> ScaledTensor:
    gguf = require_gguf()
    qtype = gguf.GGMLQuantizationType(ggml_type)
    columns = table.reshape(table.shape[0], -1, block_size(ggml_type)[1])[:, neurons]
    target = gguf.quants.dequantize(columns.reshape(table.shape[0], -1), qtype)
    target = target * np.float32(multiplier)
    _check_finite(target, ggml_type)
    stored = np.asarray(gguf.quants.quantize(target, qtype)).view(np.uint8)
    decoded = gguf.quants.dequantize(stored, qtype)
    _check_finite(decoded, ggml_type)
    error = _max_error(decoded, target)
    out = table.copy()
    view = out.reshape(table.shape[0], -1, block_size(ggml_type)[1])
    view[:, neurons] = stored.reshape(table.shape[0], len(neurons), -1)
    return ScaledTensor(out.reshape(-1), ggml_type, 0, error)


@dataclass(frozen=True)
class _Grid:
    """Where a block type keeps its codes: value = d * (code - zero) (+ min when `has_min`)."""

    has_min: bool
    zero: int  # the code of the value 0 (symmetric types) or of the block minimum
    top: int  # the largest code (the smallest is 0, or -128 for Q8_0's signed bytes)
    high_bits: int  # byte offset of the 32 fifth bits (5-bit types), -1 for none
    codes: int  # byte offset of the codes (4-bit pairs: value k low, k + 16 high nibble)


_GRIDS = {
    2: _Grid(has_min=False, zero=8, top=15, high_bits=-1, codes=2),  # Q4_0
    3: _Grid(has_min=True, zero=0, top=15, high_bits=-1, codes=4),  # Q4_1
    6: _Grid(has_min=False, zero=16, top=31, high_bits=2, codes=6),  # Q5_0
    7: _Grid(has_min=True, zero=0, top=31, high_bits=4, codes=8),  # Q5_1
    8: _Grid(has_min=False, zero=0, top=127, high_bits=-1, codes=2),  # Q8_0 (signed bytes)
}


def _requantize_blocks(
    table: np.ndarray, ggml_type: int, neurons: np.ndarray, multiplier: float
) -> ScaledTensor | None:
    """Rewrite only the blocks holding a neuron; None when a block fails the rule."""
    gguf = require_gguf()
    qtype = gguf.GGMLQuantizationType(ggml_type)
    block, type_size = block_size(ggml_type)
    rows = table.shape[0]
    blocks = table.reshape(rows, -1, type_size)  # [d_model, blocks per row, bytes per block]
    touched, where = np.unique(neurons // block, return_inverse=True)
    original = blocks[:, touched]  # [rows, t, type_size]
    target = gguf.quants.dequantize(original.reshape(-1, type_size), qtype)
    target = target.reshape(rows, len(touched), block)
    target[:, where, neurons % block] *= np.float32(multiplier)
    _check_finite(target, ggml_type)
    step = np.abs(original[..., :2].copy().view(np.float16).astype(np.float32))[..., 0]
    allowed = 0.5 * step + SCALE_ROUNDING * np.abs(target).max(axis=-1)  # [rows, t]

    def judged(candidate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        decoded = gguf.quants.dequantize(candidate.reshape(-1, type_size), qtype)
        error = np.abs(decoded.reshape(target.shape) - target).max(axis=-1)
        return error, (error <= allowed) & np.isfinite(decoded.reshape(target.shape)).all(-1)

    edited = _set_codes(original, target, where, neurons % block, _GRIDS[ggml_type])
    edit_error, edit_ok = judged(edited)
    fresh = np.asarray(gguf.quants.quantize(target.reshape(-1, block), qtype))
    fresh = fresh.reshape(original.shape)
    fresh_error, fresh_ok = judged(fresh)
    if not bool(np.all(edit_ok | fresh_ok)):
        return None
    chosen = np.where(edit_ok[..., None], edited, fresh)
    error = np.where(edit_ok, edit_error, fresh_error)
    out = blocks.copy()
    out[:, touched] = chosen
    return ScaledTensor(out.reshape(-1), ggml_type, rows * len(touched), float(error.max()))


def _set_codes(
    blocks: np.ndarray, target: np.ndarray, where: np.ndarray, index: np.ndarray, grid: _Grid
) -> np.ndarray:
    """Copies of `blocks` [rows, t, bytes] with each neuron's code set to the grid point nearest
    its target [rows, t, block]; scales, mins and all other codes unchanged."""
    out = blocks.copy()
    d = blocks[..., :2].copy().view(np.float16).astype(np.float32)[..., 0]  # [rows, t]
    low = np.zeros_like(d)  # the block minimum of Q4_1/Q5_1, after the scale
    if grid.has_min:
        low = blocks[..., 2:4].copy().view(np.float16).astype(np.float32)[..., 0]
    bottom = -128 if grid.top == 127 else 0
    for b, k in zip(where.tolist(), index.tolist(), strict=True):
        scale = d[:, b]
        offset = low[:, b]
        with np.errstate(divide="ignore", invalid="ignore"):
            steps = np.where(scale != 0, np.round((target[:, b, k] - offset) / scale), 0)
        code = (steps + grid.zero).clip(bottom, grid.top).astype(np.int64)
        if grid.top == 127:  # Q8_0: one signed byte per value
            out[:, b, grid.codes + k] = code.astype(np.int8).view(np.uint8)
            continue
        byte, shift = grid.codes + k % 16, 4 * (k // 16)
        kept = out[:, b, byte] & np.uint8(0xFF ^ (0x0F << shift))
        out[:, b, byte] = kept | ((code & 0x0F) << shift).astype(np.uint8)
        if grid.high_bits >= 0:
            at, bit = grid.high_bits + k // 8, k % 8
            kept = out[:, b, at] & np.uint8(0xFF ^ (1 << bit))
            out[:, b, at] = kept | (((code >> 4) & 1) << bit).astype(np.uint8)
    return out


def _encode(values: np.ndarray, ggml_type: int) -> ScaledTensor:
    """Store float32 values [rows, n_ff] in F16 or Q8_0."""
    gguf = require_gguf()
    qtype = gguf.GGMLQuantizationType(ggml_type)
    _check_finite(values, ggml_type)
    stored = np.asarray(gguf.quants.quantize(values, qtype))
    decoded = gguf.quants.dequantize(stored.view(np.uint8), qtype).reshape(values.shape)
    _check_finite(decoded, ggml_type)
    return ScaledTensor(
        stored.view(np.uint8).reshape(-1), ggml_type, 0, _max_error(decoded, values)
    )


def _check_finite(values: np.ndarray, ggml_type: int) -> None:
    limit = float(np.finfo(np.float16).max) if ggml_type == F16 else float("inf")
    if not np.isfinite(values).all() or (values.size and float(np.abs(values).max()) > limit):
        raise InputError(
            f"the multiplier makes weights overflow {type_name(ggml_type)}; use a smaller one"
        )


def _max_error(stored: np.ndarray, target: np.ndarray) -> float:
    if not target.size:
        return 0.0
    return float(np.abs(stored.reshape(target.shape) - target).max())
