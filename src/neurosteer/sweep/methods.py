"""Stage 9 (sweeps), the methods: fit every intervention once, then build it at any strength.

`fit_methods` discovers the circuit (kept with its full δ table) and records the contrast
vectors of the baselines, or reads both back from the run folder when resuming, so a resumed
run steers with exactly the same objects. The layer of CAA and of the ablated direction is
`config.caa_layer` when given, else the one stored in the run's config.json (a resumed run
never scans again), else chosen by a layer scan (`sweep.layers`), else the cheap heuristic
(`layer_scan_prompts=0`). `Fitted.intervention(method, s, seed)` returns a
factory of steering handles, with the strength mapping of `config.knob`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from neurosteer.baselines import CAA, ContrastVectors, DirectionAblation, MLPOutputSteering
from neurosteer.baselines import contrast_vectors as record_vectors
from neurosteer.circuit import Circuit
from neurosteer.discovery import discover
from neurosteer.evaluation.judges import Judge
from neurosteer.layout import ModelLayout
from neurosteer.steering import SteeringHandle, steer
from neurosteer.sweep.config import SweepConfig, knob
from neurosteer.sweep.layers import SCANNED, LayerScan, scan_layer
from neurosteer.sweep.store import CIRCUIT_DIR, VECTORS_FILE, read_config, store_fitted

logger = logging.getLogger(__name__)

#: Builds a fresh handle that steers with one fitted method at one strength.
Factory = Callable[[], SteeringHandle]


@dataclass(frozen=True, eq=False)
class Fitted:
    """Everything a sweep steers with, fitted once from the positive and negative prompts.

    Attributes:
        circuit: the CNA circuit (with its full table).
        vectors: {"residual" | "mlp_output": ContrastVectors} the baselines were fitted from.
        caa, direction, mlp_output: the fitted baselines (None when not asked for).
        random: {seed: random circuit of the same size per layer}.
        layer_scans: {"caa" | "direction": the layer scan run this time} (empty when the
            layers were given, read back from a resumed run, or chosen by the heuristic).
    """

    circuit: Circuit
    vectors: dict[str, ContrastVectors] = field(default_factory=dict)
    caa: CAA | None = None
    direction: DirectionAblation | None = None
    mlp_output: MLPOutputSteering | None = None
    random: dict[int, Circuit] = field(default_factory=dict)
    layer_scans: dict[str, LayerScan] = field(default_factory=dict)

    def intervention(
        self,
        model: nn.Module,
        method: str,
        strength: float,
        seed: int | None = None,
        *,
        layout: ModelLayout | None = None,
    ) -> Factory:
        """A factory of steering handles applying `method` at strength s (`config.knob`)."""
        _, value = knob(method, strength)
        if method == "cna":
            return lambda: steer(model, self.circuit, value, layout=layout)
        if method == "random":
            if seed not in self.random:
                raise KeyError(f"no random circuit was fitted for seed {seed}")
            return lambda: steer(model, self.random[seed], value, layout=layout)
        if method == "caa" and self.caa is not None:
            caa = self.caa
            return lambda: caa.steer(model, value, layout=layout)
        if method == "mlp_output" and self.mlp_output is not None:
            mlp = self.mlp_output
            return lambda: mlp.steer(model, value, layout=layout)
        if method == "direction" and self.direction is not None:
            direction = self.direction
            return lambda: direction.steer(model, value, layout=layout)
        raise KeyError(f"method {method!r} was not fitted")

    def settings(self) -> dict[str, object]:
        """What a report shows about the fitted interventions."""
        return {
            "circuit_neurons": len(self.circuit),
            "circuit_neurons_per_layer": {
                str(k): v for k, v in self.circuit.neurons_per_layer().items()
            },
            "caa_layer": None if self.caa is None else self.caa.layer,
            "caa_vector_norm": None if self.caa is None else float(self.caa.vector.norm()),
            "direction_layer": None if self.direction is None else self.direction.layer,
            "random_seeds": sorted(self.random),
            "layer_scans": {m: scan.to_dict() for m, scan in self.layer_scans.items()},
        }


def fit_methods(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    config: SweepConfig,
    positive: Sequence[str],
    negative: Sequence[str],
    run_dir: Path,
    *,
    judge: Judge,
    neutral: Sequence[str] | None = None,
    layout: ModelLayout,
    progress: bool = False,
) -> Fitted:
    """Fit (or read back from `run_dir`) the circuit and every baseline `config` asks for.

    Reads the circuit, the contrast vectors and the fitted layers ("fitted" in config.json)
    back from `run_dir` when they are there; computes only what is missing. The layer scans are
    the only generation here, and they run only for a layer neither given nor stored.
    """
    circuit_dir = run_dir / CIRCUIT_DIR
    if circuit_dir.exists():
        circuit = Circuit.load(circuit_dir)
        logger.info("resuming with the circuit in %s", circuit_dir)
    else:
        circuit = discover(
            model,
            tokenizer,
            positive,
            negative,
            top_k=config.top_k,
            fraction=config.fraction,
            skip_layers=config.skip_layers,
            universal_filter=config.universal_filter,
            neutral=neutral,
            batch_size=config.batch_size,
            chat_template=config.chat_template,
            system=config.system,
            keep_table=True,
            layout=layout,
            progress=progress,
        )
        circuit.save(circuit_dir)
    circuit.check_fits(layout)

    points = []
    if {"caa", "direction"} & set(config.methods):
        points.append("residual")
    if "mlp_output" in config.methods:
        points.append("mlp_output")
    vectors = _load_vectors(run_dir / VECTORS_FILE)
    missing = [p for p in points if p not in vectors]
    for point in missing:
        vectors[point] = record_vectors(
            model,
            tokenizer,
            positive,
            negative,
            point="residual" if point == "residual" else "mlp_output",
            batch_size=config.batch_size,
            chat_template=config.chat_template,
            system=config.system,
            layout=layout,
            progress=progress,
        )
    if missing:
        _save_vectors(run_dir / VECTORS_FILE, vectors)

    methods = set(config.methods)
    residual = vectors.get("residual")
    stored = (read_config(run_dir) or {}).get("fitted", {})
    layers: dict[str, int] = {}
    scans: dict[str, LayerScan] = {}
    for method in SCANNED:
        if method not in methods or residual is None:
            continue
        stored_layer = stored.get(f"{method}_layer")
        if config.caa_layer is not None:
            layers[method] = config.caa_layer
        elif stored_layer is not None:  # a resumed run: the layer its finished points used
            layers[method] = int(stored_layer)
        elif config.layer_scan_prompts > 0:
            scan = scan_layer(
                model,
                tokenizer,
                residual,
                positive[: config.layer_scan_prompts],
                judge,
                method=method,
                config=config,
                layout=layout,
                progress=progress,
            )
            layers[method], scans[method] = scan.chosen, scan
            # stored now: a run killed before its first point does not scan this again
            store_fitted(
                run_dir, {f"{method}_layer": scan.chosen, "layer_scans": {method: scan.to_dict()}}
            )
        else:
            layers[method] = residual.default_layer()
    return Fitted(
        circuit=circuit,
        vectors=vectors,
        caa=(
            CAA.fit(
                residual,
                layer=layers["caa"],
                positions="prompt" if config.caa_positions == "prompt" else "all",
                normalize=config.caa_normalize,
            )
            if "caa" in methods and residual is not None
            else None
        ),
        direction=(
            DirectionAblation.fit(residual, layer=layers["direction"])
            if "direction" in methods and residual is not None
            else None
        ),
        mlp_output=(
            MLPOutputSteering.fit(vectors["mlp_output"]) if "mlp_output" in methods else None
        ),
        random=(
            {seed: circuit.random_like(seed, per_layer=True) for seed in config.random_seeds}
            if "random" in methods
            else {}
        ),
        layer_scans=scans,
    )


def _save_vectors(file: Path, vectors: dict[str, ContrastVectors]) -> None:
    tensors = {}
    for point, v in vectors.items():
        tensors[f"{point}.positive_mean"] = v.positive_mean.float().contiguous()
        tensors[f"{point}.negative_mean"] = v.negative_mean.float().contiguous()
        tensors[f"{point}.mean_norm"] = v.mean_norm.float().contiguous()
    tmp = file.with_name(f".{file.name}.tmp")
    save_file(tensors, str(tmp))
    tmp.replace(file)


def _load_vectors(file: Path) -> dict[str, ContrastVectors]:
    if not file.is_file():
        return {}
    tensors: dict[str, torch.Tensor] = load_file(str(file))
    vectors: dict[str, ContrastVectors] = {}
    for point in ("residual", "mlp_output"):
        if f"{point}.positive_mean" in tensors:
            vectors[point] = ContrastVectors(
                "residual" if point == "residual" else "mlp_output",
                tensors[f"{point}.positive_mean"],
                tensors[f"{point}.negative_mean"],
                tensors[f"{point}.mean_norm"],
            )
    return vectors
