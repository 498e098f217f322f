"""Stage 6, beside steering: the baselines CNA is compared with, behind the same interface.

All are fitted from the same two prompt sets as a circuit (last-token means, positive −
negative), and all are applied as `x.steer(model, strength)` → a `SteeringHandle`:

- `CAA`: the textbook residual-stream control vector, added with strength α at one layer (all
  positions or the prompt only), optionally rescaled to that layer's mean residual norm.
- `MLPOutputSteering`: the reference code's variant, a mean difference of each layer's MLP
  output added at every layer.
- `DirectionAblation`: the difference-of-means direction (Arditi et al.) projected out of
  everything that writes to the residual stream, with hooks or baked into the weights.
- A random-neuron control is `Circuit.random_like`, steered like any circuit.

Sign: every vector points from the negative to the positive set, so a positive α adds the
behaviour; a sweep that removes it uses α = −s (see method.md §4 for the strength mapping).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from neurosteer.baking import BakeHandle, require_editable
from neurosteer.errors import InputError, UnsupportedModelError
from neurosteer.hooks import (
    EditState,
    HookSet,
    add_direction_projectors,
    add_vector_adders,
)
from neurosteer.hooks.edits import edit_dtype, float32_strength
from neurosteer.layout import ModelLayout, residual_writers, resolve_layout
from neurosteer.prompts import encode_for_model
from neurosteer.recording import RunningStats, run_last_token_pass
from neurosteer.runtime import auto_batch_size, pad_id
from neurosteer.steering import Positions, SteeringHandle

Point = Literal["residual", "mlp_output"]


@dataclass(frozen=True, eq=False)
class ContrastVectors:
    """Last-token means of the residual stream (or of each MLP's output), per layer.

    Attributes:
        point: "residual" (each decoder layer's output) or "mlp_output" (what each MLP adds).
        positive_mean, negative_mean: [n_layers, d_model] float32.
        mean_norm: [n_layers] mean L2 norm over all prompts of both sets.
    """

    point: Point
    positive_mean: torch.Tensor
    negative_mean: torch.Tensor
    mean_norm: torch.Tensor

    @property
    def delta(self) -> torch.Tensor:
        """[n_layers, d_model] positive − negative."""
        return self.positive_mean - self.negative_mean

    def default_layer(self) -> int:
        """The layer whose difference is largest relative to the activations' size, among
        layers 1 to 80% of depth (later layers mostly read out rather than decide).

        A cheap heuristic; sweeps may instead scan layers by their effect on the behaviour.
        """
        n_layers = self.delta.shape[0]
        top = max(2, math.ceil(0.8 * n_layers))
        relative = self.delta.norm(dim=-1) / self.mean_norm.clamp(min=1e-6)
        return 1 + int(relative[1:top].argmax()) if n_layers > 1 else 0


def contrast_vectors(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    positive: Sequence[str],
    negative: Sequence[str],
    *,
    point: Point = "residual",
    batch_size: int | None = None,
    chat_template: bool | None = None,
    system: str | None = None,
    layout: ModelLayout | None = None,
    progress: bool = False,
) -> ContrastVectors:
    """Record last-token means of the residual stream or MLP outputs for two prompt sets
    (rendered as `discover` renders them, `system` included)."""
    if point not in ("residual", "mlp_output"):
        raise InputError(f"point must be 'residual' or 'mlp_output', got {point!r}")
    if not positive or not negative:
        raise InputError("both prompt sets must be non-empty")
    layout = layout or resolve_layout(model)
    modules = layout.layer_modules(model) if point == "residual" else layout.site_modules(model)
    pos_ids, neg_ids = (
        encode_for_model(model, tokenizer, p, chat_template=chat_template, system=system)
        for p in (positive, negative)
    )
    size = batch_size or auto_batch_size(model, layout, max(map(len, pos_ids + neg_ids)))
    norms = torch.zeros(layout.n_layers, dtype=torch.float64)
    means = []
    for ids in (pos_ids, neg_ids):
        stats = RunningStats(layout.n_layers)

        def take(layer: int, acts: torch.Tensor, stats: RunningStats = stats) -> None:
            stats.update(layer, acts)
            norms[layer] += float(acts.float().norm(dim=-1).sum())

        run_last_token_pass(
            model,
            layout,
            ids,
            batch_size=size,
            pad_id=pad_id(tokenizer),
            on_layer=take,
            progress=progress,
            desc=f"{point} means",
            points=modules,
            capture="output",
        )
        means.append(stats.result().mean)
    mean_norm = (norms / (len(pos_ids) + len(neg_ids))).float()
    return ContrastVectors(point, means[0], means[1], mean_norm)


@dataclass(frozen=True, eq=False)
class CAA:
    """Contrastive activation addition: α · vector added to one layer's residual output.

    Attributes:
        vector: [d_model] positive − negative at `layer` (rescaled if fitted with normalize).
        layer: the decoder layer whose output is shifted.
        positions: "all" or "prompt".
    """

    vector: torch.Tensor
    layer: int
    positions: Positions = "all"

    @classmethod
    def fit(
        cls,
        vectors: ContrastVectors,
        *,
        layer: int | None = None,
        positions: Positions = "all",
        normalize: bool = False,
    ) -> CAA:
        """Take the residual difference at `layer` (default: `vectors.default_layer()`).

        With `normalize`, the vector has the length of that layer's mean residual norm, so
        α = 1 is a shift as large as a typical activation.
        """
        if vectors.point != "residual":
            raise InputError("CAA needs residual-stream vectors (point='residual')")
        n_layers = vectors.delta.shape[0]
        layer = vectors.default_layer() if layer is None else layer
        if not 0 <= layer < n_layers:
            raise InputError(f"layer {layer} out of range 0..{n_layers - 1}")
        if positions not in ("all", "prompt"):
            raise InputError(f"CAA positions must be 'all' or 'prompt', got {positions!r}")
        vector = vectors.delta[layer]
        if normalize:
            vector = vector / vector.norm().clamp(min=1e-12) * vectors.mean_norm[layer]
        return cls(vector=vector, layer=layer, positions=positions)

    def steer(
        self, model: nn.Module, alpha: float, *, layout: ModelLayout | None = None
    ) -> SteeringHandle:
        """Add `alpha * vector` to the output of decoder layer `layer`."""
        layout = layout or resolve_layout(model)
        target = [layout.layer_modules(model)[self.layer]]

        def install(hooks: HookSet, state: EditState) -> None:
            add_vector_adders(hooks, target, [self.vector], state)

        return SteeringHandle(model, install, alpha, self.positions)


@dataclass(frozen=True, eq=False)
class MLPOutputSteering:
    """The reference code's "CAA": each layer's MLP-output mean difference, added at every layer.

    Attributes:
        vectors: [n_layers, d_model].
    """

    vectors: torch.Tensor

    @classmethod
    def fit(cls, vectors: ContrastVectors) -> MLPOutputSteering:
        if vectors.point != "mlp_output":
            raise InputError("MLP-output steering needs point='mlp_output' vectors")
        return cls(vectors=vectors.delta)

    def steer(
        self, model: nn.Module, alpha: float, *, layout: ModelLayout | None = None
    ) -> SteeringHandle:
        """Add `alpha * vectors[l]` to the output of every layer's MLP."""
        layout = layout or resolve_layout(model)
        sites = layout.site_modules(model)

        def install(hooks: HookSet, state: EditState) -> None:
            add_vector_adders(hooks, sites, list(self.vectors), state)

        return SteeringHandle(model, install, alpha)


@dataclass(frozen=True, eq=False)
class DirectionAblation:
    """Remove a direction from the residual stream: x ← x − s (x·r̂) r̂ on every writer.

    Attributes:
        direction: [d_model] unit vector (positive − negative at `layer`, normalised).
        layer: the layer it was taken from.
    """

    direction: torch.Tensor
    layer: int

    @classmethod
    def fit(cls, vectors: ContrastVectors, *, layer: int | None = None) -> DirectionAblation:
        if vectors.point != "residual":
            raise InputError("directional ablation needs point='residual' vectors")
        layer = vectors.default_layer() if layer is None else layer
        if not 0 <= layer < vectors.delta.shape[0]:
            raise InputError(f"layer {layer} out of range 0..{vectors.delta.shape[0] - 1}")
        delta = vectors.delta[layer].float()
        return cls(direction=delta / delta.norm().clamp(min=1e-12), layer=layer)

    def steer(
        self, model: nn.Module, strength: float = 1.0, *, layout: ModelLayout | None = None
    ) -> SteeringHandle:
        """Project `strength` of the direction out of every residual writer's output."""
        writers = residual_writers(model, layout or resolve_layout(model)).all()

        def install(hooks: HookSet, state: EditState) -> None:
            add_direction_projectors(hooks, writers, self.direction, state)

        return SteeringHandle(model, install, strength)

    def bake(
        self, model: nn.Module, strength: float = 1.0, *, layout: ModelLayout | None = None
    ) -> BakeHandle:
        """Orthogonalise every residual writer's weights (and biases) to the direction.

        Equal to `steer(model, strength)`, under the same precision rule (strength rounded to
        float32, computed in float32, one rounding to the weight dtype). Tied input/output
        embeddings are untied first, so that the LM head keeps its weights (a saved
        checkpoint then stores both).

        Raises:
            UnsupportedModelError: the family normalises sublayer outputs (use `steer`).
            InputError: a writer's or the LM head's weights are offloaded; nothing is changed
                (no untying either).
        """
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
                    _orthogonalise(module, self.direction, strength, handle)
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
