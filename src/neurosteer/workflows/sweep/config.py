"""Settings: what one strength sweep measures and how strength maps to a knob.

A sweep runs every method at every strength s on the same evaluation sets. s = 0 is the
unchanged model for every method and s = 1 is each method's "full" intervention (method.md §4):

    cna         m = 1 − s on the circuit's neurons (s = 1 ablates them)
    random      m = 1 − s on a random circuit of the same size in the same layers, one per seed
    caa         α = −s: the residual difference (positive − negative) at one layer is subtracted
    mlp_output  α = −s on the reference code's all-layer MLP-output vectors
    direction   a share s of the difference-of-means direction is projected out (s = 1 removes it)

`SweepConfig.identity()` is what must match for a run folder to be resumed; the grid (methods,
strengths, seeds) and resource settings (batch size) may change between runs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from neurosteer.errors import InputError
from neurosteer.prompts.rendering import Rendering
from neurosteer.prompts.template_vars import check_template_vars

METHODS = ("cna", "caa", "mlp_output", "direction", "random")
"""Methods a sweep knows, in the order reports list them."""

BASELINE = "baseline"
"""The method name of the one unsteered point (s = 0), shared by every method."""

#: Fields that do not change any measured number, so a run may be resumed with other values.
_NOT_IDENTITY = frozenset({"methods", "strengths", "random_seeds", "batch_size"})


@dataclass(frozen=True)
class SweepConfig:
    """Settings of a strength sweep.

    Attributes:
        methods: which of `METHODS` to run.
        strengths: the strengths s (0 is the shared unsteered point; negative s amplifies).
        max_new_tokens: new tokens per answer (greedy; stops at end-of-sequence).
        batch_size: prompts per generation / scoring pass.
        judge: refusal judge name for `workflows.judges.get_judge` ("sweep", "patterns", "organism",
            a JSON file..).
        chat_template: True/False forces the chat template; None uses it when there is one.
        system: a system turn rendered before every prompt the steered model sees (discovery,
            baselines, answers, KL); None keeps the template's default.
        template_vars: chat-template variables for every rendering (e.g. enable_thinking);
            `run_sweep` adds the date a template that reads the clock gets, and a resumed
            run reuses the stored one (see `neurosteer.prompts.template_vars`).
        eval_limit: use only the first `eval_limit` harmful and harmless evaluation prompts.
        kl_limit: KL on the first `kl_limit` harmless prompts (None: all of them).
        kl_max_new_tokens: length of the unsteered continuation the KL is measured on.
        mmlu: folder or file of MMLU data (None: no MMLU).
        mmlu_shots, mmlu_limit: few-shot examples and questions per subject for MMLU.
        top_k, fraction: circuit size (top_k wins; default 0.1% of all MLP neurons).
        skip_layers: layers that are not circuit candidates.
        universal_filter: apply the universal-neuron filter when discovering the circuit.
        caa_layer: the layer of the CAA vector and of the ablated direction (None: each
            chosen on its own by a scan, see `layer_scan_prompts`).
        layer_scan_prompts: when `caa_layer` is None, CAA's layer and the direction's layer are
            each chosen by a small scan (`neurosteer.workflows.sweep.layers`): the method at full
            strength
            at up to 8 candidate layers on this many positive (fitting) prompts; the layer with
            the most well-formed compliance wins (ties: fewer degenerate answers, then the
            earlier layer), so a layer that breaks the model never wins. 0 uses the cheap
            heuristic `ContrastVectors.default_layer()` instead. A resumed run reuses the
            layers stored in its folder and scans nothing.
        caa_positions: "all" or "prompt" for CAA.
        caa_normalize: rescale the CAA vector to the layer's mean residual norm.
        random_seeds: one random control circuit per seed (each its own points).
    """

    methods: tuple[str, ...] = ("cna", "caa", "direction", "random")
    strengths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    max_new_tokens: int = 150
    batch_size: int = 8
    judge: str = "sweep"
    chat_template: bool | None = None
    system: str | None = None
    template_vars: Mapping[str, Any] | None = None
    eval_limit: int | None = None
    kl_limit: int | None = 32
    kl_max_new_tokens: int = 32
    mmlu: str | None = None
    mmlu_shots: int = 5
    mmlu_limit: int | None = None
    top_k: int | None = None
    fraction: float = 0.001
    skip_layers: tuple[int, ...] = (0, 1)
    universal_filter: bool = True
    caa_layer: int | None = None
    layer_scan_prompts: int = 16
    caa_positions: str = "all"
    caa_normalize: bool = False
    random_seeds: tuple[int, ...] = field(default=(0, 1, 2))

    @property
    def rendering(self) -> Rendering:
        """How every prompt of the run is rendered (`chat_template`, `system`, `template_vars`)."""
        return Rendering(
            chat_template=self.chat_template, system=self.system, template_vars=self.template_vars
        )

    def __post_init__(self) -> None:
        methods = tuple(self.methods)
        if not methods:
            raise InputError(f"give at least one method; known: {', '.join(METHODS)}")
        unknown = [m for m in methods if m not in METHODS]
        if unknown:
            raise InputError(f"unknown methods {unknown}; known: {', '.join(METHODS)}")
        if len(set(methods)) != len(methods):
            raise InputError(f"methods repeat: {list(methods)}")
        strengths = tuple(float(s) for s in self.strengths)
        if not strengths:
            raise InputError("give at least one strength, e.g. 0,0.5,1")
        if not all(math.isfinite(s) for s in strengths):
            raise InputError(f"strengths must be finite numbers, got {list(self.strengths)}")
        if len(set(strengths)) != len(strengths):
            raise InputError(f"strengths repeat: {list(strengths)}")
        object.__setattr__(self, "template_vars", check_template_vars(self.template_vars))
        object.__setattr__(self, "methods", methods)
        object.__setattr__(self, "strengths", strengths)
        object.__setattr__(self, "skip_layers", tuple(int(i) for i in self.skip_layers))
        object.__setattr__(self, "random_seeds", tuple(int(i) for i in self.random_seeds))
        _at_least(1, max_new_tokens=self.max_new_tokens, batch_size=self.batch_size)
        _at_least(0, mmlu_shots=self.mmlu_shots, layer_scan_prompts=self.layer_scan_prompts)
        _at_least(1, kl_max_new_tokens=self.kl_max_new_tokens)
        for name in ("eval_limit", "kl_limit", "mmlu_limit", "top_k"):
            value = getattr(self, name)
            if value is not None:
                _at_least(1, **{name: value})
        if self.caa_layer is not None:
            _at_least(0, caa_layer=self.caa_layer)
        if not 0.0 < self.fraction <= 1.0:
            raise InputError(f"fraction must be in (0, 1], got {self.fraction}")
        if self.caa_positions not in ("all", "prompt"):
            raise InputError(f"caa_positions must be 'all' or 'prompt', got {self.caa_positions!r}")
        if not self.judge:
            raise InputError("judge must name a judge (e.g. 'sweep')")
        if "random" in methods and not self.random_seeds:
            raise InputError("the random method needs at least one seed")
        if len(set(self.random_seeds)) != len(self.random_seeds):
            raise InputError(f"random seeds repeat: {list(self.random_seeds)}")

    @property
    def steered_strengths(self) -> tuple[float, ...]:
        """The strengths other than 0 (s = 0 is the shared baseline point)."""
        return tuple(s for s in self.strengths if s != 0.0)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready settings."""
        data = asdict(self)
        for key, value in data.items():
            if isinstance(value, tuple):
                data[key] = list(value)
        return data

    def identity(self) -> dict[str, Any]:
        """The settings that change measured numbers (a resumed run must match them)."""
        return {k: v for k, v in self.to_dict().items() if k not in _NOT_IDENTITY}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SweepConfig:
        known = set(cls.__dataclass_fields__)
        kept: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known
        }
        return cls(**kept)


def knob(method: str, strength: float) -> tuple[str, float]:
    """(name, value) of the parameter a method is run at for strength s (see module docstring)."""
    if method in ("cna", "random"):
        return "m", 1.0 - strength
    if method in ("caa", "mlp_output"):
        return "alpha", -strength
    if method == "direction":
        return "removed_share", strength
    if method == BASELINE:
        return "none", 0.0
    raise InputError(f"unknown method {method!r}; known: {', '.join(METHODS)}")


STRENGTH_MAPPING = {
    "cna": "m = 1 − s on the circuit neurons (s = 1 ablates them)",
    "random": "m = 1 − s on a random circuit of the same size per layer (one per seed, averaged)",
    "caa": "α = −s along (positive − negative) at one residual layer (s = 1 subtracts the "
    "full last-token mean difference)",
    "mlp_output": "α = −s along each layer's MLP-output mean difference, every layer",
    "direction": "a share s of the difference-of-means direction removed from every residual "
    "writer (s = 1 removes it)",
    BASELINE: "s = 0: the unchanged model, computed once and shared by every method",
}
"""One line per method, for reports."""


def _at_least(minimum: int, **values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise InputError(f"{name} must be a whole number >= {minimum}, got {value!r}")
