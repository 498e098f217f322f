"""Stage 6 of the pipeline: the one interface every intervention implements.

Everything that steers a model (a `Circuit`, the baselines `CAA`, `MLPOutputSteering` and
`DirectionAblation`, and any later method) is an `Intervention`: it is applied live with
`x.steer(model, strength, positions=..., layout=...)`, which returns a `SteeringHandle`, and,
where the edit is exact, written into the weights with `x.bake(model, strength)`, which returns
a `BakeHandle` (an `UnsupportedModelError` says so where it is not exact).

One argument, `strength`, sets how strongly; its meaning is the method's own:

    intervention        strength        unchanged  default   effect
    ------------------  --------------  ---------  --------  ---------------------------------
    Circuit             multiplier m    1          0         each circuit neuron × m (0 ablates)
    CAA                 α               0          −1        α·v added to one layer's output
    MLPOutputSteering   α               0          −1        α·v_l added to every MLP's output
    DirectionAblation   s (share cut)   0          1         x ← x − s (x·r̂) r̂ on each writer

(v = positive mean − negative mean; a circuit neuron is the input to the MLP output projection.)

The defaults remove the behaviour the intervention was fitted on (the positive set's). A
sweep's normalised strength s (0 = unchanged, 1 = full removal) maps onto these as m = 1 − s,
α = −s and s itself (method.md §4).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

from torch import nn

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
