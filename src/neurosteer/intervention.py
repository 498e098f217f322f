"""Stage 6 of the pipeline: the one interface every intervention implements.

Everything that steers a model (a `Circuit`, the baselines `CAA`, `MLPOutputSteering` and
`DirectionAblation`, and any later method) is an `Intervention`: it is applied live with
`x.steer(model, strength, positions=..., layout=...)`, which returns a `SteeringHandle`, and,
where the edit is exact, written into the weights with `x.bake(model, strength)`, which returns
a `BakeHandle` (an `UnsupportedModelError` says so where it is not exact). The functions
`neurosteer.steer(model, x, strength)` and `neurosteer.bake(model, x, strength)` take any
intervention, or one or several circuits.

One argument, `strength`, sets how strongly; its meaning is the method's own:

    intervention        strength        unchanged  default   effect
    ------------------  --------------  ---------  --------  ---------------------------------
    Circuit             multiplier m    1          0         each circuit neuron × m (0 ablates)
    CAA                 α               0          −1        α·v added to one layer's output
    MLPOutputSteering   α               0          −1        α·v_l added to every MLP's output
    DirectionAblation   s (share cut)   0          1         x ← x − s (x·r̂) r̂ on each writer

(v = positive mean − negative mean; a circuit neuron is the input to the MLP output projection.)
Only circuits and directional ablation can be baked exactly; CAA and MLP-output steering add a
vector, which no weight of a bias-free model can hold.

The defaults remove the behaviour the intervention was fitted on (the positive set's). A
sweep's normalised strength s (0 = unchanged, 1 = full removal) maps onto these as m = 1 − s,
α = −s and s itself (method.md §4).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from torch import nn

from neurosteer.circuit import Circuit
from neurosteer.errors import InputError

if TYPE_CHECKING:
    from neurosteer.baking import BakeHandle
    from neurosteer.hooks.positions import Positions
    from neurosteer.layout import ModelLayout
    from neurosteer.steering import SteeringHandle


@runtime_checkable
class Intervention(Protocol):
    """Something that steers a model with one strength (see the module's table)."""

    @property
    def default_strength(self) -> float:
        """The strength used when none is given (the method's full removal)."""
        ...

    @property
    def identity_strength(self) -> float:
        """The strength at which the model is unchanged."""
        ...

    def steer(
        self,
        model: nn.Module,
        strength: float | None = None,
        *,
        positions: Positions = "all",
        prompt_length: int | None = None,
        layout: ModelLayout | None = None,
    ) -> SteeringHandle:
        """Apply the intervention with hooks until the handle is removed."""
        ...

    def bake(
        self,
        model: nn.Module,
        strength: float | None = None,
        *,
        layout: ModelLayout | None = None,
    ) -> BakeHandle:
        """Write the intervention into the weights in place (exact), undoable via the handle.

        Raises:
            UnsupportedModelError: where the edit cannot be written into the weights exactly.
        """
        ...


Steerable = Intervention | Circuit | Sequence[Circuit]
"""What `neurosteer.steer` and `neurosteer.bake` take: an intervention, or circuits."""


def check_strength(strength: float | None, default: float) -> float:
    """`strength` as a float, `default` when None.

    Raises:
        InputError: a strength that is not a finite number.
    """
    value = default if strength is None else strength
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"the strength must be a finite number, got {value!r}")
    return float(value)


def resolve_strength(target: Steerable, strength: float | None) -> float:
    """`strength` checked, or `target`'s default strength when None (see `check_strength`)."""
    default = (
        target.default_strength
        if isinstance(target, Intervention)
        else as_circuits(target)[0].default_strength
    )
    return check_strength(strength, default)


def as_circuits(target: Circuit | Sequence[Circuit]) -> list[Circuit]:
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


@dataclass(frozen=True, eq=False)
class Bound:
    """An intervention with its steering options chosen ahead of the call; itself one.

    For code that applies an intervention knowing only a strength (the KL and MMLU
    evaluations, a sweep's points): `Bound(caa, positions="prompt").steer(model, -1.0)` is
    `caa.steer(model, -1.0, positions="prompt")`. Options given to `steer` or `bake`
    themselves win over the bound ones.

    Attributes:
        intervention: what is applied.
        positions, prompt_length, layout: the options `steer` (and, for the layout, `bake`)
            use when not given.
    """

    intervention: Intervention
    positions: Positions = "all"
    prompt_length: int | None = None
    layout: ModelLayout | None = None

    @property
    def default_strength(self) -> float:
        return self.intervention.default_strength

    @property
    def identity_strength(self) -> float:
        return self.intervention.identity_strength

    def steer(
        self,
        model: nn.Module,
        strength: float | None = None,
        *,
        positions: Positions | None = None,
        prompt_length: int | None = None,
        layout: ModelLayout | None = None,
    ) -> SteeringHandle:
        """`intervention.steer` with the bound options where none are given."""
        return self.intervention.steer(
            model,
            strength,
            positions=self.positions if positions is None else positions,
            prompt_length=self.prompt_length if prompt_length is None else prompt_length,
            layout=self.layout if layout is None else layout,
        )

    def bake(
        self, model: nn.Module, strength: float | None = None, *, layout: ModelLayout | None = None
    ) -> BakeHandle:
        """`intervention.bake` with the bound layout where none is given."""
        return self.intervention.bake(
            model, strength, layout=self.layout if layout is None else layout
        )
