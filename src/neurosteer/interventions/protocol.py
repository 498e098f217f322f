"""The one interface every intervention implements.

It needs only the hooks, the layout and the bake handle, so every method (`neurosteer.methods`)
can implement it; it knows no concrete method.

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

Here: the protocol, `SteeringHandle` (the one handle type), `HookedIntervention` (the shared
`steer` of the four methods, each giving only the hooks to register) and `Bound` (an
intervention with its steering options fixed, for callers that pass only a strength).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Protocol, runtime_checkable

from torch import nn

from neurosteer._compat import deprecated_name, renamed_keywords
from neurosteer.errors import InputError, UnsupportedModelError
from neurosteer.hooks import EditState, HookSet, PositionTracker
from neurosteer.hooks.hookset import RemovedOnExit
from neurosteer.hooks.positions import Positions
from neurosteer.interventions.handles import BakeHandle
from neurosteer.model.layout import ModelLayout


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


def check_strength(strength: float | None, default: float) -> float:
    """`strength` as a float, `default` when None.

    Raises:
        InputError: a strength that is not a finite number.
    """
    value = default if strength is None else strength
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"the strength must be a finite number, got {value!r}")
    return float(value)


#: The 0.1 names of the strength (`multiplier` for circuits, `alpha` for added vectors).
OLD_STRENGTH = {"multiplier": "strength", "alpha": "strength"}

Installer = Callable[[HookSet, EditState], None]
"""Registers an intervention's hooks on the `HookSet` it is given; the hooks read the strength
and the positions from the `EditState` (the `SteeringHandle`) at every call."""


class SteeringHandle(RemovedOnExit):
    """Live editing hooks on one model; remove them with `remove()` or by leaving `with`.

    The one handle of every intervention (circuits and baselines alike): what is edited comes
    from an installer, how strongly from `strength` (read at every call, so it may change
    inside a block), and where from `positions`.

    Attributes:
        strength: the intervention's strength, in its own unit (see
        `neurosteer.interventions.protocol`:
            a neuron multiplier m for circuits, α for added vectors, the removed share for
            directional ablation). Setting a non-finite value raises `InputError`.
        multiplier: another name for `strength`, kept for circuits (whose strength is a
            multiplier) and for code written before the strengths were unified.
        positions: "all" (every position), "prompt" (the positions reading a prompt token)
            or "generated" (the positions whose output is a generated token: the last prompt
            position and every new one); see `neurosteer.hooks.positions`.
    """

    @renamed_keywords({"multiplier": "strength"})
    def __init__(
        self,
        model: nn.Module,
        install: Installer,
        strength: float,
        positions: Positions = "all",
        prompt_length: int | None = None,
    ) -> None:
        if positions not in ("all", "prompt", "generated"):
            raise InputError(f"positions must be 'all', 'prompt' or 'generated', got {positions!r}")
        if prompt_length is not None and prompt_length < 0:
            raise InputError(f"prompt_length must be >= 0, got {prompt_length}")
        self.strength = strength
        self.positions: Positions = positions
        self._tracker = PositionTracker(prompt_length)
        self._hooks = HookSet()
        try:
            if positions != "all":
                self._hooks.pre_with_kwargs(model, self._tracker.on_forward)
            install(self._hooks, self)
        except BaseException:
            self._hooks.remove()
            raise

    @property
    def strength(self) -> float:
        return self._strength

    @strength.setter
    def strength(self, value: float) -> None:
        self._strength = check_strength(value, 0.0)

    @property
    def multiplier(self) -> float:
        return self.strength

    @multiplier.setter
    def multiplier(self, value: float) -> None:
        self.strength = value

    @property
    def active(self) -> bool:
        """Deprecated (removed in the next release): whether the hooks are still in place."""
        deprecated_name("SteeringHandle.active", "leave the `with` block or call remove()")
        return len(self._hooks) > 0

    def steered_range(self, seq_len: int) -> tuple[int, int]:
        """[start, end) of the current chunk's positions that are edited."""
        return self._tracker.steered_range(self.positions, seq_len)

    def remove(self) -> None:
        """Remove this handle's hooks (idempotent); the model is unchanged afterwards."""
        self._hooks.remove()


class HookedIntervention:
    """The one `steer` of every intervention applied by hooks (circuits and the baselines).

    A subclass gives its strengths (`default_strength`, `identity_strength`, as in the
    module's table) and `installer`, which says which hooks to register; `steer` checks the
    strength and returns the `SteeringHandle`. `bake` refuses with `no_bake_reason` unless the
    subclass can write its edit into the weights exactly and overrides it.
    """

    default_strength: ClassVar[float]
    identity_strength: ClassVar[float]
    no_bake_reason: ClassVar[str] = "its edit has no exact form in the weights"

    def installer(self, model: nn.Module, layout: ModelLayout | None) -> Installer:
        """What registers this intervention's hooks on `model` (read the strength from the
        state it is given)."""
        raise NotImplementedError

    @renamed_keywords(OLD_STRENGTH)
    def steer(
        self,
        model: nn.Module,
        strength: float | None = None,
        *,
        positions: Positions = "all",
        prompt_length: int | None = None,
        layout: ModelLayout | None = None,
    ) -> SteeringHandle:
        """Apply the intervention at `strength` (None: `default_strength`) with hooks, at
        `positions`; see `neurosteer.steer` for the arguments.

        Raises:
            InputError: a non-finite strength, bad positions or a negative prompt_length.
            UnsupportedModelError: the model's layout cannot be resolved (give `layout`).
        """
        value = check_strength(strength, self.default_strength)
        return SteeringHandle(model, self.installer(model, layout), value, positions, prompt_length)

    def bake(
        self, model: nn.Module, strength: float | None = None, *, layout: ModelLayout | None = None
    ) -> BakeHandle:
        """Raises `UnsupportedModelError` (the edit is not exact in the weights): use `steer`."""
        raise UnsupportedModelError(
            f"{type(self).__name__} cannot be baked: {self.no_bake_reason}; apply it with steer"
        )


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
