"""The methods: fit every intervention once, then apply it at any strength.

`fit_methods` discovers the circuit (kept with its full δ table) and records the contrast
vectors of the baselines, or reads both back from the run folder when resuming (the circuit
folder, and the vectors file in the format of `neurosteer.methods.contrast`), so a resumed run
steers
with exactly the same objects. The layer of CAA and of the ablated direction is
`config.caa_layer` when given, else the one stored in the run's config.json (a resumed run
never scans again), else chosen by a layer scan (`sweep.layers`), else the cheap heuristic
(`layer_scan_prompts=0`).

`Fitted.intervention(method, seed)` is the method's `Intervention`, bound to the sweep's CAA
positions and layout; `config.knob(method, s)` gives the strength it runs at for the sweep's
normalised strength s.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from neurosteer.errors import InputError
from neurosteer.evaluation.judges import Judge
from neurosteer.hooks.positions import Positions
from neurosteer.interventions.protocol import Bound, Intervention
from neurosteer.methods.baselines import CAA, DirectionAblation, MLPOutputSteering
from neurosteer.methods.baselines import contrast_vectors as record_vectors
from neurosteer.methods.circuit import Circuit
from neurosteer.methods.contrast import ContrastVectors, Point, load_vectors, save_vectors
from neurosteer.methods.discovery import discover, model_info
from neurosteer.model.layout import ModelLayout
from neurosteer.model.runtime import runs_model
from neurosteer.workflows.sweep.config import SweepConfig
from neurosteer.workflows.sweep.layers import SCANNED, LayerScan, ScannedMethod, scan_layer
from neurosteer.workflows.sweep.store import CIRCUIT_DIR, VECTORS_FILE, read_config, store_fitted

logger = logging.getLogger(__name__)


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
        caa_positions: where CAA is applied ("all" or "prompt", from the sweep's config).
    """

    circuit: Circuit
    vectors: dict[Point, ContrastVectors] = field(default_factory=dict)
    caa: CAA | None = None
    direction: DirectionAblation | None = None
    mlp_output: MLPOutputSteering | None = None
    random: dict[int, Circuit] = field(default_factory=dict)
    layer_scans: dict[str, LayerScan] = field(default_factory=dict)
    caa_positions: Positions = "all"

    def intervention(
        self, method: str, seed: int | None = None, *, layout: ModelLayout | None = None
    ) -> Intervention:
        """The fitted intervention of `method`, with the sweep's positions and `layout` bound.

        Apply it at the sweep's strength s with `.steer(model, knob(method, s)[1])`.

        Args:
            method: "cna", "random", "caa", "mlp_output" or "direction".
            seed: the random control's seed (method "random" only).
            layout: the layout every application uses (None: each intervention's default).

        Raises:
            InputError: the method was not fitted, or no random circuit has that seed.
        """
        positions: Positions = self.caa_positions if method == "caa" else "all"
        return Bound(self._fitted(method, seed), positions=positions, layout=layout)

    def _fitted(self, method: str, seed: int | None) -> Intervention:
        if method == "cna":
            return self.circuit
        if method == "random":
            if seed is None or seed not in self.random:
                seeds = ", ".join(map(str, sorted(self.random))) or "none"
                raise InputError(
                    f"no random circuit was fitted for seed {seed} (fitted seeds: {seeds})"
                )
            return self.random[seed]
        baselines = {"caa": self.caa, "mlp_output": self.mlp_output, "direction": self.direction}
        found = baselines.get(method)
        if found is None:
            raise InputError(
                f"method {method!r} was not fitted for this sweep; add it to the sweep's methods"
            )
        return found

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


