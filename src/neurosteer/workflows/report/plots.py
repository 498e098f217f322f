"""The figures: PNG plots of a sweep, drawn on matplotlib `Figure` objects.

    refusal_vs_strength   harmful refusal (solid) and harmless refusal (dashed) per method
    quality_vs_strength   distinct-4 and degenerate share of harmful answers per method
    kl_vs_strength        mean KL (solid) and first-token KL (dashed) per method
    refusal_vs_kl         the trade-off: harmful refusal against mean KL, one curve per method
    mmlu_vs_strength      MMLU accuracy per method (only when the sweep measured it)
    neurons_per_layer     the circuit's neurons in each layer
    delta_histogram       |δ| of every candidate neuron (from the kept table), with the cut-off
    faithfulness_figure   faithfulness and completeness against k (`neurosteer faithfulness`)

Reads summary rows and the saved circuit; never a model. No pyplot: figures are plain
`Figure` objects saved to PNG, so importing or calling this module leaves the user's matplotlib
backend (a notebook's inline one, say) as it was.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from neurosteer.methods.circuit import Circuit
from neurosteer.workflows.report.summary import Row, curves
from neurosteer.workflows.sweep.store import CIRCUIT_DIR

if TYPE_CHECKING:
    from neurosteer.evaluation.faithfulness import FaithfulnessResult

FIGURES_DIR = "figures"
_DPI = 100


def plots(run_dir: str | Path, rows: list[Row]) -> list[Path]:
    """Draw every figure the run's data allows into RUN/figures/; returns the PNG paths."""
    out = Path(run_dir) / FIGURES_DIR
    out.mkdir(exist_ok=True)
    by_method = curves(rows)
    written: list[Path] = []

    def save(fig: Figure, name: str) -> None:
        path = out / f"{name}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=_DPI)
        written.append(path)

    if by_method:
        save(
            _against_strength(
                by_method,
                "harmful_refusal",
                "harmless_refusal",
                "refusal rate",
                "Refusal vs strength (dashed: harmless prompts)",
            ),
            "refusal_vs_strength",
        )
        save(_quality(by_method), "quality_vs_strength")
        save(
            _against_strength(
                by_method,
                "kl_mean",
                "kl_first",
                "KL (nats)",
                "KL to the unsteered model (dashed: first token)",
            ),
            "kl_vs_strength",
        )
        save(_tradeoff(by_method), "refusal_vs_kl")
        if any(r["mmlu_acc"] is not None for r in rows):
            save(
                _against_strength(
                    by_method, "mmlu_acc", None, "MMLU accuracy", "MMLU accuracy vs strength"
                ),
                "mmlu_vs_strength",
            )
    circuit_dir = Path(run_dir) / CIRCUIT_DIR
    if circuit_dir.exists():
        circuit = Circuit.load(circuit_dir)
        save(_neurons_per_layer(circuit), "neurons_per_layer")
        save(_delta_histogram(circuit), "delta_histogram")
    return written


def _label(method: str, points: list[Row]) -> str:
    seeds = max((r["n_seeds"] or 0) for r in points)
    return f"{method} ({seeds} seeds)" if seeds > 1 else method


def _series(points: list[Row], key: str) -> tuple[list[float], list[float]]:
    kept = [r for r in points if r.get(key) is not None]
    return [float(r["strength"]) for r in kept], [float(r[key]) for r in kept]


def _against_strength(
    by_method: dict[str, list[Row]], key: str, dashed: str | None, ylabel: str, title: str
) -> Figure:
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for method, points in by_method.items():
        (line,) = ax.plot(*_series(points, key), marker="o", label=_label(method, points))
        if dashed is not None:
            ax.plot(*_series(points, dashed), linestyle="--", color=line.get_color(), alpha=0.7)
    if key.endswith(("_refusal", "_acc")):  # rates: keep the full 0-1 range in view
        ax.set_ylim(-0.03, 1.03)
    _finish(ax, "strength s", ylabel, title)
    return fig


def _quality(by_method: dict[str, list[Row]]) -> Figure:
    fig = Figure(figsize=(10, 4))
    left, right = fig.subplots(1, 2)
    for method, points in by_method.items():
        left.plot(*_series(points, "harmful_distinct4"), marker="o", label=_label(method, points))
        right.plot(*_series(points, "harmful_degenerate"), marker="o", label=method)
    _finish(left, "strength s", "mean distinct-4", "Quality of harmful-prompt answers")
    _finish(right, "strength s", "degenerate share", "Degenerate answers (harmful prompts)")
    return fig


def _tradeoff(by_method: dict[str, list[Row]]) -> Figure:
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for method, points in by_method.items():
        kept = [r for r in points if r["kl_mean"] is not None and r["harmful_refusal"] is not None]
        xs = [float(r["kl_mean"]) for r in kept]
        ys = [float(r["harmful_refusal"]) for r in kept]
        ax.plot(xs, ys, marker="o", label=_label(method, points))
        for r, x, y in zip(kept, xs, ys, strict=True):
            ax.annotate(
                f"{float(r['strength']):g}",
                (x, y),
                fontsize=7,
                alpha=0.7,
                xytext=(3, 3),
                textcoords="offset points",
            )
    ax.set_ylim(-0.03, 1.03)
    _finish(
        ax,
        "mean KL to the unsteered model (nats)",
        "harmful refusal rate",
        "Refusal vs KL (labels: strength s)",
    )
    return fig


def _neurons_per_layer(circuit: Circuit) -> Figure:
    counts = torch.bincount(circuit.layers, minlength=circuit.model.n_layers).tolist()
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    ax.bar(range(len(counts)), counts, color="tab:blue")
    _finish(
        ax,
        "layer",
        "circuit neurons",
        f"Circuit neurons per layer ({len(circuit)} in all)",
        legend=False,
    )
    return fig


def _delta_histogram(circuit: Circuit) -> Figure:
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    if circuit.table is not None:
        candidates = circuit.candidates()
        values = circuit.table.delta.abs()[candidates]
        title = f"|δ| of {int(candidates.sum())} candidate neurons"
    else:
        values = circuit.delta.abs()
        title = f"|δ| of the {len(circuit)} circuit neurons"
    ax.hist(values.float().numpy(), bins=60, color="tab:gray", log=True)
    if len(circuit):
        ax.axvline(
            float(circuit.delta.abs().min()),
            color="tab:red",
            linestyle="--",
            label=f"cut-off (k = {len(circuit)})",
        )
    _finish(
        ax, "|δ| (mean positive − mean negative)", "neurons (log)", title, legend=len(circuit) > 0
    )
    return fig


def faithfulness_figure(result: FaithfulnessResult) -> Figure:
    """Faithfulness and completeness of the top-k neurons against k (a symlog axis from 0)."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ks = [p.k for p in result.points]
    ax.plot(ks, [p.faithfulness for p in result.points], marker="o", label="faithfulness")
    ax.plot(ks, [p.completeness for p in result.points], marker="s", label="completeness")
    ax.axhline(1.0, color="tab:gray", linestyle=":", linewidth=1)
    ax.axhline(0.0, color="tab:gray", linestyle=":", linewidth=1)
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlim(0, max([1, *ks]) * 1.15)
    _finish(
        ax,
        "k (top-k circuit neurons)",
        "share of m(M) − m(∅)",
        f"Faithfulness and completeness\nmetric {result.metric}; mean ablation at "
        f"{result.positions} positions",
    )
    return fig


def _finish(ax: Axes, xlabel: str, ylabel: str, title: str, *, legend: bool = True) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if legend and ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
