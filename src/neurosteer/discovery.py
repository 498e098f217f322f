"""Stages 2–5 put together: `discover()` turns two prompt sets into a `Circuit`.

prompts → render & tokenize → record last-token statistics (positive, negative, and the
neutral set for the universal filter) → δ → candidates → global top-k → Circuit.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import replace
from importlib import resources

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from neurosteer._version import __version__
from neurosteer.attribution import (
    UNIVERSAL_THRESHOLD,
    difference_of_means,
    layer_mask,
    neurons_for_fraction,
    select_top_k,
    universal_mask,
)
from neurosteer.circuit import Circuit, DeltaTable, ModelInfo, PromptInfo, Settings, from_table
from neurosteer.errors import InputError
from neurosteer.gguf.loading import source_file
from neurosteer.layout import ModelLayout, resolve_layout
from neurosteer.prompts import encode_prompts, prompt_hash, uses_chat_template
from neurosteer.recording import (
    ActivationStats,
    auto_batch_size,
    record_stats,
    top_activation_frequency,
)

logger = logging.getLogger(__name__)

UNIVERSAL_FRACTION = 0.001
"""The universal filter's "top set" is the top 0.1% of all MLP neurons by |activation| (§1.6)."""


def neutral_prompts() -> list[str]:
    """The built-in diverse neutral prompts used by the universal-neuron filter."""
    text = resources.files("neurosteer").joinpath("data/neutral_prompts.txt").read_text("utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def discover(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    positive: Sequence[str],
    negative: Sequence[str],
    *,
    top_k: int | None = None,
    fraction: float = 0.001,
    skip_layers: Sequence[int] = (0, 1),
    universal_filter: bool = True,
    positive_only: bool = False,
    batch_size: int | None = None,
    chat_template: bool | None = None,
    neutral: Sequence[str] | None = None,
    keep_table: bool = False,
    layout: ModelLayout | None = None,
    progress: bool = False,
) -> Circuit:
    """Find the neurons whose last-token activations best separate two prompt sets.

    Args:
        model, tokenizer: from `load_model` (or any HF causal LM with a left-padding tokenizer).
        positive: prompts that show the behaviour (e.g. harmful requests that get refused).
        negative: prompts that do not (e.g. benign requests).
        top_k: number of neurons; overrides `fraction`.
        fraction: share of all MLP neurons to keep (default 0.1%, at least one neuron).
        skip_layers: layers that are not candidates (default 0 and 1; () for none).
        universal_filter: drop neurons that are in the top 0.1% by |activation| on at least
            80% of neutral prompts before selecting.
        positive_only: keep only neurons more active on the positive set (δ > 0).
        batch_size: prompts per forward pass (default: chosen from free accelerator
            memory, 16 on the CPU; halved automatically on out-of-memory errors).
        chat_template: True/False to force the chat template on or off; None: use it if the
            tokenizer has one.
        neutral: prompts for the universal filter (default: the built-in set).
        keep_table: store the full [n_layers, d_mlp] statistics in the circuit, so that
            `Circuit.reselect` can change k later without re-recording.
        layout: a `ModelLayout` to use instead of resolving one.
        progress: show progress bars on stderr.

    Example:
        >>> circuit = discover(model, tokenizer, positive=harmful, negative=benign)
        >>> circuit.neurons_per_layer()
        {13: 12, 14: 40, 15: 79}
    """
    positive, negative = _check_prompts(positive, "positive"), _check_prompts(negative, "negative")
    if top_k is not None and top_k < 1:
        raise InputError(f"top_k must be at least 1, got {top_k}")
    if not 0.0 < fraction <= 1.0:
        raise InputError(f"fraction must be in (0, 1], got {fraction}")
    layout = layout or resolve_layout(model)
    k = top_k if top_k is not None else neurons_for_fraction(fraction, layout.n_neurons)
    layers_ok = layer_mask(layout.n_layers, layout.d_mlp, skip_layers)
    if k > int(layers_ok.sum()):
        raise InputError(
            f"asked for {k} neurons but the candidate layers hold only {int(layers_ok.sum())}; "
            "lower top_k/fraction or skip fewer layers"
        )
    templated = uses_chat_template(tokenizer, chat_template)
    pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)

    def tokens(prompts: Sequence[str]) -> list[list[int]]:
        return encode_prompts(tokenizer, prompts, templated)

    pos_ids, neg_ids = tokens(positive), tokens(negative)
    if batch_size is None:
        batch_size = auto_batch_size(model, layout, max(map(len, pos_ids + neg_ids)))

    def stats(token_ids: list[list[int]], desc: str) -> ActivationStats:
        return record_stats(
            model,
            layout,
            token_ids,
            batch_size=batch_size,
            pad_id=pad_id,
            progress=progress,
            desc=desc,
        )

    pos, neg = stats(pos_ids, "positive prompts"), stats(neg_ids, "negative prompts")
    prompts = {"positive": _info(positive), "negative": _info(negative)}
    universal = layers_ok.new_zeros(layers_ok.shape)
    if universal_filter:
        neutral = _check_prompts(neutral if neutral is not None else neutral_prompts(), "neutral")
        frequency = top_activation_frequency(
            model,
            layout,
            tokens(neutral),
            batch_size=batch_size,
            pad_id=pad_id,
            k=neurons_for_fraction(UNIVERSAL_FRACTION, layout.n_neurons),
            progress=progress,
        )
        universal = universal_mask(frequency)
        prompts["neutral"] = _info(neutral)
    removed = int((universal & layers_ok).sum())
    if universal_filter:
        logger.info("universal-neuron filter removed %d candidate neurons", removed)

    delta = difference_of_means(pos.mean, neg.mean)
    chosen = select_top_k(delta, layers_ok & ~universal, k, positive_only=positive_only)
    table = DeltaTable(pos.mean, neg.mean, pos.var, neg.var, universal)
    settings = Settings(
        method="cna",
        k=k,
        top_k=top_k,
        fraction=fraction,
        skip_layers=tuple(sorted(i % layout.n_layers for i in skip_layers)),
        universal_filter=universal_filter,
        universal_threshold=UNIVERSAL_THRESHOLD,
        universal_removed=removed,
        positive_only=positive_only,
        chat_template=templated,
        n_candidates=chosen.n_candidates,
    )
    base = Circuit(
        layers=chosen.layers,
        neurons=chosen.neurons,
        delta=delta[chosen.layers, chosen.neurons],
        positive_mean=pos.mean[chosen.layers, chosen.neurons],
        negative_mean=neg.mean[chosen.layers, chosen.neurons],
        model=model_info(model, layout),
        settings=settings,
        prompts=prompts,
        library_version=__version__,
        table=table,
    )
    circuit = from_table(base, chosen.layers, chosen.neurons, settings)
    return circuit if keep_table else _without_table(circuit)


