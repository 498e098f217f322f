"""The search space: what one trial chooses, and the circuit it builds.

A trial picks five things; each is one Optuna parameter:

    k                  circuit size in neurons, log scale, `k_share` of all MLP neurons
                       (default 0.02% .. 5%); capped at the candidates there are
    multiplier         m, uniform in `multiplier` (default −2 .. 1): 1 is the unchanged model,
                       0 ablates, negative flips the neurons
    sign               "both" (rank by |score|, the paper's rule) or "positive" (only neurons
                       more active on the positive set, δ > 0)
    score              "diff" (δ, the difference of means) or "standardized" (δ over the pooled
                       standard deviation of the two sets; `selection.neuron_scores`)
    first_layer_share  the first candidate layer as a share of depth (default 0 .. 0.9):
                       layers floor(share · n_layers) and up are candidates

A trial never runs the model to find its neurons: `build_circuit` re-selects from the table of
means and variances recorded once for the whole search (`Circuit.table`), which gives both
scores. The universal neurons marked then stay excluded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch

from neurosteer.errors import InputError
from neurosteer.methods.circuit import Circuit, from_table
from neurosteer.methods.selection import SCORES, candidate_mask, select_top_k

SIGNS = ("both", "positive")
"""Sign rules: both signs of δ, or only δ > 0."""


@dataclass(frozen=True)
class SearchSpace:
    """The ranges a search draws from (see the module docstring for each).

    Attributes:
        k_share: (low, high) circuit size as a share of all MLP neurons, searched on a log
            scale; each bound gives at least one neuron.
        multiplier: (low, high) of m.
        signs: the sign rules to try ("both", "positive"); one value fixes it.
        scores: the neuron scores to try ("diff", "standardized"); one value fixes it.
        first_layer: (low, high) of the first candidate layer's share of depth, in [0, 1).
    """

    k_share: tuple[float, float] = (0.0002, 0.05)
    multiplier: tuple[float, float] = (-2.0, 1.0)
    signs: tuple[str, ...] = SIGNS
    scores: tuple[str, ...] = SCORES
    first_layer: tuple[float, float] = (0.0, 0.9)

    def __post_init__(self) -> None:
        for name in ("k_share", "multiplier", "first_layer", "signs", "scores"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        low, high = _pair(self.k_share, "k_share")
        if not 0.0 < low <= high <= 1.0:
            raise InputError(f"k_share must satisfy 0 < low <= high <= 1, got {self.k_share}")
        m_low, m_high = _pair(self.multiplier, "multiplier")
        if not m_low <= m_high:
            raise InputError(f"the multiplier range must be low <= high, got {self.multiplier}")
        f_low, f_high = _pair(self.first_layer, "first_layer")
        if not 0.0 <= f_low <= f_high < 1.0:
            raise InputError(
                f"first_layer must satisfy 0 <= low <= high < 1 (shares of depth), got "
                f"{self.first_layer}"
            )
        _choices(self.signs, SIGNS, "sign rules")
        _choices(self.scores, SCORES, "neuron scores")

    def k_bounds(self, n_neurons: int) -> tuple[int, int]:
        """(low, high) of k for a model with `n_neurons` MLP neurons in all."""
        low = max(1, round(self.k_share[0] * n_neurons))
        return low, max(low, round(self.k_share[1] * n_neurons))

    def to_dict(self) -> dict[str, Any]:
        return {
            "k_share": list(self.k_share),
            "multiplier": list(self.multiplier),
            "signs": list(self.signs),
            "scores": list(self.scores),
            "first_layer": list(self.first_layer),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchSpace:
        return cls(**{k: tuple(v) for k, v in data.items()})


@dataclass(frozen=True)
class Params:
    """One point of the search space (what a trial chose).

    Attributes:
        k: neurons asked for (the circuit may hold fewer: see `build_circuit`).
        multiplier: m.
        sign: "both" or "positive".
        score: "diff" or "standardized".
        first_layer_share: the first candidate layer as a share of depth.
    """

    k: int
    multiplier: float
    sign: str
    score: str
    first_layer_share: float

    def first_layer(self, n_layers: int) -> int:
        """The first candidate layer: floor(share · n_layers), at most the last layer."""
        return min(n_layers - 1, math.floor(self.first_layer_share * n_layers))

    @classmethod
    def from_dict(cls, params: dict[str, Any]) -> Params:
        """From an Optuna trial's params (the names `suggest` uses)."""
        return cls(
            k=int(params["k"]),
            multiplier=float(params["multiplier"]),
            sign=str(params["sign"]),
            score=str(params["score"]),
            first_layer_share=float(params["first_layer_share"]),
        )


