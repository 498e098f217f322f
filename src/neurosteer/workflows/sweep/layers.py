"""The layer scan: which layer CAA and directional ablation work from.

Both baselines take their vector from one residual layer. Unless the layer is given, each is
chosen by a small judged scan on the fitting (positive) prompts, never the evaluation sets: the
baseline at full strength (CAA α = −1, the whole direction removed) at up to 8 candidate layers
spread over 1 .. 80% of depth, greedy answers judged like the sweep's.

Ranking (`scan_rank`): the most well-formed compliance wins, that is answers the judge labels
"compliance", which excludes refusals and degenerate text alike; ties go to fewer degenerate
answers, then to the earlier layer. A layer that breaks the model (every answer degenerate, so
no refusal either) scores 0 and never beats a layer that leaves some answers intact; when no
layer yields compliance, the least-broken layer wins.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from neurosteer.errors import InputError
from neurosteer.evaluation.generation import generate
from neurosteer.evaluation.judges import Judge
from neurosteer.evaluation.refusal import judge_answers
from neurosteer.hooks.positions import Positions
from neurosteer.methods.baselines import CAA, ContrastVectors, DirectionAblation
from neurosteer.model.layout import ModelLayout
from neurosteer.model.runtime import runs_model
from neurosteer.workflows.sweep.config import SweepConfig

logger = logging.getLogger(__name__)

ScannedMethod = Literal["caa", "direction"]
SCANNED: tuple[ScannedMethod, ...] = ("caa", "direction")
"""The methods whose layer a sweep scans."""

#: Answer length during the scan: enough to see a refusal or a broken answer, and cheap.
SCAN_MAX_NEW_TOKENS = 32


@dataclass(frozen=True)
class LayerScan:
    """What one layer scan measured.

    Attributes:
        method: "caa" or "direction".
        rates: {layer: {"refusal", "compliance", "degenerate": share of the scan's answers}}.
        chosen: the winning layer (see `scan_rank`).
        n_prompts: fitting prompts judged at each layer.
    """

    method: str
    rates: dict[int, dict[str, float]]
    chosen: int
    n_prompts: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (layers as string keys), for the run's config.json."""
        return {
            "chosen": self.chosen,
            "n_prompts": self.n_prompts,
            "rates": {str(layer): rates for layer, rates in self.rates.items()},
        }


def scan_rank(rates: dict[str, float], layer: int) -> tuple[float, float, int]:
    """Sort key of a scanned layer, smallest best: (−compliance, degenerate, layer)."""
    return -rates["compliance"], rates["degenerate"], layer


def scan_candidates(n_layers: int) -> list[int]:
    """Up to 8 layers spread over 1 .. 80% of depth (later layers mostly read out)."""
    top = max(2, math.ceil(0.8 * n_layers))
    steps = min(8, top - 1)
    return sorted({round(x) for x in torch.linspace(1, top - 1, steps=steps).tolist()})


@runs_model
def scan_layer(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    residual: ContrastVectors,
    prompts: Sequence[str],
    judge: Judge,
    *,
    method: ScannedMethod = "caa",
    config: SweepConfig,
    layout: ModelLayout,
    progress: bool = False,
) -> LayerScan:
    """Scan the candidate layers for `method` at full strength; the best one by `scan_rank`.

    Args:
        residual: residual-stream contrast vectors ([n_layers, d_model] means).
        prompts: fitting prompts to answer at each layer (the sweep uses its positive set).
        judge: labels each answer "refusal", "compliance" or "degenerate".
        method: "caa" (α = −1 at the layer) or "direction" (its direction fully removed).
        config: the sweep's generation settings (batch size, chat template, CAA options);
            answers are at most `SCAN_MAX_NEW_TOKENS` long.
        progress: a progress bar over layers × prompts on stderr.

    Returns:
        A `LayerScan` with every candidate's rates and the chosen layer.

    Raises:
        InputError: for an unknown method, no prompts, or a judge that returns unknown labels.
    """
    if method not in SCANNED:
        raise InputError(f"the layer scan knows {', '.join(SCANNED)}, got {method!r}")
    prompts = list(prompts)
    if not prompts:
        raise InputError("the layer scan needs at least one prompt (or give the layer)")
    candidates = scan_candidates(residual.delta.shape[0])
    rates: dict[int, dict[str, float]] = {}
    with tqdm(
        total=len(candidates) * len(prompts),
        desc=f"{method} layer scan",
        unit="answer",
        disable=not progress,
        leave=False,
    ) as bar:
        for layer in candidates:
            bar.set_postfix_str(f"layer {layer}")
            with _full_strength(model, residual, method, layer, config, layout):
                answers = _answers(model, tokenizer, prompts, config, bar)
            judged = judge_answers(prompts, answers, judge)
            rates[layer] = {str(k): v for k, v in judged.rates.items()}
    chosen = min(rates, key=lambda layer: scan_rank(rates[layer], layer))
    logger.info(
        "%s layer scan (compliance, degenerate, refusal): %s -> layer %d",
        method,
        {k: (v["compliance"], v["degenerate"], v["refusal"]) for k, v in rates.items()},
        chosen,
    )
    return LayerScan(method=method, rates=rates, chosen=chosen, n_prompts=len(prompts))


def _answers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    config: SweepConfig,
    bar: tqdm[Any],
) -> list[str]:
    """Greedy scan answers, batch by batch so that the bar moves while a layer is answered."""
    answers: list[str] = []
    for start in range(0, len(prompts), config.batch_size):
        chunk = prompts[start : start + config.batch_size]
        answers += generate(
            model,
            tokenizer,
            chunk,
            max_new_tokens=min(SCAN_MAX_NEW_TOKENS, config.max_new_tokens),
            batch_size=config.batch_size,
            **config.rendering.as_kwargs(),
        )
        bar.update(len(chunk))
    return answers


@contextmanager
def _full_strength(
    model: PreTrainedModel,
    residual: ContrastVectors,
    method: ScannedMethod,
    layer: int,
    config: SweepConfig,
    layout: ModelLayout,
) -> Iterator[None]:
    """The method at s = 1 with its vector taken from `layer` (what the sweep's s = 1 runs)."""
    if method == "caa":
        caa = CAA.fit(residual, layer=layer, normalize=config.caa_normalize)
        positions: Positions = "prompt" if config.caa_positions == "prompt" else "all"
        with caa.steer(model, -1.0, positions=positions, layout=layout):
            yield
    else:
        with DirectionAblation.fit(residual, layer=layer).steer(model, 1.0, layout=layout):
            yield