@dataclass(frozen=True)
class _Job:
    """What every fitting step reads: the model, the sweep's settings and prompts, the folder."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    config: SweepConfig
    positive: Sequence[str]
    negative: Sequence[str]
    run_dir: Path
    layout: ModelLayout
    progress: bool


@runs_model
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

    Raises:
        InputError: the folder's vectors file is unreadable or was recorded on another model.
        CircuitMismatchError: the folder's circuit does not fit the model.
    """
    job = _Job(model, tokenizer, config, positive, negative, Path(run_dir), layout, progress)
    circuit = _fit_circuit(job, neutral)
    vectors = _fit_vectors(job)
    residual = vectors.get("residual")
    layers, scans = _fit_layers(job, residual, judge)
    methods = set(config.methods)
    return Fitted(
        circuit=circuit,
        vectors=dict(vectors),
        caa=(
            CAA.fit(residual, layer=layers["caa"], normalize=config.caa_normalize)
            if "caa" in layers and residual is not None
            else None
        ),
        direction=(
            DirectionAblation.fit(residual, layer=layers["direction"])
            if "direction" in layers and residual is not None
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
        caa_positions="prompt" if config.caa_positions == "prompt" else "all",
    )


def _fit_circuit(job: _Job, neutral: Sequence[str] | None) -> Circuit:
    """The run's circuit: read back, or discovered (with its table) and saved."""
    circuit_dir = job.run_dir / CIRCUIT_DIR
    if circuit_dir.exists():
        circuit = Circuit.load(circuit_dir)
        logger.info("resuming with the circuit in %s", circuit_dir)
    else:
        config = job.config
        circuit = discover(
            job.model,
            job.tokenizer,
            job.positive,
            job.negative,
            top_k=config.top_k,
            fraction=config.fraction,
            skip_layers=config.skip_layers,
            universal_filter=config.universal_filter,
            neutral=neutral,
            batch_size=config.batch_size,
            **config.rendering.as_kwargs(),
            keep_table=True,
            layout=job.layout,
            progress=job.progress,
        )
        circuit.save(circuit_dir)
    circuit.check_fits(job.layout)
    return circuit


def _fit_vectors(job: _Job) -> dict[Point, ContrastVectors]:
    """The contrast vectors the baselines need: those in the run's file, plus any missing
    (recorded now and added to the file).

    A file written before the vectors had a format (no metadata) is read as it is; it is
    rewritten in the current format when a point is added.
    """
    methods = set(job.config.methods)
    points: list[Point] = []
    if {"caa", "direction"} & methods:
        points.append("residual")
    if "mlp_output" in methods:
        points.append("mlp_output")
    file = job.run_dir / VECTORS_FILE
    vectors = load_vectors(file) if file.is_file() else {}
    info = model_info(job.model, job.layout)
    for stored in vectors.values():
        try:
            stored.check_fits(info)
        except InputError as err:
            raise InputError(f"{file}: {err}; or use a new run folder") from None
    missing = [p for p in points if p not in vectors]
    for point in missing:
        vectors[point] = record_vectors(
            job.model,
            job.tokenizer,
            job.positive,
            job.negative,
            point=point,
            batch_size=job.config.batch_size,
            **job.config.rendering.as_kwargs(),
            layout=job.layout,
            progress=job.progress,
        )
    if missing:
        save_vectors(file, vectors.values(), force=True)
    return vectors


def _fit_layers(
    job: _Job, residual: ContrastVectors | None, judge: Judge
) -> tuple[dict[str, int], dict[str, LayerScan]]:
    """({method: layer}, {method: scan run now}) for the scanned methods the sweep runs."""
    layers: dict[str, int] = {}
    scans: dict[str, LayerScan] = {}
    if residual is None:
        return layers, scans
    stored = (read_config(job.run_dir) or {}).get("fitted", {})
    for method in SCANNED:
        if method not in job.config.methods:
            continue
        stored_layer = stored.get(f"{method}_layer")
        if job.config.caa_layer is not None:
            layers[method] = job.config.caa_layer
        elif stored_layer is not None:  # a resumed run: the layer its finished points used
            layers[method] = int(stored_layer)
        elif job.config.layer_scan_prompts > 0:
            scan = _scan(job, residual, judge, method)
            layers[method], scans[method] = scan.chosen, scan
        else:
            layers[method] = residual.default_layer()
    return layers, scans


def _scan(job: _Job, residual: ContrastVectors, judge: Judge, method: ScannedMethod) -> LayerScan:
    """Run the layer scan of `method` and store its result in the run's config.json at once,
    so a run killed before its first point does not scan this again."""
    scan = scan_layer(
        job.model,
        job.tokenizer,
        residual,
        job.positive[: job.config.layer_scan_prompts],
        judge,
        method=method,
        config=job.config,
        layout=job.layout,
        progress=job.progress,
    )
    store_fitted(
        job.run_dir, {f"{method}_layer": scan.chosen, "layer_scans": {method: scan.to_dict()}}
    )
    return scan