def suggest(trial: Any, space: SearchSpace, n_neurons: int) -> Params:
    """Ask an Optuna trial for one point of `space` (k's range from `n_neurons`)."""
    k_low, k_high = space.k_bounds(n_neurons)
    return Params(
        k=int(trial.suggest_int("k", k_low, k_high, log=True)),
        multiplier=float(trial.suggest_float("multiplier", *space.multiplier)),
        sign=str(trial.suggest_categorical("sign", list(space.signs))),
        score=str(trial.suggest_categorical("score", list(space.scores))),
        first_layer_share=float(trial.suggest_float("first_layer_share", *space.first_layer)),
    )


class NoCandidates(InputError):
    """A trial's rules leave no neuron to select (e.g. no δ > 0 in its candidate layers)."""


def build_circuit(table: Circuit, params: Params) -> Circuit:
    """The circuit of one trial, re-selected from `table`'s kept statistics (no model run).

    The candidates are the layers from `params.first_layer(n_layers)` on, without the
    universal neurons the table marked; k is capped at the candidates the sign rule allows.
    The circuit records its multiplier (`settings.multiplier`), score and sign rule, and
    carries no table of its own.

    Raises:
        InputError: `table` has no kept table.
        NoCandidates: the rules leave no neuron.
    """
    if table.table is None:
        raise InputError("the search needs a circuit with its full table (keep_table=True)")
    info = table.model
    first = params.first_layer(info.n_layers)
    skip = tuple(range(first))
    candidates = candidate_mask(info.n_layers, info.d_mlp, skip, table.universal_mask())
    candidates &= info.valid_mask()  # an MoE layer narrower than d_mlp ends early
    scores = table.scores(params.score)  # [n_layers, d_mlp]
    positive_only = params.sign == "positive"
    allowed = candidates & (scores > 0) if positive_only else candidates
    available = int((allowed & torch.isfinite(scores)).sum())
    if available == 0:
        raise NoCandidates(
            f"no {'positive-δ ' if positive_only else ''}candidate neuron in layers {first} and up"
        )
    k = min(params.k, available)
    chosen = select_top_k(scores, candidates, k, positive_only=positive_only)
    settings = replace(
        table.settings,
        k=k,
        top_k=k,
        fraction=k / int(info.valid_mask().sum()),
        skip_layers=skip,
        positive_only=positive_only,
        n_candidates=chosen.n_candidates,
        multiplier=params.multiplier,
        score=params.score,
    )
    circuit = from_table(table, chosen.layers, chosen.neurons, settings)
    return replace(circuit, table=None, universal=table.universal_mask())


def _pair(value: tuple[float, ...], name: str) -> tuple[float, float]:
    if len(value) != 2 or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value
    ):
        raise InputError(f"{name} must be two finite numbers (low, high), got {value!r}")
    return float(value[0]), float(value[1])


def _choices(given: tuple[str, ...], known: tuple[str, ...], what: str) -> None:
    if not given:
        raise InputError(f"give at least one of the {what} ({', '.join(known)})")
    unknown = [g for g in given if g not in known]
    if unknown or len(set(given)) != len(given):
        raise InputError(f"{what} must be distinct values of {', '.join(known)}, got {list(given)}")
