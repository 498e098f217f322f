"""Steer a live model with hooks.

`steer(model, x, strength)` applies any `Intervention` (a circuit, several circuits, or a
baseline) and returns a `SteeringHandle`, also a context manager. The strength is read at
every call, so it can be changed inside the block; the identity strength (m = 1 for circuits)
leaves the model bit-identical; several handles compose (on shared neurons their multipliers
multiply). Registering the hooks is left to `neurosteer.hooks`; the handle and the shared
`steer` of every intervention live in `neurosteer.interventions.protocol`.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from neurosteer._compat import renamed_keywords
from neurosteer.errors import InputError
from neurosteer.hooks import EditState, HookSet
from neurosteer.hooks.positions import Positions
from neurosteer.interventions.protocol import (
    HookedIntervention,
    Installer,
    Intervention,
    SteeringHandle,
    check_strength,
)
from neurosteer.methods.circuit import Circuit, as_circuits
from neurosteer.model.layout import ModelLayout

__all__ = [
    "HookedIntervention",
    "Installer",
    "Positions",
    "Steerable",
    "SteeringHandle",
    "steer",
    "steer_circuits",
]

Steerable = Intervention | Circuit | Sequence[Circuit]
"""What `steer` and `neurosteer.bake` take: an intervention, or one or several circuits."""


# over 60 lines: a 9-line signature and 46-line docstring of public arguments; body 8 lines
@renamed_keywords({"circuit": "intervention", "multiplier": "strength"})
def steer(
    model: nn.Module,
    intervention: Steerable,
    strength: float | None = None,
    *,
    positions: Positions = "all",
    prompt_length: int | None = None,
    layout: ModelLayout | None = None,
) -> SteeringHandle:
    """Apply an intervention (or one or several circuits) to every forward pass of `model`.

    Args:
        model: the model the intervention was fitted on (or one of the same shape).
        intervention: a `Circuit`, a list of circuits (each scaled by the same strength; on
            shared neurons the scales multiply), or any `Intervention` (`CAA`,
            `MLPOutputSteering`, `DirectionAblation`).
        strength: in the intervention's own unit (`neurosteer.interventions.protocol`'s table): for
            circuits the multiplier m (0 ablates, 1 is the unchanged model, 2 doubles,
            negative flips). None: the intervention's default (m = 0 for circuits).
        positions: "all" steers every position; "prompt" the positions reading a prompt
            token; "generated" the positions whose output is a generated token, i.e. the last
            prompt position (which predicts the first answer token) and every new position.
            The two share the last prompt position. Prompts must be left-padded (as
            `generate` does). Prompt and new tokens are told apart by the KV cache: a call's
            prompt is what its cache already holds plus the new tokens of its first pass, so
            a cache passed in filled (a stored prefix, an earlier turn) keeps what it holds and
            only the rest is steered by the rule. Without a cache (`use_cache=False`) give
            `prompt_length` (the padded prompt width).
        prompt_length: fixed prompt length for positions="prompt" or "generated".
        layout: a `ModelLayout` to use; by default each circuit is applied at the layer and
            site paths it recorded (`Circuit.layout_on`), and a given layout must use them.

    Precision: an edited activation x becomes `(x.float() * float32(m)).to(x.dtype)` (or
    `x + α v`, `x − s (x·r̂) r̂`, under the same rule), the rule `bake` applies to the weights,
    so m = 0.3 means 0.3 in bfloat16 too (not 0.30078125).

    Returns:
        A handle, already active; use it in `with` or call `remove()`. Its hooks edit the
        activations' own dtype and device; nothing else in the model changes.

    Raises:
        InputError: an empty list, something that is not an intervention, a non-finite
            strength, bad positions or a negative prompt_length.
        CircuitMismatchError: a circuit does not fit the model, or its recorded paths do not
            resolve on it (`CircuitLayoutError`).
        UnsupportedModelError: a baseline on a model whose layout cannot be resolved.

    Example:
        >>> with steer(model, circuit, 0.0) as handle:
        ...     ablated = model.generate(**inputs, max_new_tokens=50)
        ...     handle.strength = 2.0
        ...     amplified = model.generate(**inputs, max_new_tokens=50)
        >>> with steer(model, caa, -1.0, positions="prompt"):
        ...     ...
    """
    if isinstance(intervention, Intervention):  # one circuit, or any other intervention
        return intervention.steer(
            model, strength, positions=positions, prompt_length=prompt_length, layout=layout
        )
    circuits = as_circuits(intervention)
    return steer_circuits(
        model, circuits, strength, positions=positions, prompt_length=prompt_length, layout=layout
    )


def steer_circuits(
    model: nn.Module,
    circuits: Sequence[Circuit],
    strength: float | None = None,
    *,
    positions: Positions = "all",
    prompt_length: int | None = None,
    layout: ModelLayout | None = None,
) -> SteeringHandle:
    """`steer` for several circuits, each scaled by the same multiplier `strength`."""
    if not circuits:
        raise InputError("steer() needs at least one circuit")
    m = check_strength(strength, circuits[0].default_strength)
    installers = [c.installer(model, layout) for c in circuits]

    def install(hooks: HookSet, state: EditState) -> None:
        for installer in installers:
            installer(hooks, state)

    return SteeringHandle(model, install, m, positions, prompt_length)
