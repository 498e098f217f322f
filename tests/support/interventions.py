"""Test-local `neurosteer.interventions.protocol.Intervention`s for the evaluation tests.

`CircuitIntervention` puts the protocol over `neurosteer.methods.steering.steer` (strength = the
multiplier: 1 unchanged, 0 ablates), and `HookIntervention` over any hooks a test registers, so
that KL and MMLU are tested through the protocol alone, whichever objects implement it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from neurosteer import Circuit, bake, steer
from neurosteer.errors import UnsupportedModelError
from neurosteer.hooks import HookSet
from neurosteer.hooks.positions import Positions
from neurosteer.methods.baking import BakeHandle
from neurosteer.methods.steering import SteeringHandle
from neurosteer.model.layout import ModelLayout


class CircuitIntervention:
    """A circuit (or several) as an `Intervention`: each neuron × strength."""

    default_strength = 0.0
    identity_strength = 1.0

    def __init__(self, circuit: Circuit | Sequence[Circuit]) -> None:
        self.circuit = circuit

    def steer(
        self,
        model: nn.Module,
        strength: float | None = None,
        *,
        positions: Positions = "all",
        prompt_length: int | None = None,
        layout: ModelLayout | None = None,
    ) -> SteeringHandle:
        multiplier = self.default_strength if strength is None else strength
        return steer(
            model,
            self.circuit,
            multiplier,
            positions=positions,
            prompt_length=prompt_length,
            layout=layout,
        )

    def bake(
        self, model: nn.Module, strength: float | None = None, *, layout: ModelLayout | None = None
    ) -> BakeHandle:
        assert isinstance(self.circuit, Circuit)
        multiplier = self.default_strength if strength is None else strength
        return bake(model, self.circuit, multiplier, layout=layout)


class HookIntervention:
    """Whatever `install(hooks)` registers, as an `Intervention` whose strength is ignored;
    nothing registered: the model unchanged."""

    default_strength = 1.0
    identity_strength = 1.0

    def __init__(self, install: Callable[[HookSet], None] = lambda hooks: None) -> None:
        self.install = install
        self.calls: list[float | None] = []

    def steer(self, model: nn.Module, strength: float | None = None, **_: Any) -> SteeringHandle:
        self.calls.append(strength)
        return SteeringHandle(model, lambda hooks, _state: self.install(hooks), 1.0)

    def bake(self, model: nn.Module, strength: float | None = None, **_: Any) -> BakeHandle:
        raise UnsupportedModelError("hooks only")
