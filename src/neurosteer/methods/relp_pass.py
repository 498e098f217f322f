"""The batched forward/backward pass behind RelP attribution (`neurosteer.methods.relp`).

Finds the modules each propagation rule applies to (every norm; each MLP's activation; the
output projections of gated MLPs), installs the rules through `neurosteer.hooks.relevance`,
and per batch: one forward pass, the target's (and contrast's) logit at the last position,
one backward pass each, and n ⊙ ∂'m/∂n at the chosen positions summed into [n_layers, d_mlp].
Rows of a batch never mix, so the gradient of the sum over rows is each row's own gradient.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.pytorch_utils import Conv1D

from neurosteer.errors import UnsupportedModelError
from neurosteer.hooks import HookSet
from neurosteer.hooks.relevance import (
    add_activation_identity,
    add_gradient_halvers,
    add_norm_linearisers,
    add_site_capture,
    detached_attention,
)
from neurosteer.methods.relp_moe import MoeRelevance
from neurosteer.model.calls import model_forward
from neurosteer.model.layout import ModelLayout
from neurosteer.model.runtime import forward_takes, input_device, model_inputs
from neurosteer.prompts.render import Batch

AttributionPositions = Literal["last", "prompt"]


@dataclass(frozen=True)
class RelPRules:
    """Which propagation rules the backward pass uses (all on: RelP).

    Attributes:
        norm: hold every norm's scale 1/σ constant (LN-rule).
        attention: hold the attention weights constant, no gradient through the softmax
            (AH-rule). The reference code keeps that gradient; attention=False does too.
        gate_half: give each factor of a gated product act(gate) ⊙ up half its relevance.
        activation_identity: pass relevance through act() unchanged (gradient ratio a/g;
            the reference code's "linearised SiLU").
        routing: mixture-of-experts models only: hold the router's weights and shared
            experts' gates constant, as attention weights are (`neurosteer.methods.relp_moe`).
    """

    norm: bool = True
    attention: bool = True
    gate_half: bool = True
    activation_identity: bool = True
    routing: bool = True

    @classmethod
    def plain(cls) -> RelPRules:
        """No rule: the plain gradient × activation."""
        return cls(
            norm=False, attention=False, gate_half=False, activation_identity=False, routing=False
        )

    def describe(self, *, moe: bool = False) -> str:
        """The rules that are on, e.g. "norm,attention,gate_half,activation_identity" (the
        routing rule is named on mixture-of-experts models only, where it applies)."""
        names = [name for name, on in vars(self).items() if on and (moe or name != "routing")]
        return ",".join(names) or "none"


@dataclass(frozen=True)
class RuleSites:
    """The modules the rules apply to.

    Attributes:
        norms: every normalisation module of the model (LayerNorm / RMSNorm, q/k norms too).
        activations: per layer, the MLP's activation module.
        gated: whether the MLPs are gated (act(gate) ⊙ up), so the half rule applies.
    """

    norms: tuple[nn.Module, ...]
    activations: tuple[nn.Module, ...]
    gated: bool


def rule_sites(model: nn.Module, layout: ModelLayout, *, activations: bool = True) -> RuleSites:
    """Find the norms, the MLP activations (unless `activations` is False) and whether the
    MLPs are gated.

    Raises:
        UnsupportedModelError: an MLP without exactly one activation module (one without
            parameters), when `activations` are asked for.
    """
    norms = model_norms(model)
    mlp_path = layout.site_path.rpartition(".")[0]
    found, gated = [], []
    for layer in layout.layer_modules(model):
        mlp = layer.get_submodule(mlp_path) if mlp_path else layer
        site = layer.get_submodule(layout.site_path)
        projections = [c for c in mlp.children() if isinstance(c, (nn.Linear, Conv1D))]
        others = [
            c
            for c in mlp.children()
            if not isinstance(c, (nn.Linear, Conv1D, nn.Dropout)) and not list(c.parameters())
        ]
        if activations and len(others) != 1:
            raise UnsupportedModelError(
                f"RelP needs the activation module of each MLP and found {len(others)} in "
                f"{type(mlp).__name__}; switch the activation rule off "
                "(RelPRules(activation_identity=False))"
            )
        found.extend(others[:1])
        widths = [_out_width(p) for p in projections if p is not site]
        gated.append(2 * layout.d_mlp in widths or widths.count(layout.d_mlp) >= 2)
    return RuleSites(norms=norms, activations=tuple(found), gated=all(gated))


def model_norms(model: nn.Module) -> tuple[nn.Module, ...]:
    """Every normalisation module of the model (a leaf whose class name ends in "norm")."""
    return tuple(
        m
        for m in model.modules()
        if type(m).__name__.lower().endswith("norm") and not list(m.children())
    )


def _out_width(projection: nn.Module) -> int:
    if isinstance(projection, Conv1D):
        return int(projection.weight.shape[1])
    assert isinstance(projection, nn.Linear)
    return projection.out_features


@contextlib.contextmanager
def attention_rule(model: nn.Module, on: bool) -> Iterator[list[int] | None]:
    """`detached_attention(model)` when `on`, else nothing (yields None)."""
    if not on:
        yield None
        return
    with detached_attention(model) as counter:
        yield counter


@dataclass(frozen=True)
class BatchResult:
    """One batch's attributions summed over its rows, and each row's logits."""

    target: torch.Tensor  # [n_layers, d_mlp]
    contrast: torch.Tensor | None
    target_logits: torch.Tensor  # [batch]
    contrast_logits: torch.Tensor | None


class RelPPass:
    """The hooks, the per-batch forward/backward and the running sums of one attribution."""

    def __init__(
        self,
        model: PreTrainedModel,
        layout: ModelLayout,
        rules: RelPRules,
        positions: AttributionPositions,
        targets: list[int],
        contrasts: list[int] | None,
    ) -> None:
        self.model, self.layout, self.rules, self.positions = model, layout, rules, positions
        self.targets, self.contrasts = torch.tensor(targets), contrasts
        self.captured: dict[int, torch.Tensor] = {}
        self.moe = MoeRelevance(model, layout) if layout.moe is not None else None
        self.counter: list[int] | None = None
        n = len(targets)
        shape = (layout.n_layers, layout.d_mlp)
        self.sum_target = torch.zeros(shape)
        self.sum_contrast = torch.zeros(shape) if contrasts is not None else None
        self.target_logits = torch.zeros(n)
        self.contrast_logits = torch.zeros(n) if contrasts is not None else None
        self.keep = {"logits_to_keep": 1} if forward_takes(model, "logits_to_keep") else {}

    def install(self, hooks: HookSet, counter: list[int] | None) -> None:
        """Register the rules and the capture (the half rule before the capture)."""
        self.counter = counter
        if self.moe is not None:
            self._install_moe(hooks)
            return
        sites = self.layout.site_modules(self.model)
        if self.rules.norm or self.rules.activation_identity or self.rules.gate_half:
            found = rule_sites(self.model, self.layout, activations=self.rules.activation_identity)
            if self.rules.norm:
                add_norm_linearisers(hooks, found.norms)
            if self.rules.activation_identity:
                add_activation_identity(hooks, found.activations)
            if self.rules.gate_half and found.gated:
                add_gradient_halvers(hooks, sites)
        add_site_capture(hooks, sites, self.captured.__setitem__)

    def _install_moe(self, hooks: HookSet) -> None:
        assert self.moe is not None
        if self.rules.norm:
            add_norm_linearisers(hooks, model_norms(self.model))
        self.moe.install(
            hooks,
            activation=self.rules.activation_identity,
            half=self.rules.gate_half,
            routing=self.rules.routing,
        )

    def attempt(self, batch: Batch) -> BatchResult:
        """One forward and one backward pass per metric logit (may be retried on OOM)."""
        self.captured.clear()
        if self.moe is not None:
            self.moe.captured.clear()
        device = input_device(self.model)
        ids, mask = batch.input_ids.to(device), batch.attention_mask.to(device)
        before = self.counter[0] if self.counter is not None else 0
        with torch.enable_grad():
            inputs = model_inputs(self.model, ids, mask)
            out = model_forward(self.model, **inputs, use_cache=False, **self.keep)
            self._check_attention(before)
            logits = out.logits[:, -1, :].float()  # [batch, vocab]
            rows = torch.arange(logits.shape[0], device=logits.device)
            tensors = (
                self.moe.tensors()
                if self.moe is not None
                else [self.captured[i] for i in range(self.layout.n_layers)]
            )
            target_logit = logits[rows, self.targets[batch.index].to(logits.device)]
            contrast_logit = None
            if self.contrasts is not None:
                chosen = torch.tensor(self.contrasts)[batch.index].to(logits.device)
                contrast_logit = logits[rows, chosen]
            target = self._attribute(target_logit, tensors, mask, keep=contrast_logit is not None)
            contrast = (
                None
                if contrast_logit is None
                else self._attribute(contrast_logit, tensors, mask, keep=False)
            )
        self.captured.clear()
        if self.moe is not None:
            self.moe.captured.clear()
        return BatchResult(
            target=target,
            contrast=contrast,
            target_logits=target_logit.detach().cpu(),
            contrast_logits=None if contrast_logit is None else contrast_logit.detach().cpu(),
        )

    def _check_attention(self, before: int) -> None:
        if self.counter is None:
            return
        calls = self.counter[0] - before
        if calls != self.layout.n_layers:
            raise UnsupportedModelError(
                f"only {calls} of {self.layout.n_layers} attention layers went through "
                "transformers' attention interface, so RelP cannot hold all attention weights "
                "constant; switch the rule off (RelPRules(attention=False))"
            )

    def _attribute(
        self, metric: torch.Tensor, tensors: list[torch.Tensor], mask: torch.Tensor, *, keep: bool
    ) -> torch.Tensor:
        """[n_layers, d_mlp]: n ⊙ ∂'(Σ rows metric)/∂n at the chosen positions, summed."""
        grads = torch.autograd.grad(metric.sum(), tensors, retain_graph=keep, allow_unused=True)
        if self.moe is not None:
            return self.moe.fold(grads, mask, last_only=self.positions == "last")
        layers = []
        for n, grad in zip(tensors, grads, strict=True):
            if grad is None:  # a layer that does not reach the logit (cannot happen in an LM)
                layers.append(torch.zeros(n.shape[-1]))
                continue
            product = (n.detach() * grad).float()  # [batch, seq, d_mlp]
            if self.positions == "last":
                layers.append(product[:, -1, :].sum(0).cpu())
            else:
                real = mask.to(product.device, product.dtype)[..., None]
                layers.append((product * real).sum((0, 1)).cpu())
        return torch.stack(layers)

    def add(self, batch: Batch, result: BatchResult) -> None:
        """Fold a finished batch into the sums (once per batch)."""
        self.sum_target += result.target
        self.target_logits[batch.index] = result.target_logits
        if self.sum_contrast is not None and result.contrast is not None:
            self.sum_contrast += result.contrast
        if self.contrast_logits is not None and result.contrast_logits is not None:
            self.contrast_logits[batch.index] = result.contrast_logits
