"""Stage 6 of the pipeline: steer a live model by scaling circuit neurons at inference.

`steer()` registers forward pre-hooks on the neuron sites (through `hooks.py`) and returns a
handle that is also a context manager. The multiplier m is read at every call, so it can be
changed inside the block; m = 1 leaves the model bit-identical; several handles compose
(their multipliers multiply on shared neurons).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from types import TracebackType

from torch import nn

from neurosteer.circuit import Circuit
from neurosteer.errors import InputError
from neurosteer.hooks import EditState, HookSet, PositionTracker, add_neuron_scalers
from neurosteer.hooks.positions import Positions
from neurosteer.layout import ModelLayout

Installer = Callable[[HookSet, EditState], None]


class SteeringHandle:
    """Live editing hooks on one model; remove them with `remove()` or by leaving `with`.

    Used for neuron steering and for every baseline intervention: what is edited comes from an
    installer, how strongly from `multiplier` (read at every call, so it may change inside a
    block), and where from `positions`.

    Attributes:
        multiplier: the strength (a neuron scale for circuits, α for added vectors, the
            removed share for directional ablation).
        positions: "all" (every position), "prompt" (the positions reading a prompt token)
            or "generated" (the positions whose output is a generated token: the last prompt
            position and every new one); see `neurosteer.hooks.positions`.
    """

    def __init__(
        self,
        model: nn.Module,
        install: Installer,
        multiplier: float,
        positions: Positions = "all",
        prompt_length: int | None = None,
    ) -> None:
        if positions not in ("all", "prompt", "generated"):
            raise InputError(f"positions must be 'all', 'prompt' or 'generated', got {positions!r}")
        if prompt_length is not None and prompt_length < 0:
            raise InputError(f"prompt_length must be >= 0, got {prompt_length}")
        self.multiplier = multiplier
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
    def multiplier(self) -> float:
        return self._multiplier

    @multiplier.setter
    def multiplier(self, value: float) -> None:
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InputError(f"the multiplier must be a finite number, got {value!r}")
        self._multiplier = float(value)

    @property
    def active(self) -> bool:
        return len(self._hooks) > 0

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
    circuit: Circuit | Sequence[Circuit],
    multiplier: float = 0.0,
    *,
    positions: Positions = "all",
    prompt_length: int | None = None,
    layout: ModelLayout | None = None,
) -> SteeringHandle:
    """Scale a circuit's neurons by `multiplier` in every forward pass of `model`.

    Args:
        model: the model the circuit was found on (or one of the same shape).
        circuit: a circuit, or several (each scaled by the same multiplier).
        multiplier: 0 ablates, 1 is the unchanged model, 2 doubles, negative flips.
        positions: "all" steers every position; "prompt" the positions reading a prompt
            token; "generated" the positions whose output is a generated token, i.e. the last
            prompt position (which predicts the first answer token) and every new position.
            The two share the last prompt position. Prompts must be left-padded (as
            `generate` does). Prompt and new tokens are told apart by the KV cache; without a
            cache (`use_cache=False`) give `prompt_length` (the padded prompt width).
        prompt_length: fixed prompt length for positions="prompt" or "generated".
        layout: a `ModelLayout` to use; by default each circuit is applied at the layer and
            site paths it recorded (`Circuit.layout_on`), and a given layout must use them.

    Precision: the steered neurons become `(x.float() * float32(m)).to(x.dtype)`, the rule
    `bake` applies to the weights, so m = 0.3 means 0.3 in bfloat16 too (not 0.30078125).

    Returns:
        A handle, already active; use it in `with` or call `remove()`.

    Raises:
        InputError: no circuit, a bad multiplier or positions.
        CircuitMismatchError: a circuit does not fit the model, or its recorded paths do not
            resolve on it (`CircuitLayoutError`).

    Example:
        >>> with steer(model, circuit, multiplier=0.0) as handle:
        ...     ablated = model.generate(**inputs, max_new_tokens=50)
        ...     handle.multiplier = 2.0
        ...     amplified = model.generate(**inputs, max_new_tokens=50)
    """
    circuits = [circuit] if isinstance(circuit, Circuit) else list(circuit)
    if not circuits:
        raise InputError("steer() needs at least one circuit")
    sites = [c.layout_on(model, layout).site_modules(model) for c in circuits]

    def install(hooks: HookSet, state: EditState) -> None:
        for c, c_sites in zip(circuits, sites, strict=True):
            add_neuron_scalers(hooks, c_sites, c.by_layer(), state)

    return SteeringHandle(model, install, multiplier, positions, prompt_length)
