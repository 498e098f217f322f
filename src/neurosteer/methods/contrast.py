"""Beside the baselines: contrast vectors, the artifact they are fitted from, and its file.

`ContrastVectors` holds last-token means of the residual stream (or of each MLP's output) for
the positive and negative prompt sets, per layer (`neurosteer.methods.baselines.contrast_vectors`
records them). On disk it is one safetensors file, which may hold both points:

    vectors.safetensors
        tensors   "<point>.positive_mean", "<point>.negative_mean" [n_layers, d_model] float32,
                  "<point>.mean_norm" [n_layers] float32, for point "residual" / "mlp_output"
        metadata  format "neurosteer.contrast_vectors", format_version, library_version,
                  points: {point: the model it was recorded on (as a circuit records it,
                  config hash included) or null}

Files without metadata, written by sweeps before this format existed, hold the same tensors
and read as format version 0 with no model recorded. Writes are atomic.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from neurosteer._io import atomic_file
from neurosteer._version import __version__
from neurosteer.errors import InputError
from neurosteer.methods.circuit import ModelInfo

Point = Literal["residual", "mlp_output"]
POINTS: tuple[Point, ...] = ("residual", "mlp_output")

FORMAT = "neurosteer.contrast_vectors"
FORMAT_VERSION = 1
_KEYS = ("positive_mean", "negative_mean", "mean_norm")


@dataclass(frozen=True, eq=False)
class ContrastVectors:
    """Last-token means of the residual stream (or of each MLP's output), per layer.

    Attributes:
        point: "residual" (each decoder layer's output) or "mlp_output" (what each MLP adds).
        positive_mean, negative_mean: [n_layers, d_model] float32.
        mean_norm: [n_layers] float32, mean L2 norm over all prompts of both sets.
        model: the model they were recorded on (None when unknown: made by hand, or read
            from a file of format version 0).
    """

    point: Point
    positive_mean: torch.Tensor
    negative_mean: torch.Tensor
    mean_norm: torch.Tensor
    model: ModelInfo | None = None

    @property
    def delta(self) -> torch.Tensor:
        """[n_layers, d_model] positive − negative."""
        return self.positive_mean - self.negative_mean

    def default_layer(self) -> int:
        """The layer whose difference is largest relative to the activations' size, among
        layers 1 to 80% of depth (later layers mostly read out rather than decide).

        A cheap heuristic; sweeps may instead scan layers by their effect on the behaviour.
        """
        n_layers = self.delta.shape[0]
        top = max(2, math.ceil(0.8 * n_layers))
        relative = self.delta.norm(dim=-1) / self.mean_norm.clamp(min=1e-6)
        return 1 + int(relative[1:top].argmax()) if n_layers > 1 else 0

    def checked_layer(self, layer: int | None) -> int:
        """`layer`, or `default_layer()` when None.

        Raises:
            InputError: a layer outside 0 .. n_layers − 1.
        """
        n_layers = self.delta.shape[0]
        chosen = self.default_layer() if layer is None else layer
        if not 0 <= chosen < n_layers:
            raise InputError(f"layer {chosen} out of range 0..{n_layers - 1}")
        return chosen

    def check_fits(self, model: ModelInfo) -> None:
        """Raise `InputError` unless these vectors have `model`'s shape and, when they
        record one, were recorded on a model with its config hash."""
        shape = (model.n_layers, model.d_model)
        if tuple(self.positive_mean.shape) != shape:
            raise InputError(
                f"these {self.point} vectors are {tuple(self.positive_mean.shape)} "
                f"([n_layers, d_model]) but the model is {shape}; record them on this model"
            )
        if self.model is not None and self.model.config_hash != model.config_hash:
            raise InputError(
                f"these {self.point} vectors were recorded on {self.model.name_or_path} "
                f"(config sha256 {self.model.config_hash[:12]}), not on this model "
                f"({model.config_hash[:12]}); record them on this model"
            )

    def save(self, path: str | Path, *, force: bool = False) -> Path:
        """Write these vectors to `path` (see the module docstring); refuse to replace an
        existing file unless `force`. Same as `save_vectors(path, [self])`."""
        return save_vectors(path, [self], force=force)

    @classmethod
    def load(cls, path: str | Path, point: Point | None = None) -> ContrastVectors:
        """Read the vectors of `point` from `path` (any point when the file holds one).

        Raises:
            InputError: as `load_vectors`; also `point` is not in the file, or is not given
                and the file holds several.
        """
        vectors = load_vectors(path)
        if point is None and len(vectors) == 1:
            return next(iter(vectors.values()))
        if point is None or point not in vectors:
            held = ", ".join(vectors) or "none"
            raise InputError(f"'{path}' holds the points {held}; name one of them (point=...)")
        return vectors[point]


def save_vectors(
    path: str | Path, vectors: Iterable[ContrastVectors], *, force: bool = False
) -> Path:
    """Write one or several `ContrastVectors` (one per point) to one safetensors file.

    Raises:
        InputError: two vectors of the same point, none at all, or an output path refused
            by `neurosteer._io.check_writable` (exists without `force`, no parent folder).
    """
    tensors: dict[str, torch.Tensor] = {}
    points: dict[str, Any] = {}
    for v in vectors:
        if v.point in points:
            raise InputError(f"two {v.point} vectors given; a file holds one per point")
        points[v.point] = None if v.model is None else asdict(v.model)
        for key in _KEYS:
            tensors[f"{v.point}.{key}"] = getattr(v, key).detach().float().cpu().contiguous()
    if not points:
        raise InputError("no vectors to save")
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "library_version": __version__,
        "points": json.dumps(points, sort_keys=True),
    }
    with atomic_file(path, force=force) as staging:
        save_file(tensors, str(staging), metadata=metadata)
    return Path(path)


def load_vectors(path: str | Path) -> dict[Point, ContrastVectors]:
    """{point: vectors} of a file written by `save_vectors` (or by an older sweep).

    Raises:
        InputError: the file is missing, corrupt, not a vectors file, or of a newer format
            version (the message says what to do).
    """
    file = Path(path)
    if not file.is_file():
        raise InputError(f"'{file}' does not exist; record the vectors first")
    try:
        with safe_open(str(file), framework="pt") as f:
            metadata: dict[str, str] = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, RuntimeError, ValueError) as err:
        raise InputError(f"'{file}' is not a readable safetensors file: {err}") from None
    models = _recorded_models(file, metadata, tensors)
    vectors: dict[Point, ContrastVectors] = {}
    for point, model in models.items():
        try:
            positive, negative, norm = (tensors[f"{point}.{key}"] for key in _KEYS)
        except KeyError as err:
            raise InputError(f"'{file}' is missing the tensor {err}; record it again") from None
        vectors[point] = ContrastVectors(point, positive, negative, norm, model=model)
    return vectors


def _recorded_models(
    file: Path, metadata: dict[str, str], tensors: dict[str, torch.Tensor]
) -> dict[Point, ModelInfo | None]:
    """{point: recorded model} from a file's metadata (format version 0: the points present)."""
    if "format" not in metadata:  # version 0: a sweep's file from before this format
        return {p: None for p in POINTS if f"{p}.positive_mean" in tensors}
    if metadata["format"] != FORMAT:
        raise InputError(f"'{file}' is a {metadata['format']} file, not contrast vectors")
    version = metadata.get("format_version")
    if version != str(FORMAT_VERSION):
        raise InputError(
            f"'{file}' has contrast-vector format version {version}; this neurosteer reads "
            f"version {FORMAT_VERSION} (upgrade neurosteer to read newer files)"
        )
    try:
        points = json.loads(metadata["points"])
        return {
            p: None if points[p] is None else ModelInfo.from_dict(points[p])
            for p in POINTS
            if p in points
        }
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(f"'{file}' has corrupt metadata ({err}); record it again") from None
