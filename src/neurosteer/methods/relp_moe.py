"""RelP's capture and rules on a mixture-of-experts model (`neurosteer.methods.relp_pass`).

A neuron of an MoE layer is (layer, expert, j), flattened per layer as discovery flattens it
(`neurosteer.model.moe_layout`). Its RelP attribution is the dense one taken where the neuron
exists:

    attribution[l, e·I + j] = Σ pairs Σ positions p routed to e   h[e, p, j] · ∂'m / ∂h[e, p, j]

h is expert e's neuron (the input of its down projection). At a position the router did not
send to e the neuron is not computed and adds nothing, as in discovery's "weighted" rule. The
routing weight w multiplies the expert's output, so ∂'m/∂h carries w: the attribution is that
of the neuron's weighted contribution w · h_j · down[:, j], the quantity whose mean discovery
contrasts. Shared experts and dense layers are sites as in a dense model.

Rules: the norm and attention rules are the dense ones; the activation rule hooks the experts'
`act_fn` (only where the class's gate is transformers' default act(gate) ⊙ up, so gpt-oss's
clamped SwiGLU refuses it); the half rule halves the neurons' gradient before the capture; the
routing rule (`RelPRules.routing`) holds the router's weights and shared experts' gates constant.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn
from transformers.integrations import moe as hf_moe

from neurosteer.errors import UnsupportedModelError
from neurosteer.hooks import HookSet
from neurosteer.hooks.expert_relevance import add_constant_outputs, add_expert_capture
from neurosteer.hooks.experts import add_fixed_routing
from neurosteer.hooks.relevance import (
    add_activation_identity,
    add_gradient_halvers,
    add_site_capture,
)
from neurosteer.model.layout import ModelLayout
from neurosteer.model.moe_layout import NeuronBlock, linear_shape

_GATE_NAME = re.compile(r"^shared_experts?_gate$", re.IGNORECASE)


@dataclass(frozen=True)
class Captured:
    """One captured neuron tensor: a routed expert's [n, I] (with its token rows) or a
    shared/dense block's [T, w] or [batch, seq, w] (rows None)."""

    layer: int
    start: int  # the flat index of its neuron 0 in the layer
    rows: torch.Tensor | None
    h: torch.Tensor