def model_info(model: PreTrainedModel, layout: ModelLayout) -> ModelInfo:
    """Provenance of the model: name, type, shape and a hash of its config."""
    config = model.config
    architectures = getattr(config, "architectures", None) or [type(model).__name__]
    return ModelInfo(
        name_or_path=str(
            getattr(config, "_name_or_path", "") or getattr(model, "name_or_path", "")
        ),
        model_type=layout.model_type,
        architecture=str(architectures[0]),
        n_layers=layout.n_layers,
        d_mlp=layout.d_mlp,
        d_model=layout.d_model,
        layers_path=layout.layers_path,
        site_path=layout.site_path,
        config_hash=config_hash(config.to_dict()),
        file=source_file(model),
    )


def config_hash(config: dict[str, object]) -> str:
    """SHA-256 of the config without fields that change with how it was loaded or saved."""
    volatile = {"transformers_version", "torch_dtype", "dtype", "use_cache", "name_or_path"}
    kept = {k: v for k, v in config.items() if k not in volatile and not k.startswith("_")}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()


def _info(prompts: Sequence[str]) -> PromptInfo:
    return PromptInfo(count=len(prompts), sha256=prompt_hash(prompts))


def _check_prompts(prompts: Sequence[str] | None, name: str) -> list[str]:
    if prompts is None or isinstance(prompts, str):
        raise InputError(f"the {name} prompts must be a list of strings")
    cleaned = [p for p in prompts if isinstance(p, str) and p.strip()]
    if len(cleaned) != len(prompts):
        raise InputError(f"the {name} prompts contain empty or non-text entries; remove them")
    if not cleaned:
        raise InputError(f"the {name} prompt set is empty; give at least one prompt")
    return cleaned


def _without_table(circuit: Circuit) -> Circuit:
    return replace(circuit, table=None)
