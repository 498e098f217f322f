"""Faithfulness and completeness of a circuit, under mean ablation, over a sweep of k.

For prompt/target(/contrast) pairs, the metric m is the mean over pairs of the target's logit
minus the contrast's at the last prompt position (the target's logit alone without contrasts).
Mean ablation sets a neuron to its mean activation over the negative prompts. With M every MLP
neuron of the model, C_k the circuit's top-k neurons (its rank order) and m(S) the metric when
only the neurons in S keep their own activations (every other neuron mean-ablated):

    faithfulness(k) = (m(C_k) − m(∅)) / (m(M) − m(∅))
    completeness(k) = (m(M) − m(M ∖ C_k)) / (m(M) − m(∅))

m(M) is the unchanged model and m(∅) the model with every MLP neuron mean-ablated. So
faithfulness is the share of the metric's distance from the all-ablated baseline that the
circuit alone recovers (1: the circuit carries all of it; 0: none), and completeness is the
share lost when only the circuit is ablated (1: nothing outside the circuit carries it). Both are
1 for k = every neuron and 0 for k = 0, by construction. Mean ablation rather than zeroing keeps
the ablated neurons at typical values, so the metric measures information, not a shift of scale.

Positions: "all" (default) ablates every position with the mean over every real token of the
negatives, as steering applies a circuit at every position; "last" ablates only the last prompt
position, with last-token means (where `discover` records; earlier positions run unchanged, so
information reaching the last position through attention survives even m(∅), and m(M) − m(∅)
can be small, which makes both shares unstable: a warning says so).

Mean ablation is an intervention (`neurosteer.methods.mean_ablation.MeanAblation`), applied through
`neurosteer.hooks`' set-to-value edit. docs/relp-and-faithfulness.md says how this differs
from the reference code's threshold sweep.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from neurosteer.errors import InputError
from neurosteer.hooks.positions import Positions
from neurosteer.methods.circuit import Circuit
from neurosteer.methods.mean_ablation import AblationPositions, MeanAblation, mean_activations
from neurosteer.model.calls import model_forward
from neurosteer.model.layout import ModelLayout
from neurosteer.model.runtime import (
    forward_takes,
    input_device,
    model_inputs,
    pad_id,
    run_batches,
    runs_model,
)
from neurosteer.prompts.render import Batch, encode_for_model
from neurosteer.prompts.rendering import Rendering
from neurosteer.prompts.targets import Target, check_pairs, encode_pairs

logger = logging.getLogger(__name__)

_STEPS = (1, 2, 5)


@dataclass(frozen=True)
class FaithfulnessPoint:
    """One k of the sweep: the two shares and the metrics they come from."""

    k: int
    faithfulness: float
    completeness: float
    metric_circuit: float
    """m(C_k): every neuron outside the top-k mean-ablated."""
    metric_without: float
    """m(M ∖ C_k): only the top-k mean-ablated."""


@dataclass(frozen=True)
class FaithfulnessResult:
    """A faithfulness/completeness sweep (see the module docstring for the definitions)."""

    points: tuple[FaithfulnessPoint, ...]
    metric_full: float
    metric_empty: float
    metric: str
    positions: str
    n_pairs: int
    n_negative: int
    total_neurons: int

    def rows(self) -> list[dict[str, float | int]]:
        """One dict per k (the table's rows)."""
        return [asdict(p) for p in self.points]

    def to_dict(self) -> dict[str, object]:
        """Everything, JSON-ready (None where a share is undefined)."""
        meta = {k: v for k, v in asdict(self).items() if k != "points"}
        points = [
            {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}
            for row in self.rows()
        ]
        return {**meta, "points": points}


def default_ks(n: int) -> list[int]:
    """0, 1, 2, 5, 10, 20, 50, ... below n, and n itself."""
    ks, scale = [0], 1
    while scale < n:
        ks += [s * scale for s in _STEPS if s * scale < n]
        scale *= 10
    return [*ks, n]


# over 60 lines: a 18-line signature and 26-line docstring of public arguments; body 33 lines
@runs_model
def measure_faithfulness(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    circuit: Circuit,
    prompts: Sequence[str],
    targets: Sequence[Target] | Target,
    negative: Sequence[str],
    *,
    contrasts: Sequence[Target] | Target | None = None,
    ks: Sequence[int] | None = None,
    positions: AblationPositions = "all",
    batch_size: int = 16,
    chat_template: bool | None = None,
    system: str | None = None,
    template_vars: Mapping[str, Any] | None = None,
    layout: ModelLayout | None = None,
    progress: bool = False,
) -> FaithfulnessResult:
    """Faithfulness and completeness of the circuit's top-k neurons for each k.

    Args:
        model, tokenizer: the model the circuit was found on.
        circuit: any circuit (its rank order gives the top-k; k beyond its size needs its
            kept table, `keep_table=True`).
        prompts, targets, contrasts: the pairs, as in `neurosteer.attribute`.
        negative: prompts whose mean activations replace ablated neurons.
        ks: the sizes to measure (default: `default_ks(len(circuit))`, 0 to the circuit).
        positions: "all" (ablate every position, default) or "last" (the last prompt position).
        batch_size: prompts per forward pass.
        chat_template, system, template_vars: rendering of every prompt; None: as the
            circuit was found.
        layout: as in `Circuit.layout_on`.
        progress: a progress bar over the sweep on stderr.

    Raises:
        InputError: bad pairs, negatives, ks or positions.
        CircuitMismatchError: the circuit does not fit the model.

    Example:
        >>> result = measure_faithfulness(model, tokenizer, circuit, prompts, "I", benign,
        ...                               ks=[10, 50])
        >>> [round(p.faithfulness, 2) for p in result.points]
        [0.41, 0.87]
    """
    if positions not in ("last", "all"):
        raise InputError(f"positions must be 'last' or 'all', got {positions!r}")
    prompts, target_list, contrast_list = check_pairs(prompts, targets, contrasts)
    negative = _check_negative(negative)
    layout = circuit.layout_on(model, layout)
    ranked = _ranked(circuit, ks)
    recorded = circuit.settings
    rendering = Rendering(
        chat_template=recorded.chat_template if chat_template is None else chat_template,
        system=recorded.system if system is None else system,
        template_vars=recorded.template_vars if template_vars is None else template_vars,
    )
    pairs = encode_pairs(
        model, tokenizer, prompts, target_list, contrast_list, **rendering.as_kwargs()
    )
    neg_ids = encode_for_model(model, tokenizer, negative, **rendering.as_kwargs())
    pad = pad_id(tokenizer)
    means = mean_activations(model, layout, neg_ids, positions, batch_size=batch_size, pad=pad)
    measure = _Measure(model, layout, pairs.token_ids, pairs.targets, pairs.contrasts, means)
    measure.options(positions, batch_size, pad)
    none = torch.zeros(layout.n_layers, layout.d_mlp, dtype=torch.bool)
    full, empty = measure(none), measure(~none)
    points = _points(measure, ranked, none, full, empty, progress)
    return FaithfulnessResult(
        points=points,
        metric_full=full,
        metric_empty=empty,
        metric="logit(target) - logit(contrast)" if contrast_list else "logit(target)",
        positions=positions,
        n_pairs=len(prompts),
        n_negative=len(negative),
        total_neurons=layout.n_neurons,
    )


def _points(
    measure: _Measure,
    ranked: _Ranked,
    none: torch.Tensor,
    full: float,
    empty: float,
    progress: bool,
) -> tuple[FaithfulnessPoint, ...]:
    """One point per k of `ranked`: the metric with only the top k kept and with them
    ablated, as shares of m(M) − m(∅) (`full` − `empty`). `none` is the [n_layers, d_mlp]
    all-False mask. Warns when that span is too small for stable shares."""
    span = full - empty
    if abs(span) < 0.05 * max(1.0, abs(full)):
        logger.warning(
            "the metric barely moves when every neuron is ablated (m(M) = %.4g, m(∅) = %.4g), so "
            "the shares are unstable; try positions='all' or a contrast token",
            full,
            empty,
        )
    points = []
    for k in tqdm(ranked.ks, desc="faithfulness", unit="k", disable=not progress, leave=False):
        inside = none.clone()
        inside[ranked.layers[:k], ranked.neurons[:k]] = True
        with_circuit, without = measure(~inside), measure(inside)
        points.append(
            FaithfulnessPoint(
                k=k,
                faithfulness=_share(with_circuit - empty, span),
                completeness=_share(full - without, span),
                metric_circuit=with_circuit,
                metric_without=without,
            )
        )
    return tuple(points)


def _share(part: float, span: float) -> float:
    return part / span if abs(span) > 1e-12 else math.nan


def _check_negative(negative: Sequence[str]) -> list[str]:
    if isinstance(negative, str) or not isinstance(negative, Sequence):
        raise InputError("the negative prompts must be a list of strings")
    cleaned = [p for p in negative if isinstance(p, str) and p.strip()]
    if not cleaned or len(cleaned) != len(negative):
        raise InputError("give at least one negative prompt, none of them empty")
    return cleaned


@dataclass(frozen=True)
class _Ranked:
    layers: torch.Tensor
    neurons: torch.Tensor
    ks: list[int]


def _ranked(circuit: Circuit, ks: Sequence[int] | None) -> _Ranked:
    """The neurons in rank order, as many as the largest k needs, and the checked ks."""
    chosen = default_ks(len(circuit)) if ks is None else sorted(set(ks))
    if not chosen or chosen[0] < 0:
        raise InputError(f"k must be 0 or more, got {list(ks or [])}")
    largest = chosen[-1]
    if largest <= len(circuit):
        return _Ranked(circuit.layers, circuit.neurons, chosen)
    if circuit.table is None:
        raise InputError(
            f"k={largest} is more than the circuit's {len(circuit)} neurons and it keeps no "
            "table to rank more; use k up to its size, or find it again with --keep-table"
        )
    wider = circuit.reselect(top_k=largest)
    return _Ranked(wider.layers, wider.neurons, chosen)


class _Measure:
    """m(·): the mean metric over the pairs with the given neurons mean-ablated."""

    def __init__(
        self,
        model: PreTrainedModel,
        layout: ModelLayout,
        token_ids: list[list[int]],
        targets: list[int],
        contrasts: list[int] | None,
        means: torch.Tensor,
    ) -> None:
        self.model, self.layout, self.token_ids, self.means = model, layout, token_ids, means
        self.targets = torch.tensor(targets)
        self.contrasts = None if contrasts is None else torch.tensor(contrasts)
        self.keep = {"logits_to_keep": 1} if forward_takes(model, "logits_to_keep") else {}
        self.options("last", 16, 0)

    def options(self, positions: AblationPositions, batch_size: int, pad: int) -> None:
        self.positions, self.batch_size, self.pad = positions, batch_size, pad

    def __call__(self, ablated: torch.Tensor) -> float:
        values = torch.zeros(len(self.token_ids))
        device = input_device(self.model)

        def attempt(batch: Batch) -> torch.Tensor:
            ids, mask = batch.input_ids.to(device), batch.attention_mask.to(device)
            inputs = model_inputs(self.model, ids, mask)
            out = model_forward(self.model, **inputs, use_cache=False, **self.keep)
            logits = out.logits[:, -1, :].float().cpu()  # [batch, vocab]
            rows = torch.arange(logits.shape[0])
            metric = logits[rows, self.targets[batch.index]]
            if self.contrasts is not None:
                metric = metric - logits[rows, self.contrasts[batch.index]]
            return metric

        def finish(batch: Batch, metric: torch.Tensor) -> None:
            values[batch.index] = metric

        ablation = MeanAblation(ablated, self.means)
        where: Positions = "generated" if self.positions == "last" else "all"
        with (
            torch.inference_mode(),
            ablation.steer(self.model, positions=where, layout=self.layout),
        ):
            run_batches(
                self.token_ids,
                attempt,
                finish,
                batch_size=self.batch_size,
                pad_id=self.pad,
                device=device,
                what="faithfulness",
            )
        return float(values.mean())
