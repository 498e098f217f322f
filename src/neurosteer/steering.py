"""Stage 6 of the pipeline: steer a live model with hooks, through one handle type.

`steer(model, x, strength)` applies any `Intervention` (a circuit, several circuits, or a
baseline) and returns a `SteeringHandle`, also a context manager. The strength is read at
every call, so it can be changed inside the block; the identity strength (m = 1 for circuits)
leaves the model bit-identical; several handles compose (on shared neurons their multipliers
multiply). Registering the hooks is left to `neurosteer.hooks`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import TracebackType

from torch import nn

from neurosteer.circuit import Circuit
from neurosteer.errors import InputError
from neurosteer.hooks import EditState, HookSet, PositionTracker, add_neuron_scalers
from neurosteer.hooks.positions import Positions
from neurosteer.intervention import Intervention, Steerable, as_circuits, check_strength
from neurosteer.layout import ModelLayout

Installer = Callable[[HookSet, EditState], None]


class SteeringHandle:
    """Live editing hooks on one model; remove them with `remove()` or by leaving `with`.

    The one handle of every intervention (circuits and baselines alike): what is edited comes
    from an installer, how strongly from `strength` (read at every call, so it may change
    inside a block), and where from `positions`.

    Attributes:
        strength: the intervention's strength, in its own unit (see `neurosteer.intervention`:
            a neuron multiplier m for circuits, α for added vectors, the removed share for
            directional ablation). Setting a non-finite value raises `InputError`.
        multiplier: another name for `strength`, kept for circuits (whose strength is a
            multiplier) and for code written before the strengths were unified.
        positions: "all" (every position), "prompt" (the positions reading a prompt token)
            or "generated" (the positions whose output is a generated token: the last prompt
            position and every new one); see `neurosteer.hooks.positions`.
    """

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

    def steered_range(self, seq_len: int) -> tuple[int, int]:
        """[start, end) of the current chunk's positions that are edited."""
        return self._tracker.steered_range(self.positions, seq_len)

    def remove(self) -> None:
        """Remove this handle's hooks (idempotent); the model is unchanged afterwards."""
        self._hooks.remove()

    def __enter__(self) -> SteeringHandle:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()


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
        strength: in the intervention's own unit (`neurosteer.intervention`'s table): for
            circuits the multiplier m (0 ablates, 1 is the unchanged model, 2 doubles,
            negative flips). None: the intervention's default (m = 0 for circuits).
        positions: "all" steers every position; "prompt" the positions reading a prompt
            token; "generated" the positions whose output is a generated token, i.e. the last
            prompt position (which predicts the first answer token) and every new position.
            The two share the last prompt position. Prompts must be left-padded (as
            `generate` does). Prompt and new tokens are told apart by the KV cache; without a
            cache (`use_cache=False`) give `prompt_length` (the padded prompt width).
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
    if isinstance(intervention, Intervention):  # a circuit too: Circuit.steer comes back below
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
    """`steer` for one or several circuits (what `Circuit.steer` runs)."""
    if not circuits:
        raise InputError("steer() needs at least one circuit")
    m = check_strength(strength, circuits[0].default_strength)
    sites = [c.layout_on(model, layout).site_modules(model) for c in circuits]

    def install(hooks: HookSet, state: EditState) -> None:
        for c, c_sites in zip(circuits, sites, strict=True):
            add_neuron_scalers(hooks, c_sites, c.by_layer(), state)

    return SteeringHandle(model, install, m, positions, prompt_length)
