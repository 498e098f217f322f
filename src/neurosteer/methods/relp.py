"""RelP attribution: a circuit from prompts and the next token each should produce.

For every neuron (coordinate j of the input n of layer l's MLP output projection):

    attribution[l, j] = Σ over pairs Σ over positions p   n[l, p, j] · ∂'m / ∂n[l, p, j]

m is the target's logit at the last prompt position (the logit of the token that would follow
the prompt), or target − contrast when a contrast is given. ∂' is relevance patching's gradient:
the backward pass holds each norm's 1/σ constant, holds the attention weights constant (no
gradient through the softmax), sees an activation a = act(g) as the constant ratio a/g times g
(the identity rule; for SiLU, the sigmoid held fixed), and gives each factor of a gated product
act(gate) ⊙ up half of the product's relevance. `neurosteer.hooks.relevance` has the formulas;
`RelPRules.plain()` switches every rule off (plain gradient × activation).

Positions: "last" (default) scores the last prompt position only; "prompt" sums over every
real prompt position. Pairs run in left-padded batches; rows of a batch never mix.

Signs: attributions are summed with their signs over pairs, so a neuron that helps the target
on one prompt and hurts it on another partly cancels. The circuit is the global top-k by
|sum| over the candidate layers (both signs, as contrastive discovery ranks by |δ|);
`positive_only=True` keeps only neurons whose sum pushes towards the target (> 0).

The result is an ordinary `Circuit` with `settings.method == "relp"`: `delta` is the summed
attribution of the metric, `positive_mean` the summed attribution of the target's logit and
`negative_mean` that of the contrast's (zeros without a contrast), so delta = positive −
negative as in contrastive circuits; `settings.attribution` records positions, rules and metric.
Inspect, compare, steer, bake and (with `keep_table`) reselect work on it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from neurosteer._version import __version__
from neurosteer.errors import InputError
from neurosteer.hooks import HookSet
from neurosteer.methods.circuit import Circuit, CircuitRecipe, DeltaTable, PromptInfo
from neurosteer.methods.discovery import circuit_size, model_info
from neurosteer.methods.relp_pass import (
    AttributionPositions,
    BatchResult,
    RelPPass,
    RelPRules,
    attention_rule,
)
from neurosteer.methods.selection import candidate_mask, select_top_k
from neurosteer.model.environment import environment
from neurosteer.model.layout import ModelLayout, resolve_layout
from neurosteer.model.runtime import auto_batch_size, input_device, pad_id, run_batches, runs_model
from neurosteer.prompts.render import Batch, prompt_hash, uses_chat_template
from neurosteer.prompts.targets import Target, check_pairs, encode_pairs
from neurosteer.prompts.template_vars import pin_clock

__all__ = ["Attribution", "AttributionPositions", "RelPRules", "attribute", "attribution_scores"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Attribution:
    """Attributions of every neuron, summed over pairs (and positions).

    Attributes:
        target: [n_layers, d_mlp] float32, the attribution of the target's logit.
        contrast: [n_layers, d_mlp] float32, of the contrast's logit, or None.
        target_logits, contrast_logits: [n_pairs] float32 logits at the last position (None
            without contrasts).
    """

    target: torch.Tensor
    contrast: torch.Tensor | None
    target_logits: torch.Tensor
    contrast_logits: torch.Tensor | None

    @property
    def score(self) -> torch.Tensor:
        """[n_layers, d_mlp] attribution of the metric (target − contrast, or target)."""
        return self.target if self.contrast is None else self.target - self.contrast

    @property
    def metric(self) -> torch.Tensor:
        """[n_pairs] the metric per pair: target − contrast logit, or the target's logit."""
        if self.contrast_logits is None:
            return self.target_logits
        return self.target_logits - self.contrast_logits


