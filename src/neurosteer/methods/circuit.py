"""The circuit artifact and its file format.

A circuit is a frozen record of which neurons were selected (rank order), their scores, and
the provenance a reader needs to trust or reproduce it. On disk it is a folder:

    refusal.circuit/
        circuit.json          metadata (format version, model, settings, prompt hashes; for
                              a circuit exported from `neurosteer optimize`, the search it
                              came from under "search")
        tensors.safetensors   layers, neurons, delta, positive_mean, negative_mean [k];
                              the universal neurons as "universal.layers", "universal.neurons"
                              [u] (absent in files of older versions); optionally, the full
                              [n_layers, d_mlp] tables ("table.*") and the discovery record
                              ("discovery.*", `neurosteer.methods.discovery_record`)

No timestamps: the same inputs give the same files, byte for byte. Writes are atomic.

Format versions: 1 (the first), 2 (adds `CircuitRecipe.multiplier`, `CircuitRecipe.score` and
the "search" section), 3 (adds `ModelInfo.weights`, the fingerprint of the weights), 4 (adds the
optional discovery record: the prompts and each neuron's activation on them), 5 (adds
`ModelInfo.neuron_blocks`, written only for mixture-of-experts models: which expert each flat
neuron index of a layer belongs to). This version reads all five; an older file reads with the
defaults of the new fields (no stored multiplier, the plain difference of means, no search,
weights unknown, no discovery record, a dense model).
"""

from __future__ import annotations

import json
import logging
import weakref
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from neurosteer._compat import deprecated_name, renamed_keywords
from neurosteer._io import atomic_directory
from neurosteer._version import __version__
from neurosteer.errors import (
    CircuitFormatError,
    CircuitLayoutError,
    CircuitMismatchError,
    InputError,
    NeurosteerError,
    UnsupportedModelError,
)
from neurosteer.hooks import EditState, HookSet, add_neuron_scalers
from neurosteer.hooks.edits import scale_values
from neurosteer.interventions.handles import BakeHandle, require_editable
from neurosteer.interventions.protocol import (
    OLD_STRENGTH,
    HookedIntervention,
    Installer,
    check_strength,
)
from neurosteer.methods.discovery_record import DiscoveryRecord, record_from_files
from neurosteer.methods.moe_sites import bake_moe, edited_modules, moe_installer
from neurosteer.methods.selection import (
    candidate_mask,
    neuron_scores,
    neurons_for_fraction,
    select_top_k,
)
from neurosteer.model.fingerprint import WeightsFingerprint, baked_on, mark_baked, same_weights
from neurosteer.model.gguf.reader import FileIdentity
from neurosteer.model.layout import ModelLayout, resolve_layout
from neurosteer.model.moe_layout import describe_neuron, index_outside_message

logger = logging.getLogger(__name__)

FORMAT_VERSION = 5
READABLE_VERSIONS = (1, 2, 3, 4, 5)
"""Circuit format versions `Circuit.load` reads (see the module docstring)."""
METADATA_FILE = "circuit.json"
TENSORS_FILE = "tensors.safetensors"
_TABLE_KEYS = ("positive_mean", "negative_mean", "positive_var", "negative_var", "universal")
_UNIVERSAL_LAYERS, _UNIVERSAL_NEURONS = "universal.layers", "universal.neurons"


