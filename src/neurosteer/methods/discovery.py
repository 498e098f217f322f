"""CNA discovery, the steps put together: `discover()` turns two prompt sets into a `Circuit`.

prompts → render & tokenize → record last-token statistics (positive, negative, and the
neutral set for the universal filter) → δ → candidates → global top-k → Circuit.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from importlib import resources
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from neurosteer._version import __version__
from neurosteer.errors import InputError
from neurosteer.methods.circuit import Circuit, CircuitRecipe, DeltaTable, ModelInfo, PromptInfo
from neurosteer.methods.discovery_record import SETS, DiscoveryRecord
from neurosteer.methods.recording import (
    ActivationStats,
    EveryActivation,
    record_prompt_activations,
    record_stats,
    top_activation_frequency,
)
from neurosteer.methods.selection import (
    UNIVERSAL_THRESHOLD,
    candidate_mask,
    difference_of_means,
    layer_mask,
    neurons_for_fraction,
    select_top_k,
    universal_mask,
)
from neurosteer.model.environment import environment
from neurosteer.model.fingerprint import weights_fingerprint
from neurosteer.model.gguf.loading import source_file
from neurosteer.model.layout import ModelLayout, resolve_layout
from neurosteer.model.runtime import auto_batch_size, pad_id, runs_model
from neurosteer.prompts.render import (
    encode_for_model,
    load_prompts,
    prompt_hash,
    uses_chat_template,
)
from neurosteer.prompts.template_vars import pin_clock

logger = logging.getLogger(__name__)

UNIVERSAL_FRACTION = 0.001
"""The universal filter's "top set" is the top 0.1% of all MLP neurons by |activation| (§1.6)."""

KEEP_IN_PASS_BYTES = 256 * 2**20
"""Up to this size (float32 activations of every neuron on every positive and negative prompt),
discovery keeps every neuron's per-prompt activations during its one pass and reads the
circuit's rows from them; above it, a second pass over the two sets records the circuit's
neurons alone."""


#: What to do when the built-in neutral prompts do not fit a model's context (the package's own
#: file is not the user's to edit).
BUILTIN_NEUTRAL_HINT = (
    "these are the built-in neutral prompts of the universal filter: give shorter ones "
    "(neutral=..., --neutral FILE) or turn the filter off (universal_filter=False, "
    "--no-universal-filter)"
)


def neutral_prompts() -> list[str]:
    """The built-in diverse neutral prompts used by the universal-neuron filter."""
    with resources.as_file(resources.files("neurosteer") / "data" / "neutral_prompts.txt") as file:
        return load_prompts(file)


