"""The neuron browser: one row per circuit neuron, read from the circuit file (and, for the
logit lens, the model), as a self-contained HTML page or a section of the sweep report.

Per neuron: its rank, layer and index, δ, the standardized score, the sign, whether the
universal filter marked it, the discovery prompts that activate it most and least (with
their activations), the tokens its output column promotes and suppresses (the logit lens,
`neurosteer.methods.logit_lens`; only when a model was given) and a histogram of its
activations on the positive and the negative prompts. The table sorts by any column and
filters by text and sign; on a narrow screen each row becomes a card.

    entries = neuron_entries(circuit, lens)      # one `NeuronEntry` per neuron

`neuron_html` renders them (`neuron_section`), `neuron_page` writes the page of its own.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from neurosteer.methods.circuit import Circuit
from neurosteer.methods.discovery_record import SETS
from neurosteer.methods.logit_lens import NeuronLens

N_EXAMPLES = 3
N_BINS = 12

#: (set, activation, prompt) of one discovery prompt.
Example = tuple[str, float, str]


@dataclass(frozen=True)
class Histogram:
    """Counts of a neuron's activations in `N_BINS` equal bins from `low` to `high`, per
    set ("positive", "negative")."""

    low: float
    high: float
    counts: dict[str, list[int]]


@dataclass(frozen=True)
class NeuronEntry:
    """What the browser shows of one circuit neuron.

    Attributes:
        rank: its place in the circuit (1: the strongest).
        layer, neuron: where it sits.
        delta: mean(positive) − mean(negative) at the last prompt token.
        standardized: δ over the pooled standard deviation; None when unknown (no table and
            no discovery record).
        universal: whether the universal filter marked it; None when not recorded.
        most, least: the discovery prompts with the highest and lowest activations.
        histogram: its activations on both sets; None without a discovery record.
        lens: the tokens it promotes and suppresses; None without a model.
    """

    rank: int
    layer: int
    neuron: int
    delta: float
    standardized: float | None
    universal: bool | None
    most: tuple[Example, ...]
    least: tuple[Example, ...]
    histogram: Histogram | None
    lens: NeuronLens | None


def neuron_entries(
    circuit: Circuit, lens: dict[tuple[int, int], NeuronLens] | None = None
) -> list[NeuronEntry]:
    """One entry per circuit neuron, in the circuit's order; `lens` maps (layer, neuron) to
    its logit lens (`neurosteer.methods.logit_lens.lens_for`)."""
    standardized = _standardized(circuit)
    universal = circuit.universal_mask()
    record = circuit.discovery
    activations = None if record is None else record.activations
    entries = []
    pairs = zip(circuit.layers.tolist(), circuit.neurons.tolist(), strict=True)
    for i, (layer, neuron) in enumerate(pairs):
        most: tuple[Example, ...] = ()
        least: tuple[Example, ...] = ()
        histogram = None
        if record is not None and activations is not None:
            values = {name: activations[name][i] for name in SETS}
            most, least = _examples(values, record.prompts)
            histogram = _histogram(values)
        entries.append(
            NeuronEntry(
                rank=i + 1,
                layer=layer,
                neuron=neuron,
                delta=float(circuit.delta[i]),
                standardized=None if standardized is None else float(standardized[i]),
                universal=None if universal is None else bool(universal[layer, neuron]),
                most=most,
                least=least,
                histogram=histogram,
                lens=None if lens is None else lens.get((layer, neuron)),
            )
        )
    return entries


def _standardized(circuit: Circuit) -> torch.Tensor | None:
    """[k] standardized scores: from the discovery record, else from the full table."""
    record = circuit.discovery
    if record is not None and record.standardized is not None:
        return record.standardized
    if circuit.table is not None:
        return circuit.scores("standardized")[circuit.layers, circuit.neurons]
    return None


def _examples(
    values: dict[str, torch.Tensor], prompts: Mapping[str, tuple[str, ...]]
) -> tuple[tuple[Example, ...], tuple[Example, ...]]:
    """(the N_EXAMPLES prompts of both sets with the highest activations, highest first;
    those with the lowest, lowest first); fewer when the sets are small, never overlapping."""
    pooled: list[Example] = [
        (name, float(v), prompts[name][j])
        for name in SETS
        for j, v in enumerate(values[name].tolist())
    ]
    ranked = sorted(pooled, key=lambda e: (-e[1], e[0], e[2]))
    n = min(N_EXAMPLES, len(ranked) // 2) or min(N_EXAMPLES, len(ranked))
    return tuple(ranked[:n]), tuple(reversed(ranked[-n:]))


def _histogram(values: dict[str, torch.Tensor]) -> Histogram:
    """`N_BINS` equal bins over the range of both sets' activations."""
    both = torch.cat([values[name].float() for name in SETS])
    low, high = float(both.min()), float(both.max())
    if not math.isfinite(low) or not math.isfinite(high):
        low, high = 0.0, 1.0
    if high <= low:
        low, high = low - 0.5, high + 0.5
    counts = {
        name: torch.histc(values[name].float(), bins=N_BINS, min=low, max=high).long().tolist()
        for name in SETS
    }
    return Histogram(low, high, counts)


def circuit_facts(circuit: Circuit, with_lens: bool) -> list[tuple[str, str]]:
    """The page's opening lines: model, method and size, prompt sets, what is missing."""
    settings, record = circuit.settings, circuit.discovery
    counts = ", ".join(f"{n} {info.count}" for n, info in sorted(circuit.prompts.items()))
    out = [
        ("model", circuit.model.name_or_path or circuit.model.architecture),
        ("circuit", f"{len(circuit)} neurons, method {settings.method}, ranked by "
                    f"{'δ' if settings.score == 'diff' else 'standardized score'}"),
        ("prompts", counts or "not recorded"),
    ]  # fmt: skip
    if record is None or record.activations is None:
        missing = "not in this circuit file (found before circuit format 4, or reselected to "
        out.append(("prompt examples", missing + "other neurons): discover it again to see them"))
    if not with_lens:
        lens = "not shown: give the model (--model) to see what each neuron promotes"
        out.append(("logit lens", lens))
    return out
