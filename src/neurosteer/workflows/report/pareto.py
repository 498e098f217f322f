"""A search's figure: refusal + degenerate against KL, with the baselines.

Every finished trial (grey), the Pareto front (a line), CAA and directional ablation at their
strengths (labelled with s), and the unchanged model (a star at KL 0), all measured on the same
held-out prompts by the same judge and KL reference. The KL axis is logarithmic above 10⁻³
nats and linear below it (so KL 0 has a place). Reads a `SearchResult`; never a model. Drawn on
a plain `Figure` (no pyplot), like `report.plots`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from matplotlib.figure import Figure

if TYPE_CHECKING:
    from neurosteer.workflows.optimization.run import SearchResult

_DPI = 100
_NAMES = {"caa": "CAA (α = −s)", "direction": "directional ablation (share s)"}


def pareto_figure(result: SearchResult) -> Figure:
    """The refusal-vs-KL figure of a search (see the module docstring)."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    done = [t for t in result.trials if t.not_success is not None]
    ax.scatter(
        [t.kl for t in done],
        [float(t.not_success or 0.0) for t in done],
        s=14,
        color="tab:gray",
        alpha=0.5,
        label=f"CNA trials ({len(done)})",
    )
    front = list(result.pareto)
    ax.plot(
        [t.kl for t in front],
        [float(t.not_success or 0.0) for t in front],
        marker="o",
        color="tab:blue",
        label="CNA Pareto front",
    )
    for method, color in (("caa", "tab:orange"), ("direction", "tab:green")):
        points = sorted((p for p in result.baselines if p.method == method), key=lambda p: p.s)
        if not points:
            continue
        xs, ys = [p.kl for p in points], [p.not_success for p in points]
        ax.plot(xs, ys, marker="s", color=color, label=f"{_NAMES[method]}, layer {points[0].layer}")
        for p, x, y in zip(points, xs, ys, strict=True):
            ax.annotate(f"{p.s:g}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if result.unchanged is not None:
        ax.scatter(
            [0.0],
            [result.unchanged["refusal"] + result.unchanged["degenerate"]],
            marker="*",
            s=120,
            color="black",
            label="unchanged model",
        )
    ax.set_xscale("symlog", linthresh=1e-3)
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("KL to the unchanged model on held-out negative prompts (nats)")
    ax.set_ylabel("refused + degenerate share (held-out positives)")
    ax.set_title("Search: refusal vs KL (lower left is better)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def write_pareto_plot(result: SearchResult, path: str | Path) -> Path:
    """Draw `pareto_figure(result)` to a PNG file."""
    pareto_figure(result).savefig(path, dpi=_DPI)
    return Path(path)