# over 60 lines: a 20-line signature and 32-line docstring of public arguments; body 41 lines
@runs_model
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
    system: str | None = None,
    template_vars: Mapping[str, Any] | None = None,
    neutral: Sequence[str] | None = None,
    keep_table: bool = False,
    keep_activations: bool = True,
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
        system: a system turn rendered before every prompt (needs a chat template); None keeps
            the template's default. Recorded in `circuit.settings.system`.
        template_vars: chat-template variables, e.g. {"enable_thinking": False}; a template
            that reads the clock gets today's date, fixed for the whole run. Recorded in
            `circuit.settings.template_vars` (see `neurosteer.prompts.template_vars`).
        neutral: prompts for the universal filter (default: the built-in set).
        keep_table: store the full [n_layers, d_mlp] statistics in the circuit, so that
            `Circuit.reselect` can change k later without re-recording.
        keep_activations: keep the prompts and each circuit neuron's activation on every
            positive and negative prompt in `circuit.discovery`, for the neuron browser
            (4 bytes per neuron per prompt; a second pass over the two sets when keeping every
            neuron's during the first would take over `KEEP_IN_PASS_BYTES`).
        layout: a `ModelLayout` to use instead of resolving one.
        progress: show progress bars on stderr.

    Example:
        >>> circuit = discover(model, tokenizer, positive=harmful, negative=benign)
        >>> circuit.neurons_per_layer()
        {13: 12, 14: 40, 15: 79}
    """
    # Over 60 lines only by its signature and the docstring of its sixteen parameters; the
    # work is in the helpers below, one per stage.
    positive, negative = _check_prompts(positive, "positive"), _check_prompts(negative, "negative")
    layout = layout or resolve_layout(model)
    templated = uses_chat_template(tokenizer, chat_template)
    settings = _settings(
        layout,
        top_k=top_k,
        fraction=fraction,
        skip_layers=skip_layers,
        universal_filter=universal_filter,
        positive_only=positive_only,
        chat_template=templated,
        system=system,
        template_vars=pin_clock(tokenizer, template_vars) if templated else None,
    )
    sets = {"positive": positive, "negative": negative}
    if universal_filter:
        given = neutral if neutral is not None else neutral_prompts()
        sets["neutral"] = _check_prompts(given, "neutral")
    # every set is rendered and checked against the context before the first forward pass
    builtin = universal_filter and neutral is None
    ids = {
        name: encode_for_model(
            model,
            tokenizer,
            prompts,
            chat_template=settings.chat_template,
            system=system,
            template_vars=settings.template_vars if templated else template_vars,
            hint=BUILTIN_NEUTRAL_HINT if builtin and name == "neutral" else "shorten or remove it",
        )
        for name, prompts in sets.items()
    }
    if batch_size is None:
        longest = max(map(len, ids["positive"] + ids["negative"]))
        batch_size = auto_batch_size(model, layout, longest)
    options: dict[str, Any] = {
        "batch_size": batch_size,
        "pad_id": pad_id(tokenizer),
        "progress": progress,
    }
    keep = _keepers(layout, ids) if keep_activations else {}
    pos, neg, universal = _record(model, layout, ids, options, keep)
    info = {name: _info(prompts) for name, prompts in sets.items()}
    circuit = _select(model, layout, settings, pos, neg, universal, info)
    if keep_activations:
        record = _discovery_record(model, layout, circuit, sets, ids, keep, options)
        circuit = replace(circuit, discovery=record)
    return circuit if keep_table else _without_table(circuit)


def _settings(
    layout: ModelLayout,
    *,
    top_k: int | None,
    fraction: float,
    skip_layers: Sequence[int],
    universal_filter: bool,
    positive_only: bool,
    chat_template: bool,
    system: str | None,
    template_vars: dict[str, Any] | None = None,
) -> CircuitRecipe:
    """The circuit's settings before selection (no candidate counts yet), checked.

    Raises:
        InputError: `top_k` below 1, `fraction` outside (0, 1], `skip_layers` out of range or
            leaving fewer neurons than asked for.
    """
    k, skip = circuit_size(layout, top_k, fraction, skip_layers)
    return CircuitRecipe(
        method="cna",
        k=k,
        top_k=top_k,
        fraction=fraction,
        skip_layers=skip,
        universal_filter=universal_filter,
        universal_threshold=UNIVERSAL_THRESHOLD,
        positive_only=positive_only,
        chat_template=chat_template,
        system=system,
        template_vars=template_vars,
    )


def circuit_size(
    layout: ModelLayout, top_k: int | None, fraction: float, skip_layers: Sequence[int]
) -> tuple[int, tuple[int, ...]]:
    """(k, the skipped layers normalised and sorted): the circuit size every selector checks
    (contrastive discovery and RelP alike).

    Raises:
        InputError: `top_k` below 1, `fraction` outside (0, 1], or fewer neurons in the
            candidate layers than asked for.
    """
    if top_k is not None and top_k < 1:
        raise InputError(f"top_k must be at least 1, got {top_k}")
    if not 0.0 < fraction <= 1.0:
        raise InputError(f"fraction must be in (0, 1], got {fraction}")
    k = top_k if top_k is not None else neurons_for_fraction(fraction, layout.n_neurons)
    in_layers = int(
        (layer_mask(layout.n_layers, layout.d_mlp, skip_layers) & layout.valid_mask()).sum()
    )
    if k > in_layers:
        raise InputError(
            f"asked for {k} neurons but the candidate layers hold only {in_layers}; "
            "lower top_k/fraction or skip fewer layers"
        )
    return k, tuple(sorted(i % layout.n_layers for i in skip_layers))


def _keepers(layout: ModelLayout, ids: dict[str, list[list[int]]]) -> dict[str, EveryActivation]:
    """{set: a keeper of every neuron's activation on each prompt} for the positive and
    negative sets, or {} when that would take over `KEEP_IN_PASS_BYTES`."""
    n_prompts = len(ids["positive"]) + len(ids["negative"])
    grid = layout.n_layers * layout.d_mlp  # every flat index: an MoE layer may be narrower
    if n_prompts * grid * 4 > KEEP_IN_PASS_BYTES:
        return {}
    return {name: EveryActivation(len(ids[name]), layout.n_layers, layout.d_mlp) for name in SETS}


def _discovery_record(
    model: PreTrainedModel,
    layout: ModelLayout,
    circuit: Circuit,
    sets: dict[str, list[str]],
    ids: dict[str, list[list[int]]],
    keep: dict[str, EveryActivation],
    options: dict[str, Any],
) -> DiscoveryRecord:
    """The prompts, the circuit neurons' [k, n] activations on each set (from `keep`, else
    from a second pass) and their standardized scores (from the circuit's full table)."""
    layers, neurons = circuit.layers, circuit.neurons
    activations = {}
    for name in SETS:
        if name in keep:
            activations[name] = keep[name].take(layers, neurons)
        else:
            activations[name] = record_prompt_activations(
                model,
                layout,
                ids[name],
                layers,
                neurons,
                desc=f"{name} prompts, circuit",
                **options,
            )
    prompts = {name: tuple(sets[name]) for name in SETS}
    return DiscoveryRecord(prompts, activations, circuit.scores("standardized")[layers, neurons])


def _record(
    model: PreTrainedModel,
    layout: ModelLayout,
    ids: dict[str, list[list[int]]],
    options: dict[str, Any],
    keep: dict[str, EveryActivation],
) -> tuple[ActivationStats, ActivationStats, torch.Tensor]:
    """Last-token statistics of the positive and negative sets (each prompt's activations
    into `keep` too, for the sets it holds), and the [n_layers, d_mlp] bool universal mask
    from the neutral set (all False when `ids` has none)."""
    pos, neg = (
        record_stats(
            model, layout, ids[name], desc=f"{name} prompts", keep=keep.get(name), **options
        )
        for name in SETS
    )
    if "neutral" not in ids:
        return pos, neg, torch.zeros(layout.n_layers, layout.d_mlp, dtype=torch.bool)
    top = neurons_for_fraction(UNIVERSAL_FRACTION, layout.n_neurons)
    frequency = top_activation_frequency(model, layout, ids["neutral"], k=top, **options)
    return pos, neg, universal_mask(frequency)


def _select(
    model: PreTrainedModel,
    layout: ModelLayout,
    settings: CircuitRecipe,
    pos: ActivationStats,
    neg: ActivationStats,
    universal: torch.Tensor,
    prompts: dict[str, PromptInfo],
) -> Circuit:
    """The circuit: the global top-k of |δ| among the candidates, with its full table."""
    skip = settings.skip_layers
    valid = layout.valid_mask()  # False past the end of a narrower MoE layer
    candidates = candidate_mask(layout.n_layers, layout.d_mlp, skip, universal) & valid
    in_layers = layer_mask(layout.n_layers, layout.d_mlp, skip) & valid
    removed = int(in_layers.sum() - candidates.sum())
    if settings.universal_filter:
        logger.info("universal-neuron filter removed %d candidate neurons", removed)
    delta = difference_of_means(pos.mean, neg.mean)
    chosen = select_top_k(delta, candidates, settings.k, positive_only=settings.positive_only)
    at = (chosen.layers, chosen.neurons)
    return Circuit(
        layers=chosen.layers,
        neurons=chosen.neurons,
        delta=delta[at],
        positive_mean=pos.mean[at],
        negative_mean=neg.mean[at],
        model=model_info(model, layout),
        settings=replace(settings, universal_removed=removed, n_candidates=chosen.n_candidates),
        prompts=prompts,
        library_version=__version__,
        environment=environment(model),
        table=DeltaTable(pos.mean, neg.mean, pos.var, neg.var, universal),
        universal=universal,
    )


def model_info(model: PreTrainedModel, layout: ModelLayout) -> ModelInfo:
    """Provenance of the model: name, type, shape, a hash of its config and a fingerprint of
    its weights."""
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
        weights=weights_fingerprint(model),
        neuron_blocks=None if layout.moe is None else layout.moe.table(),
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
