"""A baseline: directional ablation, with hooks or baked into the weights.

The difference-of-means direction r̂ (Arditi et al.) is projected out of everything that writes
to the residual stream (the embeddings, every attention and MLP output projection):
x ← x − s (x·r̂) r̂. As weights: W ← W − s r̂ r̂ᵀ W on each writer's output side, which is exact
where the writers' outputs are added to the residual stream as they are (not for families that
normalise each sublayer's output first).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from neurosteer._compat import renamed_keywords
from neurosteer.errors import InputError, UnsupportedModelError
from neurosteer.hooks import EditState, HookSet, add_direction_projectors
from neurosteer.hooks.edits import edit_dtype, float32_strength
from neurosteer.interventions.handles import BakeHandle, require_editable
from neurosteer.interventions.protocol import (
    OLD_STRENGTH,
    HookedIntervention,
    Installer,
    check_strength,
)
from neurosteer.methods.contrast import ContrastVectors
from neurosteer.model.layout import ModelLayout, residual_writers, resolve_layout


@dataclass(frozen=True, eq=False)
class DirectionAblation(HookedIntervention):
    """Remove a direction from the residual stream: x ← x − s (x·r̂) r̂ on every writer.

    An `Intervention` whose strength is the removed share s (default 1: remove it all; 0
    leaves the model unchanged).

    Attributes:
        direction: [d_model] unit vector (positive − negative at `layer`, normalised).
        layer: the layer it was taken from.
    """

    direction: torch.Tensor
    layer: int
    default_strength: ClassVar[float] = 1.0
    identity_strength: ClassVar[float] = 0.0

    @classmethod
    def fit(cls, vectors: ContrastVectors, *, layer: int | None = None) -> DirectionAblation:
        """Take the residual difference at `layer` as a unit direction.

        Args:
            vectors: residual-stream contrast vectors (point "residual").
            layer: the decoder layer, 0 .. n_layers − 1 (default: `vectors.default_layer()`).

        Returns:
            A `DirectionAblation` with direction [d_model] float32 of norm 1.

        Raises:
            InputError: vectors of another point, or a layer out of range.
        """
        if vectors.point != "residual":
            raise InputError("directional ablation needs point='residual' vectors")
        layer = vectors.checked_layer(layer)
        delta = vectors.delta[layer].float()
        return cls(direction=delta / delta.norm().clamp(min=1e-12), layer=layer)

    def installer(self, model: nn.Module, layout: ModelLayout | None) -> Installer:
        """Hooks projecting the share `strength` (s) of the direction out of every residual
        writer's output."""
        writers = residual_writers(model, layout or resolve_layout(model)).all()

        def install(hooks: HookSet, state: EditState) -> None:
            add_direction_projectors(hooks, writers, self.direction, state)

        return install

    @renamed_keywords(OLD_STRENGTH)
    def bake(
        self, model: nn.Module, strength: float | None = None, *, layout: ModelLayout | None = None
    ) -> BakeHandle:
        """Orthogonalise every residual writer's weights (and biases) to the direction.

        Equal to `steer(model, strength)` at every position, under the same precision rule
        (strength rounded to float32, computed in float32, one rounding to the weight dtype).
        Tied input/output embeddings are untied first, so that the LM head keeps its weights
        (a saved checkpoint then stores both).

        Raises:
            UnsupportedModelError: the family normalises sublayer outputs (use `steer`).
            InputError: a non-finite strength, or a writer's or the LM head's weights are
                offloaded; nothing is changed (no untying either).
        """
        share = check_strength(strength, self.default_strength)
        writers = residual_writers(model, layout or resolve_layout(model))
        if not writers.linear:
            raise UnsupportedModelError(
                "this family normalises each sublayer's output before the residual add, so a "
                "direction cannot be removed from its weights exactly; use the hooks (steer)"
            )
        head = model.get_output_embeddings()  # type: ignore[operator]
        edited = writers.all() + ([head] if isinstance(head, nn.Module) else [])
        require_editable(model, edited, "bake the direction ablation")
        handle = BakeHandle()
        try:
            with torch.no_grad():
                _untie_embeddings(model, handle)
                for module in writers.all():
                    _orthogonalise(module, self.direction, share, handle)
        except BaseException:
            handle.undo()
            raise
        return handle


def _untie_embeddings(model: nn.Module, handle: BakeHandle) -> None:
    head = model.get_output_embeddings()  # type: ignore[operator]
    embed = model.get_input_embeddings()  # type: ignore[operator]
    if head is None or head.weight is not embed.weight:
        return
    shared = head.weight
    config = getattr(model, "config", None)
    if config is None:
        raise InputError("the model has tied embeddings but no config to record the untying in")
    tied = getattr(config, "tie_word_embeddings", True)
    head.weight = nn.Parameter(shared.detach().clone(), requires_grad=shared.requires_grad)
    config.tie_word_embeddings = False

    def retie() -> None:
        head.weight = shared
        config.tie_word_embeddings = tied

    handle.on_undo(retie)


def _orthogonalise(
    module: nn.Module, direction: torch.Tensor, strength: float, handle: BakeHandle
) -> None:
    """W ← W − s r̂ r̂ᵀ W on the output side of a linear writer (in place, with undo)."""
    weight = module.weight
    assert isinstance(weight, torch.Tensor)
    strength = float32_strength(strength)
    math_dtype = edit_dtype(weight.dtype)
    r = direction.to(device=weight.device, dtype=math_dtype)
    # Which axis of the weight is the residual (output) side:
    # Linear [d_model, in] → 0; Embedding [vocab, d_model] and Conv1D [in, d_model] → 1.
    axis = 0 if isinstance(module, nn.Linear) else 1
    for tensor, t_axis in [(weight, axis), (getattr(module, "bias", None), 0)]:
        if not isinstance(tensor, torch.Tensor):
            continue
        original = tensor.detach().clone()

        def restore(tensor: torch.Tensor = tensor, original: torch.Tensor = original) -> None:
            tensor.copy_(original)

        handle.on_undo(restore)
        w = tensor.to(math_dtype).movedim(t_axis, -1)  # [..., d_model]
        w = w - strength * (w @ r)[..., None] * r
        tensor.copy_(w.movedim(-1, t_axis).to(tensor.dtype))
