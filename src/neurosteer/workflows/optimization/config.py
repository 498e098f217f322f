"""Settings: what one `neurosteer optimize` run measures and how.

`OptimizeConfig.identity()` is what must match for a run folder to be resumed: everything that
changes a trial's numbers or what the trials mean (the prompt split, the judge, the answer
length, the KL measure, the search space, the sampler). The trial budget, the batch size and the
baseline comparison may change between runs of one folder.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from neurosteer.errors import InputError
from neurosteer.prompts.rendering import Rendering
from neurosteer.prompts.template_vars import check_template_vars
from neurosteer.workflows.optimization.space import SearchSpace

KL_MEASURES = ("first_token", "mean")
SAMPLERS = ("tpe", "nsga2")

#: Settings that do not change any trial's numbers.
_NOT_IDENTITY = frozenset(
    {"trials", "batch_size", "baselines", "baseline_strengths", "baseline_layer"}
)


@dataclass(frozen=True)
class OptimizeConfig:
    """Settings of a search (each checked in `__post_init__`; bad values raise `InputError`).

    Attributes:
        trials: finished trials the study should hold (a resumed run adds only the rest).
        held_out_positive, held_out_negative: prompts split off each set for the objectives
            (never used for discovery); at least 2 of each set must stay for discovery.
        split_seed: seed of that split.
        judge: the refusal judge's name (`workflows.judges.get_judge`: "sweep", "patterns",
            "organism", a phrase-list file, "model:PATH").
        max_new_tokens: answer length of the refusal objective (greedy; stops at end of turn).
        batch_size: prompts per forward pass / generation batch.
        kl: "first_token" (KL at the first answer token, one forward pass) or "mean" (the mean
            over a `kl_tokens`-token unsteered continuation).
        kl_tokens: continuation length for kl="mean".
        sampler: "tpe" (multi-objective TPE) or "nsga2" (NSGA-II).
        seed: the sampler's seed.
        startup_trials: random trials before TPE models the results (TPE only).
        prune: skip the answers of a trial whose first-token refusal probability stays at or
            above `prune_ratio` of the unchanged model's (recorded as pruned, not finished).
        prune_ratio: see `prune`, in (0, 1].
        space: the search space.
        universal_filter: drop universal neurons from every trial's candidates.
        chat_template, system: how prompts are rendered (see `discover`).
        template_vars: chat-template variables for every rendering; `optimize` adds the date
            a template that reads the clock gets, and a resumed search reuses the stored one.
        baselines: also measure CAA and directional ablation on the held-out prompts (once,
            cached in the run folder), for the comparison plot.
        baseline_strengths: the baselines' strengths s (CAA α = −s; ablation removes a share s).
        baseline_layer: the baselines' layer (None: `ContrastVectors.default_layer()`).
    """

    trials: int = 40
    held_out_positive: int = 16
    held_out_negative: int = 16
    split_seed: int = 0
    judge: str = "sweep"
    max_new_tokens: int = 24
    batch_size: int = 16
    kl: str = "first_token"
    kl_tokens: int = 24
    sampler: str = "tpe"
    seed: int = 0
    startup_trials: int = 10
    prune: bool = False
    prune_ratio: float = 0.9
    space: SearchSpace = field(default_factory=SearchSpace)
    universal_filter: bool = True
    chat_template: bool | None = None
    system: str | None = None
    template_vars: Mapping[str, Any] | None = None
    baselines: bool = True
    baseline_strengths: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    baseline_layer: int | None = None

    @property
    def rendering(self) -> Rendering:
        """How every prompt of the run is rendered (`chat_template`, `system`, `template_vars`)."""
        return Rendering(
            chat_template=self.chat_template, system=self.system, template_vars=self.template_vars
        )

    def __post_init__(self) -> None:
        object.__setattr__(self, "template_vars", check_template_vars(self.template_vars))
        _at_least(1, trials=self.trials, max_new_tokens=self.max_new_tokens)
        _at_least(1, batch_size=self.batch_size, kl_tokens=self.kl_tokens)
        _at_least(1, held_out_positive=self.held_out_positive)
        _at_least(1, held_out_negative=self.held_out_negative)
        _at_least(0, split_seed=self.split_seed, seed=self.seed)
        _at_least(0, startup_trials=self.startup_trials)
        if self.baseline_layer is not None:
            _at_least(0, baseline_layer=self.baseline_layer)
        if self.kl not in KL_MEASURES:
            raise InputError(f"kl must be one of {', '.join(KL_MEASURES)}, got {self.kl!r}")
        if self.sampler not in SAMPLERS:
            raise InputError(f"sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        if not 0.0 < self.prune_ratio <= 1.0:
            raise InputError(f"prune_ratio must be in (0, 1], got {self.prune_ratio}")
        if not self.judge:
            raise InputError("judge must name a judge (e.g. 'sweep')")
        strengths = tuple(float(s) for s in self.baseline_strengths)
        if not all(math.isfinite(s) for s in strengths):
            raise InputError(f"baseline strengths must be finite, got {list(strengths)}")
        object.__setattr__(self, "baseline_strengths", strengths)
        if not isinstance(self.space, SearchSpace):
            raise InputError("space must be a SearchSpace")

    @property
    def kl_max_new_tokens(self) -> int:
        """The continuation the KL reference holds: 1 for the first-token KL."""
        return 1 if self.kl == "first_token" else self.kl_tokens

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready settings."""
        data = asdict(self)
        data["space"] = self.space.to_dict()
        data["baseline_strengths"] = list(self.baseline_strengths)
        return data

    def identity(self) -> dict[str, Any]:
        """The settings a resumed run must share (see the module docstring)."""
        data = {k: v for k, v in self.to_dict().items() if k not in _NOT_IDENTITY}
        if self.kl == "first_token":
            data.pop("kl_tokens")  # not used
        if not self.prune:
            data.pop("prune_ratio")
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OptimizeConfig:
        known = set(cls.__dataclass_fields__)
        kept = {k: v for k, v in data.items() if k in known}
        if "space" in kept:
            kept["space"] = SearchSpace.from_dict(kept["space"])
        if "baseline_strengths" in kept:
            kept["baseline_strengths"] = tuple(kept["baseline_strengths"])
        return cls(**kept)


def _at_least(minimum: int, **values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise InputError(f"{name} must be a whole number >= {minimum}, got {value!r}")