@dataclass(frozen=True)
class ModelInfo:
    """Which model a circuit was found on, and where its neurons sit.

    `file` names the GGUF file (name, size, hash of its header and tensor index) when the
    model was loaded from one; None for transformers checkpoints. `weights` is the
    fingerprint of the weights (`neurosteer.model.fingerprint`); None in files of version 2 and
    older. `neuron_blocks` is, for a mixture-of-experts model, each layer's block table
    (`neurosteer.model.moe_layout.MoeLayout.table`: [kind, start, n_experts, width] per block)
    saying which expert a flat neuron index belongs to; None for dense models (and files of
    version 3 and older). `d_mlp` is then the widest layer.
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
    weights: WeightsFingerprint | None = None
    neuron_blocks: list[list[list[int | str]]] | None = None

    def to_dict(self) -> dict[str, Any]:
        """`dataclasses.asdict`, without `neuron_blocks` for a dense model (so dense records
        stay as they were)."""
        data = asdict(self)
        if data["neuron_blocks"] is None:
            del data["neuron_blocks"]
        return data

    def valid_mask(self) -> torch.Tensor:
        """[n_layers, d_mlp] bool: the indices that are neurons (all of them for a dense model;
        for an MoE model, layers narrower than `d_mlp` end early)."""
        if self.neuron_blocks is None:
            return torch.ones(self.n_layers, self.d_mlp, dtype=torch.bool)
        widths = torch.tensor(
            [sum(int(b[2]) * int(b[3]) for b in layer) for layer in self.neuron_blocks]
        )
        return torch.arange(self.d_mlp)[None, :] < widths[:, None]

    def neuron_name(self, layer: int, neuron: int) -> str:
        """ "301" for a dense model; "E5 n301" (routed expert 5), "S n12" (shared experts) or
        "n7" (a dense layer) for an MoE model."""
        if self.neuron_blocks is None:
            return str(neuron)
        return describe_neuron(self.neuron_blocks, layer, neuron)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelInfo:
        """The inverse of `dataclasses.asdict` (circuits written before `file` or `weights`
        existed load too)."""
        fields = dict(data)
        if fields.get("file") is not None:
            fields["file"] = FileIdentity(**fields["file"])
        fields["weights"] = WeightsFingerprint.from_dict(fields.get("weights"))
        return cls(**fields)


@dataclass(frozen=True)
class PromptInfo:
    count: int
    sha256: str


@dataclass(frozen=True)
class CircuitRecipe:
    """What a circuit records about how it was made: how the neurons were chosen (`method` is
    "cna", "relp" or "random") and how prompts were rendered (`chat_template`, `system`,
    `template_vars`). Named `Settings` before (still importable, deprecated), which read like
    the CLI's `*Settings`, a command's options."""

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
    system: str | None = None
    """The system turn the prompts were rendered with (None: the template's default; circuits
    written before this field existed read as None)."""
    attribution: str | None = None
    """For method "relp": how the scores were computed (positions, propagation rules, metric);
    None for other methods (and circuits written before this field existed)."""
    multiplier: float | None = None
    """The multiplier m to steer and bake with when none is given (None: the default 0, which
    ablates). Set by `neurosteer optimize --export`; files of version 1 read as None."""
    template_vars: dict[str, Any] | None = None
    """Chat-template variables the prompts were rendered with (`--template-var`), including
    the date a template that reads the clock was given (`neurosteer.prompts.template_vars`); None:
    none (and circuits written before this field existed)."""
    score: str = "diff"
    """What the neurons were ranked by: "diff" (δ, the difference of means) or "standardized"
    (δ over the pooled standard deviation); see `neurosteer.methods.selection.neuron_scores`."""


@dataclass(frozen=True)
class SearchProvenance:
    """Where a circuit exported from a `neurosteer optimize` study came from.

    Attributes:
        study: the run folder, as given to the export.
        trial: the study's trial number the circuit was rebuilt from.
        rule: how that trial was chosen (the rule and its target, or "--trial N").
        refusal, degenerate: shares of the held-out positive prompts' answers (in [0, 1]).
        kl: the KL objective in nats (`kl_measure`: "first_token" or "mean").
        judge: the refusal judge's name.
        max_new_tokens: answer length of the refusal objective.
        held_out: {"positive" | "negative": prompt count and SHA-256} of the held-out sets.
        n_trials: finished trials in the study at export time.
        model_name: the model the study ran on.
    """

    study: str
    trial: int
    rule: str
    refusal: float
    degenerate: float
    kl: float
    kl_measure: str
    judge: str
    max_new_tokens: int
    held_out: dict[str, PromptInfo]
    n_trials: int
    model_name: str


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
class Circuit(HookedIntervention):
    """A set of MLP neurons, in rank order, with the statistics and provenance behind it.

    An `Intervention` whose strength is the multiplier m of its neurons (default 0: ablate
    them; 1 leaves the model unchanged): `circuit.steer(model, m)`, `circuit.bake(model, m)`.

    Attributes:
        layers, neurons: [k] int64, the layer and neuron index of each selected neuron.
        delta: [k] float32, mean(positive) − mean(negative) at the last prompt token. For a
            RelP circuit (settings.method "relp"): the summed attribution of its metric.
        positive_mean, negative_mean: [k] float32, the two means (RelP: the summed
            attributions of the target's and of the contrast's logit; zeros without one).
        model, settings, prompts: provenance (prompt counts and SHA-256 per set); `model`
            also records where the neurons sit (`layers_path`, `site_path`).
        table: the full statistics, if discovery was asked to keep them.
        universal: [n_layers, d_mlp] bool, the neurons the universal filter marked (all False
            when it was off); None when unknown (files of older versions without a table).
        search: the `neurosteer optimize` study the circuit was exported from, if any.
        discovery: the discovery prompts and each neuron's activations on them (see
            `neurosteer.methods.discovery_record`); None when not kept (older files, RelP).
        environment: where it was found (`neurosteer.model.environment`); empty when unknown.

    The default strength is `settings.multiplier` when the circuit stores one (an exported
    search result), else 0.
    """

    layers: torch.Tensor
    neurons: torch.Tensor
    delta: torch.Tensor
    positive_mean: torch.Tensor
    negative_mean: torch.Tensor
    model: ModelInfo
    settings: CircuitRecipe
    prompts: dict[str, PromptInfo] = field(default_factory=dict)
    library_version: str = ""
    table: DeltaTable | None = None
    universal: torch.Tensor | None = None
    search: SearchProvenance | None = None
    discovery: DiscoveryRecord | None = None
    environment: dict[str, Any] = field(default_factory=dict)
    identity_strength: ClassVar[float] = 1.0

    @property
    def default_strength(self) -> float:  # type: ignore[override]
        """The multiplier used when none is given: the stored one, else 0 (ablate)."""
        stored = self.settings.multiplier
        return 0.0 if stored is None else float(stored)

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

    def universal_mask(self) -> torch.Tensor | None:
        """[n_layers, d_mlp] bool of the universal neurons, or None if not recorded."""
        if self.universal is not None:
            return self.universal
        return self.table.universal if self.table is not None else None

    def installer(self, model: nn.Module, layout: ModelLayout | None) -> Installer:
        """Hooks scaling this circuit's neurons by the multiplier m, at the sites it records
        (`layout_on`); `steer` (from `HookedIntervention`) applies them.

        Raises:
            CircuitMismatchError: the circuit does not fit `model` (`CircuitLayoutError` when
                its paths do not resolve or `layout` uses others).
        """
        resolved = self.layout_on(model, layout)
        by_layer = self.by_layer()
        if resolved.moe is not None:
            return moe_installer(model, resolved, by_layer)
        sites = resolved.site_modules(model)

        def install(hooks: HookSet, state: EditState) -> None:
            add_neuron_scalers(hooks, sites, by_layer, state)

        return install

    @renamed_keywords(OLD_STRENGTH)
    def bake(
        self, model: nn.Module, strength: float | None = None, *, layout: ModelLayout | None = None
    ) -> BakeHandle:
        """Scale this circuit's neurons by `strength` (default 0) in the weights, in place:
        `neurosteer.bake(model, self, strength)`, whose docstring gives the details."""
        return bake_circuits(model, [self], strength, layout=layout)

    def candidates(self) -> torch.Tensor:
        """[n_layers, d_mlp] bool: the neurons this circuit was selected from (its candidate
        layers without the universal neurons, where those are recorded)."""
        info = self.model
        mask = candidate_mask(
            info.n_layers, info.d_mlp, self.settings.skip_layers, self.universal_mask()
        )
        return mask & info.valid_mask()

    def layout_on(self, model: nn.Module, layout: ModelLayout | None = None) -> ModelLayout:
        """The layout that puts this circuit's neurons where they were found, on `model`.

        Without `layout`, the decoder layers and the neuron site are resolved at the paths the
        circuit recorded (`self.model.layers_path`, `self.model.site_path`), not at the
        defaults, so a circuit found with `--layers-path`/`--site` is applied where it was
        found. A given `layout` must use those same paths.

        Raises:
            CircuitLayoutError: the recorded paths do not resolve on `model`, or `layout` uses
                other paths (it is both a `CircuitMismatchError` and an `InputError`).
            CircuitMismatchError: the circuit does not fit the model (see `check_fits`).

        Example:
            >>> layout = circuit.layout_on(model)
            >>> layout.site_path
            'mlp.down_proj'
        """
        if layout is None:
            try:
                layout = resolve_layout(
                    model, layers_path=self.model.layers_path, site_path=self.model.site_path
                )
            except UnsupportedModelError as err:
                raise self._unresolved(model, err) from None
        self.check_fits(layout)
        self.refuse_baked(baked_on(model), "this model", about=model)
        self._check_weights(model)
        return layout

    def refuse_baked(
        self, record: dict[str, Any] | None, where: str, *, about: object = None, warn: bool = True
    ) -> None:
        """Refuse a checkpoint that already carries this circuit in its weights; warn when it
        carries another one.

        Args:
            record: what the checkpoint says was baked into it (`neurosteer.model.fingerprint.
                baked_record`, `baked_on`); None for a checkpoint that was not baked.
            where: how to name the checkpoint in the message ("this model", a path).
            about: what the warning is said once for (default: `where`).
            warn: False: only refuse (a check made again once the model is loaded warns).

        Raises:
            CircuitMismatchError: this circuit's neurons are among those baked in.
        """
        if record is None:
            return
        baked = _baked_neurons(record)
        mine = set(zip(self.layers.tolist(), self.neurons.tolist(), strict=True))
        if mine and mine <= baked:
            raise CircuitMismatchError(
                f"{where} already has this circuit baked into its weights (multiplier "
                f"{record.get('multiplier', record.get('strength'))}); applying it again would "
                "scale its neurons twice: use the model it was baked from, or this one as it is"
            )
        if warn:
            shared = len(mine & baked)
            what = f"{shared} of this circuit's neurons" if shared else "another circuit"
            _warn_once(
                where if about is None else about,
                f"{where} already has {what} baked into its weights; the result scales "
                f"{'them twice' if shared else 'both'}",
            )

    def _check_weights(self, model: nn.Module) -> None:
        """Warn (once per model) when the model's weights differ from those this circuit was
        found on, by `neurosteer.model.fingerprint.same_weights` (the shapes already fit)."""
        if self.model.weights is None or same_weights(self.model.weights, model) is not False:
            return
        _warn_once(
            model,
            f"this circuit was found on other weights of the same shape ({self.model.name_or_path}"
            f", weights {self.model.weights.short()}) than this model's; its neurons may mean "
            "something else here (a quantized or float16 copy also counts as other weights): "
            "discover a circuit on this model",
        )

    def _unresolved(self, model: nn.Module, err: UnsupportedModelError) -> NeurosteerError:
        """The error for recorded paths that do not resolve: a shape or family mismatch if
        the model's own layout shows one (the clearer reason), else the paths themselves."""
        try:
            own = resolve_layout(model)
        except UnsupportedModelError:
            own = None
        if own is not None:
            try:
                self._check_shape(own)
            except CircuitMismatchError as mismatch:
                return mismatch
        config = getattr(model, "config", None)
        model_type = getattr(config, "model_type", None) or type(model).__name__
        reason = str(err).split(";")[0]
        return CircuitLayoutError(
            f"this circuit's neurons sit at '{self._where()}' (found on "
            f"{self.model.name_or_path or self.model.architecture}), which does not resolve on "
            f"this {model_type} model ({reason}); apply it to the model it was found on, or "
            "discover a circuit on this one"
        )

    def _where(self) -> str:
        return f"{self.model.layers_path}.<layer>.{self.model.site_path}"

    def check_fits(self, layout: ModelLayout) -> None:
        """Raise `CircuitMismatchError` unless this circuit's indices exist in the model at
        the layer and site paths it was found at (`CircuitLayoutError` if the paths differ)."""
        self._check_shape(layout)
        if (layout.layers_path, layout.site_path) != (self.model.layers_path, self.model.site_path):
            raise CircuitLayoutError(
                f"this circuit's neurons sit at '{self._where()}' but the layout given puts them "
                f"at '{layout.layers_path}.<layer>.{layout.site_path}'; leave the layout out (or "
                "--layers-path/--site) to use the circuit's own paths"
            )

    def _check_indices(self, layout: ModelLayout) -> None:
        """Raise CircuitMismatchError naming the first neuron past its layer's width."""
        if int(self.layers.max()) >= layout.n_layers:
            raise CircuitMismatchError(
                f"this circuit holds layer {int(self.layers.max())} but the model has "
                f"{layout.n_layers} layers; the circuit file is damaged or from another model: "
                "discover it again on this model"
            )
        widths = layout.moe.widths if layout.moe is not None else (layout.d_mlp,) * layout.n_layers
        past = (self.neurons >= torch.tensor(widths)[self.layers]).nonzero()
        if len(past):
            i = int(past[0])
            layer, neuron = int(self.layers[i]), int(self.neurons[i])
            blocks = layout.moe.table()[layer] if layout.moe is not None else None
            raise CircuitMismatchError(index_outside_message(layer, neuron, widths[layer], blocks))

    def _check_shape(self, layout: ModelLayout) -> None:
        if (layout.n_layers, layout.d_mlp) != (self.model.n_layers, self.model.d_mlp):
            raise CircuitMismatchError(
                f"this circuit was found on {self.model.name_or_path} ({self.model.model_type}, "
                f"{self.model.n_layers} layers x {self.model.d_mlp} neurons) and does not fit "
                f"this model ({layout.model_type}, {layout.n_layers} layers x {layout.d_mlp} "
                "neurons); discover a circuit on this model"
            )
        if len(self):
            self._check_indices(layout)
        if layout.model_type != self.model.model_type:
            raise CircuitMismatchError(
                f"this circuit was found on a {self.model.model_type} model "
                f"({self.model.name_or_path}) and this is a {layout.model_type} model; neuron "
                "indices do not carry over between families, so discover a circuit on this model"
            )

    def scores(self, score: str | None = None) -> torch.Tensor:
        """[n_layers, d_mlp] float32 neuron scores from the kept table (`score` None: the one
        this circuit was selected by, `settings.score`).

        Raises:
            InputError: no table kept, or an unknown score.
        """
        if self.table is None:
            raise InputError(
                "this circuit has no full table; discover it again with keep_table=True"
            )
        pos, neg = (self.prompts.get(name) for name in ("positive", "negative"))
        return neuron_scores(
            self.table.positive_mean,
            self.table.negative_mean,
            self.table.positive_var,
            self.table.negative_var,
            kind=self.settings.score if score is None else score,
            counts=None if pos is None or neg is None else (pos.count, neg.count),
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
        chosen = select_top_k(self.scores(), self.candidates(), k, positive_only=pos_only)
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
        """A control circuit of exactly this circuit's size, drawn from neurons outside it.

        By default each layer gets as many random neurons as this circuit has there; with
        `per_layer=False` they are drawn uniformly from the candidate layers (those not in
        `settings.skip_layers`). Neither draw takes this circuit's neurons or the universal
        neurons (`universal_mask()`; a warning is logged when it was not recorded).

        Raises:
            InputError: a layer (per_layer=True) or the candidate layers (per_layer=False)
                hold fewer free neurons than the control needs; no smaller control is made.
        """
        gen = torch.Generator().manual_seed(seed)
        d_mlp = self.model.d_mlp
        universal = self.universal_mask()
        free = self._free_neurons(universal)
        if per_layer:
            layers, neurons = self._draw_per_layer(free, gen)
        else:
            allowed = self.candidates() & free
            pool = allowed.flatten().nonzero().flatten()
            if pool.numel() < len(self):
                raise InputError(
                    f"the candidate layers hold only {pool.numel()} neurons outside this circuit "
                    f"and the universal set, too few for a random control of {len(self)}; "
                    "skip fewer layers or use a smaller circuit"
                )
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
            settings=replace(self.settings, method="random", seed=seed, attribution=None),
            table=None,
            universal=universal,
            discovery=self._record_for(layers.long(), neurons.long()),
        )

    def _free_neurons(self, universal: torch.Tensor | None) -> torch.Tensor:
        """[n_layers, d_mlp] bool: neurons outside this circuit and outside `universal` (a
        warning when the circuit filtered universal neurons but does not record them)."""
        free = self.model.valid_mask()  # an MoE layer narrower than d_mlp ends early
        free[self.layers, self.neurons] = False
        if universal is not None:
            free &= ~universal.to(torch.bool)
        elif self.settings.universal_filter:
            logger.warning(
                "this circuit does not record its universal neurons (an older file without a "
                "table); the random control may include some"
            )
        return free

    def _draw_per_layer(
        self, free: torch.Tensor, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(layers, neurons) [len(self)] each: in each layer as many `free` neurons, drawn by
        `gen`, as the circuit has there.

        Raises:
            InputError: a layer holds fewer free neurons than the circuit has there.
        """
        picks = []
        for layer, n in self.neurons_per_layer().items():
            pool = free[layer].nonzero().flatten()
            if pool.numel() < n:
                raise InputError(
                    f"layer {layer} has {n} circuit neurons but only {pool.numel()} others "
                    "that are not universal, too few for a per-layer random control of the "
                    "same size; use per_layer=False (or a smaller circuit)"
                )
            picks.append((layer, pool[torch.randperm(pool.numel(), generator=gen)[:n]]))
        layers = torch.cat([torch.full((len(idx),), layer) for layer, idx in picks])
        return layers, torch.cat([idx for _, idx in picks])

    def _record_for(
        self, layers: torch.Tensor, neurons: torch.Tensor, standardized: torch.Tensor | None = None
    ) -> DiscoveryRecord | None:
        """This circuit's discovery record for the neurons ([n] layers and neurons) of a
        circuit made from it: their rows where it kept them all, else the prompts alone."""
        if self.discovery is None:
            return None
        pairs = list(zip(layers.tolist(), neurons.tolist(), strict=True))
        own = list(zip(self.layers.tolist(), self.neurons.tolist(), strict=True))
        return self.discovery.restricted(own, pairs, standardized)

    def save(self, path: str | Path, *, force: bool = False) -> Path:
        """Write the circuit folder atomically; refuse to replace one unless `force`."""
        tensors = {
            "layers": self.layers.long().contiguous(),
            "neurons": self.neurons.long().contiguous(),
            "delta": self.delta.float().contiguous(),
            "positive_mean": self.positive_mean.float().contiguous(),
            "negative_mean": self.negative_mean.float().contiguous(),
        }
        if self.universal is not None:
            layers, neurons = self.universal.to(torch.bool).nonzero(as_tuple=True)
            tensors[_UNIVERSAL_LAYERS] = layers.long().contiguous()
            tensors[_UNIVERSAL_NEURONS] = neurons.long().contiguous()
        if self.table is not None:
            for key in _TABLE_KEYS:
                tensors[f"table.{key}"] = getattr(self.table, key).contiguous()
        meta = {
            "format": "neurosteer.circuit",
            "format_version": FORMAT_VERSION,
            "library_version": self.library_version,
            "model": self.model.to_dict(),
            "settings": asdict(self.settings),
            "prompts": {name: asdict(info) for name, info in sorted(self.prompts.items())},
            "n_neurons": len(self),
            "neurons_per_layer": {str(k): v for k, v in self.neurons_per_layer().items()},
            "has_table": self.table is not None,
        }
        if self.search is not None:
            meta["search"] = asdict(self.search)
        if self.discovery is not None:
            meta["discovery"], kept = self.discovery.to_files()
            tensors.update(kept)
        if self.environment:
            meta["environment"] = self.environment
        with atomic_directory(path, force=force) as staging:
            (staging / METADATA_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
            save_file(tensors, str(staging / TENSORS_FILE))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> Circuit:
        """Read a circuit folder written by `save`."""
        folder = Path(path)
        meta_file, tensor_file = folder / METADATA_FILE, folder / TENSORS_FILE
        if not folder.exists():
            raise CircuitFormatError(
                f"circuit '{folder}' does not exist; check the path, or write it first with "
                "`neurosteer discover ... -o FOLDER`"
            )
        if not meta_file.is_file() or not tensor_file.is_file():
            raise CircuitFormatError(
                f"'{folder}' is not a circuit folder (needs {METADATA_FILE} and {TENSORS_FILE})"
            )
        try:
            meta: dict[str, Any] = json.loads(meta_file.read_text(encoding="utf-8"))
            tensors = load_file(str(tensor_file))
        except (ValueError, OSError, RuntimeError, SafetensorError) as err:  # JSON, bytes, I/O
            raise CircuitFormatError(f"'{folder}' is corrupt: {err}") from None
        version = meta.get("format_version")
        if type(version) is not int or version not in READABLE_VERSIONS:
            raise CircuitFormatError(
                f"'{folder}' has circuit format version {version}; this neurosteer reads version "
                f"{FORMAT_VERSION} and older (upgrade neurosteer to read newer files)"
            )
        try:
            settings = dict(meta["settings"])
            settings["skip_layers"] = tuple(settings["skip_layers"])
            table = None
            if meta.get("has_table"):
                table = DeltaTable(**{key: tensors[f"table.{key}"] for key in _TABLE_KEYS})
            model = ModelInfo.from_dict(meta["model"])
            universal = None
            if _UNIVERSAL_LAYERS in tensors:  # older files do not record them
                universal = torch.zeros(model.n_layers, model.d_mlp, dtype=torch.bool)
                universal[tensors[_UNIVERSAL_LAYERS], tensors[_UNIVERSAL_NEURONS]] = True
            return cls(
                layers=tensors["layers"],
                neurons=tensors["neurons"],
                delta=tensors["delta"],
                positive_mean=tensors["positive_mean"],
                negative_mean=tensors["negative_mean"],
                model=model,
                settings=CircuitRecipe(**settings),
                prompts={k: PromptInfo(**v) for k, v in meta["prompts"].items()},
                library_version=str(meta.get("library_version", "")),
                table=table,
                universal=universal,
                search=_search(meta.get("search")),
                discovery=record_from_files(
                    meta.get("discovery"), tensors, int(tensors["layers"].numel()), str(folder)
                ),
                environment=dict(meta.get("environment") or {}),
            )
        except (KeyError, TypeError, IndexError) as err:
            raise CircuitFormatError(f"'{folder}' is missing a field: {err}") from None


def baked_neurons(record: dict[str, Any]) -> set[tuple[int, int]]:
    """{(layer, neuron)} of every circuit a baked checkpoint's record names
    (`neurosteer.model.fingerprint.baked_record`)."""
    return _baked_neurons(record)


def _baked_neurons(record: dict[str, Any]) -> set[tuple[int, int]]:
    """{(layer, neuron)} of every circuit a baked checkpoint's record names."""
    circuits = record.get("circuits") or [record.get("circuit") or {}]
    found: set[tuple[int, int]] = set()
    for circuit in circuits:
        neurons = circuit.get("neurons") if isinstance(circuit, dict) else None
        for layer, indices in (neurons or {}).items():
            found.update((int(layer), int(n)) for n in indices)
    return found


_WARNED: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()
_WARNED_PATHS: set[tuple[str, str]] = set()


def _warn_once(about: object, message: str) -> None:
    """Log `message` as a warning the first time it is said about `about` (a model, or a
    path given as text), so a sweep steering one model many times says it once."""
    if isinstance(about, str):
        if (about, message) in _WARNED_PATHS:
            return
        _WARNED_PATHS.add((about, message))
    else:
        said = _WARNED.setdefault(about, set())
        if message in said:
            return
        said.add(message)
    logger.warning(message)


def _search(data: dict[str, Any] | None) -> SearchProvenance | None:
    """The "search" section of circuit.json (absent before version 2, and when not exported)."""
    if data is None:
        return None
    held_out = {name: PromptInfo(**info) for name, info in data["held_out"].items()}
    return SearchProvenance(**{**data, "held_out": held_out})


def from_table(
    base: Circuit, layers: torch.Tensor, neurons: torch.Tensor, settings: CircuitRecipe
) -> Circuit:
    """A circuit of the given neurons with scores read from `base.table`."""
    assert base.table is not None  # callers check; internal invariant
    pos = base.table.positive_mean[layers, neurons]
    neg = base.table.negative_mean[layers, neurons]
    record = None
    if base.discovery is not None:
        standardized = base.scores("standardized")[layers, neurons]
        record = base._record_for(layers, neurons, standardized)
    return replace(
        base,
        layers=layers,
        neurons=neurons,
        delta=pos - neg,
        positive_mean=pos,
        negative_mean=neg,
        settings=settings,
        discovery=record,
    )


def as_circuits(target: object) -> list[Circuit]:
    """The circuits `target` is: a circuit, or a list or tuple of them.

    Raises:
        InputError: an empty sequence, or anything other than circuits.
    """
    if isinstance(target, Circuit):
        return [target]
    if isinstance(target, (str, bytes)) or not isinstance(target, Sequence):
        raise InputError(
            "expected an intervention (a Circuit, CAA, MLPOutputSteering, DirectionAblation) "
            f"or a list of circuits, got {type(target).__name__}"
        )
    circuits = list(target)
    if not circuits:
        raise InputError("steering needs at least one circuit; the list is empty")
    strays = sorted({type(c).__name__ for c in circuits if not isinstance(c, Circuit)})
    if strays:
        raise InputError(
            f"a list to steer with must hold only circuits, not {', '.join(strays)}; apply "
            "other interventions one by one (their handles nest)"
        )
    return circuits


def bake_circuits(
    model: nn.Module,
    circuits: Sequence[Circuit],
    strength: float | None = None,
    *,
    layout: ModelLayout | None = None,
) -> BakeHandle:
    """`bake` for one or several circuits (what `Circuit.bake` runs)."""
    if not circuits:
        raise InputError("bake() needs at least one circuit")
    m = check_strength(strength, circuits[0].default_strength)
    plans = []
    edited: list[nn.Module] = []
    for circuit in circuits:
        c_layout = circuit.layout_on(model, layout)
        sites, by_layer = c_layout.site_modules(model), circuit.by_layer()
        plans.append((c_layout, sites, by_layer))
        if c_layout.moe is not None:
            edited += edited_modules(model, c_layout, by_layer)
        else:
            edited += [sites[layer] for layer in by_layer]
    require_editable(model, edited, "bake the circuit")
    handle = BakeHandle()
    before = baked_on(model)
    handle.on_undo(lambda: mark_baked(model, before))
    try:
        with torch.no_grad():
            for c_layout, sites, by_layer in plans:
                if c_layout.moe is not None:
                    bake_moe(handle, model, c_layout, by_layer, m)
                    continue
                axis = 1 if c_layout.orientation == "columns" else 0
                for layer, neurons in by_layer.items():
                    weight = sites[layer].weight
                    assert isinstance(weight, torch.Tensor)
                    index = neurons.to(weight.device)
                    original = handle.keep_slice(weight, axis, index)
                    weight.index_copy_(axis, index, scale_values(original, m))
    except BaseException:
        handle.undo()
        raise
    # Steering this model with one of these circuits now would apply it twice (see
    # `Circuit.layout_on`); the mark goes with `handle.undo()`.
    mark_baked(model, circuits_provenance(circuits, m, one=False))
    return handle


def circuits_provenance(
    circuits: Sequence[Circuit], strength: float, *, one: bool
) -> dict[str, Any]:
    """What a bake of `circuits` at `strength` records (`neurosteer.methods.baking.provenance`):
    each
    circuit in full, under "circuit" when `one` (a single circuit, not a list) else
    "circuits", and the strength also under "multiplier" (its meaning for circuits)."""
    records = [_circuit_record(c) for c in circuits]
    record: dict[str, Any] = {"library_version": __version__, "strength": strength}
    record["multiplier"] = strength
    return record | ({"circuit": records[0]} if one else {"circuits": records})


def _circuit_record(circuit: Circuit) -> dict[str, Any]:
    return {
        "model": circuit.model.to_dict(),
        "settings": asdict(circuit.settings),
        "prompts": {k: asdict(v) for k, v in sorted(circuit.prompts.items())},
        "neurons": {str(layer): idx.tolist() for layer, idx in circuit.by_layer().items()},
    }


def __getattr__(name: str) -> Any:
    """The old name `Settings` (now `CircuitRecipe`), kept one release with a DeprecationWarning.

    Raises:
        AttributeError: any other name the module does not have.
    """
    if name == "Settings":
        deprecated_name(f"{__name__}.Settings", "use 'CircuitRecipe'")
        return CircuitRecipe
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
