"""Stage 5 of the pipeline: the circuit artifact and its file format.

A circuit is a frozen record of which neurons were selected (rank order), their scores, and
the provenance a reader needs to trust or reproduce it. On disk it is a folder:

    refusal.circuit/
        circuit.json          metadata (format version, model, settings, prompt hashes)
        tensors.safetensors   layers, neurons, delta, positive_mean, negative_mean [k]
                              and, optionally, the full [n_layers, d_mlp] tables ("table.*")

No timestamps: the same inputs give the same files, byte for byte. Writes are atomic.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from neurosteer._io import atomic_directory
from neurosteer.attribution import layer_mask, neurons_for_fraction, select_top_k
from neurosteer.errors import CircuitFormatError, CircuitMismatchError, InputError
from neurosteer.gguf.reader import FileIdentity
from neurosteer.layout import ModelLayout

FORMAT_VERSION = 1
METADATA_FILE = "circuit.json"
TENSORS_FILE = "tensors.safetensors"
_TABLE_KEYS = ("positive_mean", "negative_mean", "positive_var", "negative_var", "universal")


@dataclass(frozen=True)
class ModelInfo:
    """Which model a circuit was found on, and where its neurons sit.

    `file` names the GGUF file (name, size, hash of its header and tensor index) when the
    model was loaded from one; None for transformers checkpoints.
    """

    name_or_path: str
    model_type: str
    architecture: str
    n_layers: int
    d_mlp: int
    d_model: int
    layers_path: str
    site_path: str
    config_hash: str
    file: FileIdentity | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelInfo:
        """The inverse of `dataclasses.asdict` (circuits written before `file` existed load too)."""
        fields = dict(data)
        if fields.get("file") is not None:
            fields["file"] = FileIdentity(**fields["file"])
        return cls(**fields)


@dataclass(frozen=True)
class PromptInfo:
    count: int
    sha256: str


@dataclass(frozen=True)
class Settings:
    """How the neurons were chosen (`method` is "cna" or "random")."""

    method: str = "cna"
    k: int = 0
    top_k: int | None = None
    fraction: float = 0.001
    skip_layers: tuple[int, ...] = (0, 1)
    universal_filter: bool = True
    universal_threshold: float = 0.8
    universal_removed: int = 0
    positive_only: bool = False
    chat_template: bool = False
    n_candidates: int = 0
    seed: int | None = None


@dataclass(frozen=True)
class DeltaTable:
    """Full [n_layers, d_mlp] statistics, kept so that k can be changed without re-recording."""

    positive_mean: torch.Tensor
    negative_mean: torch.Tensor
    positive_var: torch.Tensor
    negative_var: torch.Tensor
    universal: torch.Tensor  # bool; all False when the filter was off

    @property
    def delta(self) -> torch.Tensor:
        return self.positive_mean - self.negative_mean


@dataclass(frozen=True, eq=False)
class Circuit:
    """A set of MLP neurons, in rank order, with the statistics and provenance behind it.

    Attributes:
        layers, neurons: [k] int64, the layer and neuron index of each selected neuron.
        delta: [k] float32, mean(positive) − mean(negative) at the last prompt token.
        positive_mean, negative_mean: [k] float32, the two means.
        model, settings, prompts: provenance (prompt counts and SHA-256 per set).
        table: the full statistics, if discovery was asked to keep them.
    """

    layers: torch.Tensor
    neurons: torch.Tensor
    delta: torch.Tensor
    positive_mean: torch.Tensor
    negative_mean: torch.Tensor
    model: ModelInfo
    settings: Settings
    prompts: dict[str, PromptInfo] = field(default_factory=dict)
    library_version: str = ""
    table: DeltaTable | None = None

    def __len__(self) -> int:
        return int(self.layers.numel())

    def neurons_per_layer(self) -> dict[int, int]:
        """{layer: number of circuit neurons}, layers with none left out."""
        counts = torch.bincount(self.layers, minlength=self.model.n_layers).tolist()
        return {layer: n for layer, n in enumerate(counts) if n}

    def by_layer(self) -> dict[int, torch.Tensor]:
        """{layer: [n] int64 neuron indices}, the form the steering hooks take."""
        return {
            layer: self.neurons[self.layers == layer].sort().values
            for layer in self.neurons_per_layer()
        }

    def check_fits(self, layout: ModelLayout) -> None:
        """Raise `CircuitMismatchError` unless this circuit's indices exist in the model."""
        if (layout.n_layers, layout.d_mlp) != (self.model.n_layers, self.model.d_mlp):
            raise CircuitMismatchError(
                f"this circuit was found on {self.model.name_or_path} ({self.model.model_type}, "
                f"{self.model.n_layers} layers x {self.model.d_mlp} neurons) and does not fit "
                f"this model ({layout.model_type}, {layout.n_layers} layers x {layout.d_mlp} "
                "neurons); discover a circuit on this model"
            )
        if len(self) and (
            int(self.layers.max()) >= layout.n_layers or int(self.neurons.max()) >= layout.d_mlp
        ):
            raise CircuitMismatchError("this circuit holds neuron indices outside the model")
        if layout.model_type != self.model.model_type:
            raise CircuitMismatchError(
                f"this circuit was found on a {self.model.model_type} model "
                f"({self.model.name_or_path}) and this is a {layout.model_type} model; neuron "
                "indices do not carry over between families, so discover a circuit on this model"
            )

    def reselect(
        self,
        *,
        top_k: int | None = None,
        fraction: float | None = None,
        positive_only: bool | None = None,
    ) -> Circuit:
        """A new circuit with another k (or sign rule) from the kept table, without re-recording."""
        if self.table is None:
            raise InputError(
                "this circuit has no full table; discover it again with keep_table=True"
            )
        n_neurons = self.model.n_layers * self.model.d_mlp
        frac = self.settings.fraction if fraction is None else fraction
        k = top_k if top_k is not None else neurons_for_fraction(frac, n_neurons)
        pos_only = self.settings.positive_only if positive_only is None else positive_only
        candidates = layer_mask(self.model.n_layers, self.model.d_mlp, self.settings.skip_layers)
        candidates &= ~self.table.universal
        chosen = select_top_k(self.table.delta, candidates, k, positive_only=pos_only)
        settings = replace(
            self.settings,
            k=k,
            top_k=top_k,
            fraction=frac,
            positive_only=pos_only,
            n_candidates=chosen.n_candidates,
        )
        return from_table(self, chosen.layers, chosen.neurons, settings)

    def random_like(self, seed: int = 0, *, per_layer: bool = True) -> Circuit:
        """A control circuit of the same size, drawn from neurons outside this circuit.

        By default each layer gets as many random neurons as this circuit has there; with
        `per_layer=False` they are drawn uniformly from the candidate layers.
        """
        gen = torch.Generator().manual_seed(seed)
        n_layers, d_mlp = self.model.n_layers, self.model.d_mlp
        free = torch.ones(n_layers, d_mlp, dtype=torch.bool)
        free[self.layers, self.neurons] = False
        if per_layer:
            picks = []
            for layer, n in self.neurons_per_layer().items():
                pool = free[layer].nonzero().flatten()
                if pool.numel() < n:  # a layer the circuit nearly fills: allow overlap
                    pool = torch.arange(d_mlp)
                picks.append((layer, pool[torch.randperm(pool.numel(), generator=gen)[:n]]))
            layers = torch.cat([torch.full((len(idx),), layer) for layer, idx in picks])
            neurons = torch.cat([idx for _, idx in picks])
        else:
            allowed = layer_mask(n_layers, d_mlp, self.settings.skip_layers) & free
            pool = allowed.flatten().nonzero().flatten()
            flat = pool[torch.randperm(pool.numel(), generator=gen)[: len(self)]]
            layers, neurons = flat // d_mlp, flat % d_mlp

        def zeros() -> torch.Tensor:  # one tensor each: safetensors refuses shared storage
            return torch.zeros(len(layers), dtype=torch.float32)

        return replace(
            self,
            layers=layers.long(),
            neurons=neurons.long(),
            delta=zeros(),
            positive_mean=zeros(),
            negative_mean=zeros(),
            settings=replace(self.settings, method="random", seed=seed),
            table=None,
        )

    def save(self, path: str | Path, *, force: bool = False) -> Path:
        """Write the circuit folder atomically; refuse to replace one unless `force`."""
        tensors = {
            "layers": self.layers.long().contiguous(),
            "neurons": self.neurons.long().contiguous(),
            "delta": self.delta.float().contiguous(),
            "positive_mean": self.positive_mean.float().contiguous(),
            "negative_mean": self.negative_mean.float().contiguous(),
        }
        if self.table is not None:
            for key in _TABLE_KEYS:
                tensors[f"table.{key}"] = getattr(self.table, key).contiguous()
        meta = {
            "format": "neurosteer.circuit",
            "format_version": FORMAT_VERSION,
            "library_version": self.library_version,
            "model": asdict(self.model),
            "settings": asdict(self.settings),
            "prompts": {name: asdict(info) for name, info in sorted(self.prompts.items())},
            "n_neurons": len(self),
            "neurons_per_layer": {str(k): v for k, v in self.neurons_per_layer().items()},
            "has_table": self.table is not None,
        }
        with atomic_directory(path, force=force) as staging:
            (staging / METADATA_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
            save_file(tensors, str(staging / TENSORS_FILE))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> Circuit:
        """Read a circuit folder written by `save`."""
        folder = Path(path)
        meta_file, tensor_file = folder / METADATA_FILE, folder / TENSORS_FILE
        if not meta_file.is_file() or not tensor_file.is_file():
            raise CircuitFormatError(
                f"'{folder}' is not a circuit folder (needs {METADATA_FILE} and {TENSORS_FILE})"
            )
        try:
            meta: dict[str, Any] = json.loads(meta_file.read_text())
            tensors = load_file(str(tensor_file))
        except (json.JSONDecodeError, OSError, RuntimeError, SafetensorError) as err:
            raise CircuitFormatError(f"'{folder}' is corrupt: {err}") from None
        version = meta.get("format_version")
        if version != FORMAT_VERSION:
            raise CircuitFormatError(
                f"'{folder}' has circuit format version {version}; this neurosteer reads version "
                f"{FORMAT_VERSION} (upgrade neurosteer to read newer files)"
            )
        try:
            settings = dict(meta["settings"])
            settings["skip_layers"] = tuple(settings["skip_layers"])
            table = None
            if meta.get("has_table"):
                table = DeltaTable(**{key: tensors[f"table.{key}"] for key in _TABLE_KEYS})
            return cls(
                layers=tensors["layers"],
                neurons=tensors["neurons"],
                delta=tensors["delta"],
                positive_mean=tensors["positive_mean"],
                negative_mean=tensors["negative_mean"],
                model=ModelInfo.from_dict(meta["model"]),
                settings=Settings(**settings),
                prompts={k: PromptInfo(**v) for k, v in meta["prompts"].items()},
                library_version=str(meta.get("library_version", "")),
                table=table,
            )
        except (KeyError, TypeError) as err:
            raise CircuitFormatError(f"'{folder}' is missing a field: {err}") from None


def from_table(
    base: Circuit, layers: torch.Tensor, neurons: torch.Tensor, settings: Settings
) -> Circuit:
    """A circuit of the given neurons with scores read from `base.table`."""
    assert base.table is not None  # callers check; internal invariant
    pos = base.table.positive_mean[layers, neurons]
    neg = base.table.negative_mean[layers, neurons]
    return replace(
        base,
        layers=layers,
        neurons=neurons,
        delta=pos - neg,
        positive_mean=pos,
        negative_mean=neg,
        settings=settings,
    )