# over 60 lines: a 16-line signature and 8-line docstring of public arguments; body 46 lines
@runs_model
def attribution_scores(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    targets: Sequence[Target] | Target,
    *,
    contrasts: Sequence[Target] | Target | None = None,
    positions: AttributionPositions = "last",
    rules: RelPRules | None = None,
    batch_size: int | None = None,
    chat_template: bool | None = None,
    system: str | None = None,
    template_vars: Mapping[str, Any] | None = None,
    layout: ModelLayout | None = None,
    progress: bool = False,
) -> Attribution:
    """RelP attribution of every neuron (module docstring); `attribute` selects a circuit.

    Arguments as in `attribute`.

    Raises:
        InputError: bad pairs (`targets.check_pairs`), positions or batch size.
        UnsupportedModelError: a rule cannot be applied to this model (switch it off in `rules`).
    """
    if positions not in ("last", "prompt"):
        raise InputError(f"positions must be 'last' or 'prompt', got {positions!r}")
    prompts, target_list, contrast_list = check_pairs(prompts, targets, contrasts)
    layout = layout or resolve_layout(model)
    pairs = encode_pairs(
        model,
        tokenizer,
        prompts,
        target_list,
        contrast_list,
        chat_template=chat_template,
        system=system,
        template_vars=template_vars,
    )
    if batch_size is None:  # a backward pass keeps every layer's activations alive
        longest = max(map(len, pairs.token_ids))
        batch_size = max(1, auto_batch_size(model, layout, longest) // 4)
    rules = rules or RelPRules()
    run = RelPPass(model, layout, rules, positions, pairs.targets, pairs.contrasts)
    bar = tqdm(total=len(prompts), desc="RelP", unit="pair", disable=not progress, leave=False)
    with bar, HookSet() as hooks, attention_rule(model, rules.attention) as counter:
        run.install(hooks, counter)

        def finish(batch: Batch, result: BatchResult) -> None:
            run.add(batch, result)
            bar.update(len(batch.index))

        run_batches(
            pairs.token_ids,
            run.attempt,
            finish,
            batch_size=batch_size,
            pad_id=pad_id(tokenizer),
            device=input_device(model),
            what="RelP attribution",
        )
    result = Attribution(run.sum_target, run.sum_contrast, run.target_logits, run.contrast_logits)
    logger.info(
        "RelP (%s, %s positions) over %d pairs: mean metric %.4g, summed attribution %.4g",
        rules.describe(moe=layout.moe is not None),
        positions,
        len(prompts),
        float(result.metric.mean()),
        float(result.score.sum()),
    )
    return result


# over 60 lines: a 21-line signature and 30-line docstring of public arguments; body 54 lines
@runs_model
def attribute(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    targets: Sequence[Target] | Target,
    *,
    contrasts: Sequence[Target] | Target | None = None,
    positions: AttributionPositions = "last",
    top_k: int | None = None,
    fraction: float = 0.001,
    skip_layers: Sequence[int] = (0, 1),
    positive_only: bool = False,
    rules: RelPRules | None = None,
    batch_size: int | None = None,
    chat_template: bool | None = None,
    system: str | None = None,
    template_vars: Mapping[str, Any] | None = None,
    keep_table: bool = False,
    layout: ModelLayout | None = None,
    progress: bool = False,
) -> Circuit:
    """A circuit of the neurons with the largest RelP attribution to the target tokens.

    Args:
        model, tokenizer: from `load_model` (any HF causal LM with a left-padding tokenizer).
        prompts: the prompts, rendered as `discover` renders them (the chat template if any).
        targets: per prompt, the next token to explain: text (its first token as it continues
            the rendered prompt, e.g. " Paris") or a token id; a single str or int stands for
            every prompt.
        contrasts: per prompt, a competing token (metric: target − contrast logit); None: the
            metric is the target's logit.
        positions: "last" (the last prompt position) or "prompt" (every prompt position).
        top_k, fraction, skip_layers, positive_only: selection as in `discover` (top_k
            overrides fraction), ranked by |summed attribution|.
        rules: the propagation rules (default: all of RelP; `RelPRules.plain()`: none).
        batch_size: pairs per forward/backward pass (default: a quarter of `discover`'s).
        chat_template, system, template_vars: prompt rendering, as in `discover` (recorded
            in the circuit).
        keep_table: keep the full [n_layers, d_mlp] attribution tables (for `reselect`).
        layout, progress: as in `discover`.

    Raises:
        InputError: bad pairs, sizes or positions.
        UnsupportedModelError: a rule cannot be applied to this model.

    Example:
        >>> circuit = attribute(model, tokenizer, ["The capital of France is"], " Paris",
        ...                     contrasts=" London", top_k=50)
        >>> circuit.settings.method, len(circuit)
        ('relp', 50)
    """
    prompts, target_list, contrast_list = check_pairs(prompts, targets, contrasts)
    layout = layout or resolve_layout(model)
    k, skip = circuit_size(layout, top_k, fraction, skip_layers)
    rules = rules or RelPRules()
    templated = uses_chat_template(tokenizer, chat_template)
    template_vars = pin_clock(tokenizer, template_vars) if templated else template_vars
    scores = attribution_scores(
        model,
        tokenizer,
        prompts,
        target_list,
        contrasts=contrast_list,
        positions=positions,
        rules=rules,
        batch_size=batch_size,
        chat_template=chat_template,
        system=system,
        template_vars=template_vars,
        layout=layout,
        progress=progress,
    )
    candidates = candidate_mask(layout.n_layers, layout.d_mlp, skip) & layout.valid_mask()
    chosen = select_top_k(scores.score, candidates, k, positive_only=positive_only)
    at = (chosen.layers, chosen.neurons)
    contrast = scores.contrast if scores.contrast is not None else torch.zeros_like(scores.target)
    universal = torch.zeros(layout.n_layers, layout.d_mlp, dtype=torch.bool)
    metric = "target-contrast" if contrast_list is not None else "target"
    circuit = Circuit(
        layers=chosen.layers,
        neurons=chosen.neurons,
        delta=scores.score[at],
        positive_mean=scores.target[at],
        negative_mean=contrast[at],
        model=model_info(model, layout),
        settings=CircuitRecipe(
            method="relp",
            k=k,
            top_k=top_k,
            fraction=fraction,
            skip_layers=skip,
            universal_filter=False,
            positive_only=positive_only,
            chat_template=templated,
            n_candidates=chosen.n_candidates,
            system=system,
            template_vars=dict(template_vars) if template_vars else None,
            attribution=(
                f"positions={positions}; rules={rules.describe(moe=layout.moe is not None)}; "
                f"metric={metric}"
            ),
        ),
        prompts=_prompt_infos(prompts, target_list, contrast_list),
        library_version=__version__,
        environment=environment(model),
        table=_table(scores.target, contrast, universal),
        universal=universal,
    )
    return circuit if keep_table else replace(circuit, table=None)


def _prompt_infos(
    prompts: Sequence[str], targets: Sequence[Target], contrasts: Sequence[Target] | None
) -> dict[str, PromptInfo]:
    """The circuit's record of its pairs: count and hash of the prompts, targets, contrasts."""
    info = {"prompts": _info(prompts), "targets": _info(targets)}
    if contrasts is not None:
        info["contrasts"] = _info(contrasts)
    return info


def _table(target: torch.Tensor, contrast: torch.Tensor, universal: torch.Tensor) -> DeltaTable:
    """The kept table of a RelP circuit: [n_layers, d_mlp] target and contrast attributions
    in the mean slots, zero variances."""
    return DeltaTable(
        positive_mean=target,
        negative_mean=contrast,
        positive_var=torch.zeros_like(target),
        negative_var=torch.zeros_like(target),
        universal=universal,
    )


def _info(items: Sequence[Target]) -> PromptInfo:
    return PromptInfo(count=len(items), sha256=prompt_hash([str(i) for i in items]))