class MoeRelevance:
    """The hooks and the captures of one RelP attribution on an MoE model."""

    def __init__(self, model: nn.Module, layout: ModelLayout) -> None:
        if layout.moe is None:
            raise ValueError("MoeRelevance needs a mixture-of-experts layout")
        self.model, self.layout, self.moe = model, layout, layout.moe
        self.captured: list[Captured] = []

    def install(self, hooks: HookSet, *, activation: bool, half: bool, routing: bool) -> None:
        """Register the MLP rules that are on and the capture of every block's neurons.

        Raises:
            UnsupportedModelError: experts kept as separate modules; with `activation`, a block
                whose activation is not one module.
        """
        layers = self.layout.layer_modules(self.model)
        for i, (layer, spec) in enumerate(zip(layers, self.moe.layers, strict=True)):
            for part in spec.blocks:
                where = f"'{self.layout.layers_path}.{i}.{part.path}'"
                if part.storage == "modules":
                    raise UnsupportedModelError(
                        f"RelP needs the token rows of every expert and the experts {where} are "
                        "separate modules called without them; attribute with discover instead"
                    )
                module = layer.get_submodule(part.path)
                if part.storage == "fused":
                    self._install_fused(hooks, i, part, module, where, activation, half, routing)
                else:
                    self._install_linear(hooks, i, part, layer, activation, half)
            if routing:
                block = layer.get_submodule(spec.mlp_path)
                gates = [c for n, c in block.named_children() if _GATE_NAME.match(n)]
                add_constant_outputs(hooks, gates)

    def _install_fused(
        self,
        hooks: HookSet,
        layer: int,
        part: NeuronBlock,
        experts: nn.Module,
        where: str,
        activation: bool,
        half: bool,
        routing: bool,
    ) -> None:
        gated = bool(getattr(experts, "has_gate", False))
        if activation:
            add_activation_identity(hooks, [_experts_activation(experts, gated, where)])
        if routing:
            add_fixed_routing(hooks, experts)

        def sink(expert: int, rows: torch.Tensor, h: torch.Tensor) -> None:
            self.captured.append(Captured(layer, part.start + expert * part.width, rows, h))

        add_expert_capture(hooks, experts, sink, halve=half and gated)

    def _install_linear(
        self,
        hooks: HookSet,
        layer: int,
        part: NeuronBlock,
        decoder_layer: nn.Module,
        activation: bool,
        half: bool,
    ) -> None:
        site = decoder_layer.get_submodule(part.path)
        mlp = decoder_layer.get_submodule(part.path.rpartition(".")[0])
        act, gated = _mlp_activation(mlp, site, part.width)
        if activation:
            if act is None:
                raise UnsupportedModelError(
                    f"RelP needs the activation module of {type(mlp).__name__} in layer {layer} "
                    "and found none; switch the activation rule off "
                    "(RelPRules(activation_identity=False))"
                )
            add_activation_identity(hooks, [act])
        if half and gated:
            add_gradient_halvers(hooks, [site])

        def sink(_i: int, n: torch.Tensor) -> None:
            self.captured.append(Captured(layer, part.start, None, n))

        add_site_capture(hooks, [site], sink)

    def tensors(self) -> list[torch.Tensor]:
        """The captured neuron tensors of the last forward pass, for `torch.autograd.grad`."""
        return [c.h for c in self.captured]

    def fold(
        self,
        grads: tuple[torch.Tensor | None, ...],
        mask: torch.Tensor,
        last_only: bool,
    ) -> torch.Tensor:
        """[n_layers, d_mlp]: h ⊙ ∂'m/∂h summed over the chosen positions of each neuron.

        Args:
            grads: one per `tensors()`, in order (None: it does not reach the metric).
            mask: [batch, seq] the batch's attention mask (left padding: the last position is
                every row's last real token).
            last_only: the last position only (else every real position).
        """
        out = torch.zeros(self.layout.n_layers, self.layout.d_mlp)
        batch, seq = mask.shape
        for c, grad in zip(self.captured, grads, strict=True):
            if grad is None:
                continue
            product = (c.h.detach() * grad).float()  # [n, w], [T, w] or [batch, seq, w]
            width = product.shape[-1]
            if c.rows is None:
                product = product.reshape(batch, seq, width)
                rows = torch.arange(batch * seq, device=product.device)
                product = product.reshape(batch * seq, width)
            else:
                rows = c.rows.to(product.device)
            if last_only:
                keep = rows % seq == seq - 1
            else:
                keep = mask.to(product.device).bool().reshape(-1)[rows]
            total = (product * keep[:, None].to(product.dtype)).sum(0)
            out[c.layer, c.start : c.start + width] += total.cpu()
        return out


def _experts_activation(experts: nn.Module, gated: bool, where: str) -> nn.Module:
    """The activation module the experts' gate applies (transformers' default gate only)."""
    act = getattr(experts, "act_fn", None)
    default_gate = getattr(type(experts), "_apply_gate", None) is hf_moe._default_apply_gate
    if not isinstance(act, nn.Module) or (gated and not default_gate):
        raise UnsupportedModelError(
            f"RelP's activation rule needs an activation module applied as act(gate) ⊙ up and "
            f"the experts {where} ({type(experts).__name__}) gate their neurons otherwise; "
            "switch the rule off (RelPRules(activation_identity=False))"
        )
    return act


def _mlp_activation(mlp: nn.Module, site: nn.Module, width: int) -> tuple[nn.Module | None, bool]:
    """(the MLP's one activation module or None, whether it is gated) of a shared expert or a
    dense MLP whose down projection `site` reads `width` neurons."""
    others = [
        c
        for c in mlp.children()
        if linear_shape(c) is None and not isinstance(c, nn.Dropout) and not list(c.parameters())
    ]
    widths = [s[1] for c in mlp.children() if c is not site and (s := linear_shape(c))]
    gated = 2 * width in widths or widths.count(width) >= 2
    return (others[0] if len(others) == 1 else None), gated
