"""Beside steering: the baselines CNA is compared with, behind the same interface.

All are fitted from the same two prompt sets as a circuit (last-token means, positive −
negative, `ContrastVectors`), and all are `Intervention`s: `x.steer(model, strength,
positions=...)` → a `SteeringHandle`, `x.bake(model, strength)` where the edit is exact (the
strength of each is in `neurosteer.interventions.protocol`'s table):

- `CAA`: the textbook residual-stream control vector, added with strength α at one layer,
  optionally rescaled to that layer's mean residual norm.
- `MLPOutputSteering`: the reference code's variant, a mean difference of each layer's MLP
  output added at every layer.
- `DirectionAblation`: the difference-of-means direction (Arditi et al.) projected out of
  everything that writes to the residual stream, with hooks or baked into the weights.
- A random-neuron control is `Circuit.random_like`, steered like any circuit.

Sign: every vector points from the negative to the positive set, so a positive α adds the
behaviour; a sweep that removes it uses α = −s (see method.md §4 for the strength mapping).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from neurosteer.errors import InputError
from neurosteer.hooks import EditState, HookSet, add_vector_adders
from neurosteer.interventions.protocol import HookedIntervention, Installer
from neurosteer.methods.ablation import DirectionAblation
from neurosteer.methods.contrast import ContrastVectors, Point
from neurosteer.methods.discovery import model_info
from neurosteer.methods.recording import RunningStats, run_last_token_pass
from neurosteer.model.layout import ModelLayout, resolve_layout
from neurosteer.model.runtime import auto_batch_size, pad_id, runs_model
from neurosteer.prompts.render import encode_for_model

__all__ = [
    "CAA",
    "ContrastVectors",
    "DirectionAblation",
    "MLPOutputSteering",
    "Point",
    "contrast_vectors",
]


# over 60 lines: a 14-line signature and 28-line docstring of public arguments; body 42 lines
@runs_model
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
    template_vars: Mapping[str, Any] | None = None,
    layout: ModelLayout | None = None,
    progress: bool = False,
) -> ContrastVectors:
    """Record last-token means of the residual stream or of the MLP outputs for two prompt sets.

    The prompts are rendered as `discover` renders them (chat template, `system` included);
    each prompt contributes the activation at its last token, in float32.

    Args:
        model, tokenizer: the model to record (left padding is used for batches).
        positive, negative: the two prompt sets (non-empty lists of strings).
        point: "residual" (each decoder layer's output) or "mlp_output" (each MLP output
            projection's output).
        batch_size: prompts per forward pass; None picks one from free memory.
        chat_template, system, template_vars: how prompts are rendered (see `discover`).
        layout: a `ModelLayout` to use (default: resolved from the model).
        progress: show a progress bar on stderr.

    Returns:
        `ContrastVectors` with positive_mean and negative_mean [n_layers, d_model] float32,
        mean_norm [n_layers] float32 and the model's provenance (config hash included).

    Raises:
        InputError: an unknown point, an empty prompt set, or a prompt too long for the
            model's context.
        UnsupportedModelError: the model's layout cannot be resolved (give `layout`).

    Example:
        >>> vectors = contrast_vectors(model, tokenizer, harmful, harmless)
        >>> caa = CAA.fit(vectors, layer=vectors.default_layer())
    """
    if point not in ("residual", "mlp_output"):
        raise InputError(f"point must be 'residual' or 'mlp_output', got {point!r}")
    if not positive or not negative:
        raise InputError("both prompt sets must be non-empty")
    layout = layout or resolve_layout(model)
    modules = layout.layer_modules(model) if point == "residual" else layout.site_modules(model)
    pos_ids, neg_ids = (
        encode_for_model(
            model,
            tokenizer,
            p,
            chat_template=chat_template,
            system=system,
            template_vars=template_vars,
        )
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
    return ContrastVectors(point, means[0], means[1], mean_norm, model=model_info(model, layout))


_ADDS_A_VECTOR = (
    "it adds a vector to the activations, which the weights of a model without biases cannot hold"
)


@dataclass(frozen=True, eq=False)
class CAA(HookedIntervention):
    """Contrastive activation addition: α · vector added to one layer's residual output.

    An `Intervention` whose strength is α (default −1: subtract the difference; 0 leaves the
    model unchanged). Where it applies is chosen per call (`steer(..., positions=...)`).

    Attributes:
        vector: [d_model] positive − negative at `layer` (rescaled if fitted with normalize).
        layer: the decoder layer whose output is shifted.
    """

    vector: torch.Tensor
    layer: int
    default_strength: ClassVar[float] = -1.0
    identity_strength: ClassVar[float] = 0.0
    no_bake_reason: ClassVar[str] = _ADDS_A_VECTOR

    @classmethod
    def fit(
        cls, vectors: ContrastVectors, *, layer: int | None = None, normalize: bool = False
    ) -> CAA:
        """Take the residual difference at `layer`.

        Args:
            vectors: residual-stream contrast vectors (point "residual").
            layer: the decoder layer, 0 .. n_layers − 1 (default: `vectors.default_layer()`).
            normalize: rescale the vector to that layer's mean residual norm, so α = 1 is a
                shift as large as a typical activation.

        Returns:
            A `CAA` with vector [d_model] float32.

        Raises:
            InputError: vectors of another point, or a layer out of range.
        """
        if vectors.point != "residual":
            raise InputError("CAA needs residual-stream vectors (point='residual')")
        layer = vectors.checked_layer(layer)
        vector = vectors.delta[layer]
        if normalize:
            vector = vector / vector.norm().clamp(min=1e-12) * vectors.mean_norm[layer]
        return cls(vector=vector, layer=layer)

    def installer(self, model: nn.Module, layout: ModelLayout | None) -> Installer:
        """Hooks adding `strength * vector` (α) to the output of decoder layer `layer`."""
        target = [(layout or resolve_layout(model)).layer_modules(model)[self.layer]]

        def install(hooks: HookSet, state: EditState) -> None:
            add_vector_adders(hooks, target, [self.vector], state)

        return install


@dataclass(frozen=True, eq=False)
class MLPOutputSteering(HookedIntervention):
    """The reference code's "CAA": each layer's MLP-output mean difference, added at every layer.

    An `Intervention` whose strength is α (default −1; 0 leaves the model unchanged).

    Attributes:
        vectors: [n_layers, d_model].
    """

    vectors: torch.Tensor
    default_strength: ClassVar[float] = -1.0
    identity_strength: ClassVar[float] = 0.0
    no_bake_reason: ClassVar[str] = _ADDS_A_VECTOR

    @classmethod
    def fit(cls, vectors: ContrastVectors) -> MLPOutputSteering:
        """Take every layer's MLP-output difference.

        Args:
            vectors: MLP-output contrast vectors (point "mlp_output").

        Returns:
            An `MLPOutputSteering` with vectors [n_layers, d_model] float32.

        Raises:
            InputError: vectors of another point.
        """
        if vectors.point != "mlp_output":
            raise InputError("MLP-output steering needs point='mlp_output' vectors")
        return cls(vectors=vectors.delta)

    def installer(self, model: nn.Module, layout: ModelLayout | None) -> Installer:
        """Hooks adding `strength * vectors[l]` (α) to the output of every layer's MLP."""
        sites = (layout or resolve_layout(model)).site_modules(model)

        def install(hooks: HookSet, state: EditState) -> None:
            add_vector_adders(hooks, sites, list(self.vectors), state)

        return install
