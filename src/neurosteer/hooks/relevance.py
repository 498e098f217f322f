"""The propagation rules of relevance patching (RelP), as hooks, for one backward pass.

Every rule keeps the forward values bit-identical and changes only what the backward pass sees,
with one construction: `value.detach() + c ⊙ (x − x.detach())` has the value of `value` and the
gradient `c` with respect to x, whatever c is (c itself detached).

    norm scale constant      y = w_eff ⊙ P(x) / σ(x) + b; backward sees σ(x) as a constant:
    (LN-rule)                dy/dx = diag(w_eff / σ) · P  (P centres x for LayerNorm, is the
                             identity for RMSNorm; w_eff is w, or 1 + w for Gemma's norms)
    attention constant       the softmax output is detached: gradients reach the values only,
    (AH-rule)                never the queries or keys (`detached_attention`)
    activation identity      a = act(g); backward sees a = (a / g) · g with the ratio constant,
    (identity rule)          so g · ∂/∂g = a · ∂/∂a (SiLU: the sigmoid is held fixed)
    gated product halves     n = a ⊙ u; backward sees ½ of the plain gradient on both factors,
    (half rule)              so a · ∂/∂a = u · ∂/∂u = ½ n · ∂/∂n (each factor gets half)

`add_site_capture` keeps each layer's neuron tensor (the input of the MLP output projection)
with its graph, for `torch.autograd.grad`. Register the half rule before the capture: the
capture then holds the tensor the projection consumes.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from typing import Any

import torch
from torch import nn

from neurosteer.errors import UnsupportedModelError
from neurosteer.hooks.hookset import HookSet
from neurosteer.hooks.recorders import first_tensor

#: The name our attention function is registered under in transformers' attention interface.
ATTENTION_NAME = "neurosteer_relp"
_calls: ContextVar[list[int] | None] = ContextVar("neurosteer_relp_attention", default=None)


def _carry(value: torch.Tensor, coefficient: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """`value` in the forward pass; `coefficient ⊙ dx` in the backward (float32 math)."""
    xf = x.float()
    return value.detach() + (coefficient.detach() * (xf - xf.detach())).to(value.dtype)


# ---- norms ----------------------------------------------------------------------------------


def add_norm_linearisers(hooks: HookSet, norms: Sequence[nn.Module]) -> None:
    """Hold each norm's scale 1/σ constant in the backward pass (forward values unchanged).

    The norm's form (LayerNorm or RMSNorm, weight w or 1 + w) is the one that reproduces the
    module's own output on its first call.

    Raises (from the forward pass):
        UnsupportedModelError: no known form reproduces a norm's output.
    """
    for norm in dict.fromkeys(norms):  # once per module, in order
        hooks.post(norm, _lineariser(norm))


def _lineariser(module: nn.Module) -> Callable[[nn.Module, tuple[Any, ...], Any], Any]:
    chosen: list[tuple[bool, str]] = []  # (centred, weight form), fixed on the first call

    def hook(_module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        x, y = args[0], first_tensor(output)
        if not x.requires_grad:
            return None
        xf = x.detach().float()
        if not chosen:
            chosen.append(_norm_form(module, xf, y.detach().float()))
        centred, form = chosen[0]
        centre = xf.mean(-1, keepdim=True) if centred else 0.0
        scale = torch.rsqrt(((xf - centre) ** 2).mean(-1, keepdim=True) + _eps(module))
        coefficient = _weight(module, form, xf) * scale  # [..., d]
        # the centring is linear and stays in the backward pass: P(x) = x − mean(x)
        xg = x.float()
        moved = xg - xg.mean(-1, keepdim=True) if centred else xg
        new = y.detach() + (coefficient * (moved - moved.detach())).to(y.dtype)
        return (new, *output[1:]) if isinstance(output, tuple) else new

    return hook


def _eps(module: nn.Module) -> float:
    for name in ("variance_epsilon", "eps", "epsilon"):
        value = getattr(module, name, None)
        if isinstance(value, (int, float)):
            return float(value)
    return 1e-6


def _weight(module: nn.Module, form: str, like: torch.Tensor) -> torch.Tensor:
    weight = getattr(module, "weight", None)
    if form == "none" or not isinstance(weight, torch.Tensor):
        return torch.ones(like.shape[-1], device=like.device)
    w = weight.detach().float().to(like.device)
    return 1.0 + w if form == "offset" else w


def _norm_form(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[bool, str]:
    """(centred, weight form) of the first candidate that reproduces y = module(x)."""
    bias = getattr(module, "bias", None)
    b = bias.detach().float().to(x.device) if isinstance(bias, torch.Tensor) else 0.0
    layer_norm = isinstance(module, nn.LayerNorm) or "layernorm" in type(module).__name__.lower()
    tolerance = 1e-2 * float(y.abs().max()) + 1e-5
    for centred in (True, False) if layer_norm else (False, True):
        for form in ("plain", "offset", "none"):
            centre = x.mean(-1, keepdim=True) if centred else 0.0
            moved = x - centre
            scale = torch.rsqrt((moved**2).mean(-1, keepdim=True) + _eps(module))
            guess = moved * scale * _weight(module, form, x) + b
            if float((guess - y).abs().max()) <= tolerance:
                return centred, form
    raise UnsupportedModelError(
        f"RelP cannot hold the scale of {type(module).__name__} constant: neither a LayerNorm "
        "nor an RMSNorm form reproduces its output; switch the norm rule off "
        "(RelPRules(norm=False))"
    )


# ---- MLP: activation identity rule and gated-product half rule ------------------------------


def add_activation_identity(hooks: HookSet, activations: Sequence[nn.Module]) -> None:
    """Backward through a = act(g) sees the constant ratio a / g (g · ∂/∂g = a · ∂/∂a).

    Where |g| < 1e-6 the ratio is the activation's slope at 0, measured once per module.
    """
    for act in dict.fromkeys(activations):
        hooks.post(act, _identity(_slope_at_zero(act)))


def _slope_at_zero(act: nn.Module) -> float:
    with torch.no_grad():
        h = 1e-3
        values = act(torch.tensor([-h, h], dtype=torch.float32))
    return float((values[1] - values[0]) / (2 * h))


def _identity(slope0: float) -> Callable[[nn.Module, tuple[Any, ...], Any], Any]:
    def hook(_module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        g, a = args[0], first_tensor(output)
        if not g.requires_grad:
            return None
        gf, af = g.detach().float(), a.detach().float()
        small = gf.abs() < 1e-6
        ratio = torch.where(small, torch.full_like(gf, slope0), af / torch.where(small, 1.0, gf))
        return _carry(a, ratio, g)

    return hook


def add_gradient_halvers(hooks: HookSet, sites: Sequence[nn.Module]) -> None:
    """Half rule for n = act(gate) ⊙ up at each site's input: the backward pass sees ½ of the
    gradient on n, so each factor receives half of n's relevance (sites: the MLP output
    projections of gated MLPs only)."""

    def hook(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        n = args[0]
        if not n.requires_grad:
            return None
        return (n.detach() + 0.5 * (n - n.detach()), *args[1:])

    for site in sites:
        hooks.pre(site, hook)


def add_site_capture(
    hooks: HookSet, sites: Sequence[nn.Module], sink: Callable[[int, torch.Tensor], None]
) -> None:
    """Hand `sink(i, n)` the input n [batch, seq, d_mlp] of `sites[i]`, with its graph (a new
    leaf that requires grad when nothing before it does), so its gradient can be taken."""

    def capture(i: int) -> Callable[[nn.Module, tuple[Any, ...]], tuple[Any, ...] | None]:
        def hook(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
            n = args[0]
            if n.requires_grad:
                sink(i, n)
                return None
            leaf = n.detach().requires_grad_(True)
            sink(i, leaf)
            return (leaf, *args[1:])

        return hook

    for i, site in enumerate(sites):
        hooks.pre(site, capture(i))


# ---- attention ------------------------------------------------------------------------------


@contextlib.contextmanager
def detached_attention(model: nn.Module) -> Iterator[list[int]]:
    """Run `model`'s attention with its weights held constant in the backward pass.

    Switches the model, for the block, to an attention function registered with transformers'
    attention interface under `ATTENTION_NAME` (with the eager attention mask): the family's own
    eager attention with detached queries and keys, so the softmax output is a constant and
    gradients reach the values only. Forward values equal eager attention's. The previous
    implementation (eager, sdpa, flash, ...) is restored on exit, also after an error.

    Yields:
        A one-element list counting the attention calls made inside the block (callers check
        that every layer went through it).

    Raises:
        UnsupportedModelError: the model's config has no attention implementation to switch.
    """
    _register()
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "_attn_implementation"):
        raise UnsupportedModelError(
            "this model has no transformers attention implementation to switch, so RelP cannot "
            "hold its attention weights constant; switch the rule off (RelPRules(attention=False))"
        )
    previous = config._attn_implementation
    counter = [0]
    token = _calls.set(counter)
    try:
        _set_attention(model, ATTENTION_NAME)
        yield counter
    finally:
        _calls.reset(token)
        _set_attention(model, previous)


def _set_attention(model: nn.Module, name: str | None) -> None:
    setter = getattr(model, "set_attn_implementation", None)
    if callable(setter) and name is not None:
        setter(name)
    else:
        model.config._attn_implementation = name  # type: ignore[union-attr]


def _attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    counter = _calls.get()
    if counter is not None:
        counter[0] += 1
    eager = getattr(
        importlib.import_module(type(module).__module__), "eager_attention_forward", None
    )
    if eager is None:
        raise UnsupportedModelError(
            f"{type(module).__name__} has no eager attention function beside it, so RelP cannot "
            "hold its attention weights constant; switch the rule off (RelPRules(attention=False))"
        )
    # queries and keys decide the weights only: detached, the weights are constants
    out: tuple[torch.Tensor, torch.Tensor] = eager(
        module, query.detach(), key.detach(), value, attention_mask, **kwargs
    )
    return out


def _register() -> None:
    """Register the attention function and its (eager) mask once per process."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask
    from transformers.modeling_utils import AttentionInterface

    if ATTENTION_NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(ATTENTION_NAME, _attention)
    if ATTENTION_NAME not in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION_NAME, eager_mask)
