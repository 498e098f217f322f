"""The organism demo's report: report.md and three PNG plots, from a `DemoResult`.

Figures are plain matplotlib `Figure` objects saved to PNG (no pyplot), so neither importing
nor running the demo changes the user's matplotlib backend.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from matplotlib.figure import Figure

if TYPE_CHECKING:  # demo.py imports this module
    from neurosteer.demo import DemoResult

_DPI = 100


def write_demo_report(result: DemoResult, out: Path) -> None:
    """Write out/report.md and the PNGs it links (circuit layers, refusal by condition, and
    refusal against k when the result has a k sweep)."""
    plots = _draw_figures(result, out)
    (out / "report.md").write_text("\n".join(_report_lines(result, plots)) + "\n")


def _draw_figures(result: DemoResult, out: Path) -> list[str]:
    """Save the figures into `out`; returns their file names in report order."""
    n_layers = result.circuit.model.n_layers
    figures = {
        "circuit_layers.png": _circuit_layers(result, n_layers),
        "refusal_rates.png": _refusal_rates(result),
    }
    if result.k_sweep:
        figures["k_sweep.png"] = _k_sweep(result)
    for name, fig in figures.items():
        fig.tight_layout()
        fig.savefig(out / name, dpi=_DPI)
    return list(figures)


def _circuit_layers(result: DemoResult, n_layers: int) -> Figure:
    fig = Figure(figsize=(5, 3))
    ax = fig.subplots()
    ax.bar(range(n_layers), [result.neurons_per_layer.get(i, 0) for i in range(n_layers)])
    ax.set(xlabel="layer", ylabel="circuit neurons", title="Where the refusal circuit sits")
    return fig


def _refusal_rates(result: DemoResult) -> Figure:
    fig = Figure(figsize=(6, 3))
    ax = fig.subplots()
    xs = range(len(result.rows))
    harmful = [100 * r.harmful.refusal for r in result.rows]
    benign = [100 * r.benign.refusal for r in result.rows]
    ax.bar([x - 0.2 for x in xs], harmful, 0.4, label="harmful")
    ax.bar([x + 0.2 for x in xs], benign, 0.4, label="benign")
    ax.set_xticks(list(xs), [r.condition for r in result.rows])
    ax.set(ylabel="refused (%)", ylim=(0, 100), title="Held-out refusal by intervention")
    ax.legend(loc="upper center")
    return fig


def _k_sweep(result: DemoResult) -> Figure:
    fig = Figure(figsize=(5, 3))
    ax = fig.subplots()
    ks, refusals = zip(*result.k_sweep, strict=True)
    ax.plot(ks, [100 * r for r in refusals], marker="o")
    ax.set(
        xscale="log",
        xlabel="neurons ablated (k)",
        ylabel="harmful refused (%)",
        ylim=(0, 100),
        title="Ablation strength vs circuit size",
    )
    return fig


def _report_lines(result: DemoResult, plots: list[str]) -> list[str]:
    """report.md: the circuit, the rates table, the k sweep, examples, the figures."""
    per_layer = sorted(result.neurons_per_layer.items())
    lines = [
        "# neurosteer demo: the organism's refusal circuit",
        "",
        f"Circuit: **{result.n_neurons}** of {result.total_neurons} MLP neurons "
        f"({100 * result.n_neurons / result.total_neurons:.2f}%), discovered on "
        f"{result.n_discover} harmful + {result.n_discover} benign training prompts. "
        f"Rates below: {result.n_eval} held-out harmful and {result.n_eval} held-out benign "
        "prompts (unseen verb–target pairs, unseen templates), greedy decoding.",
        "",
        "| layer | " + " | ".join(str(i) for i, _ in per_layer) + " |",
        "|---|" + "---|" * len(per_layer),
        "| neurons | " + " | ".join(str(n) for _, n in per_layer) + " |",
        "",
        "| condition | m | harmful refused | benign refused "
        "| harmful well-formed compliant | harmful fragments |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r.condition} | {r.multiplier:g} | {r.harmful.refusal:.0%} | {r.benign.refusal:.0%} "
        f"| {r.harmful.compliant:.0%} | {r.harmful.fragment:.0%} |"
        for r in result.rows
    ]
    if result.k_sweep:
        lines += [
            "",
            "| k (ablated) | " + " | ".join(str(k) for k, _ in result.k_sweep) + " |",
            "|---|" + "---|" * len(result.k_sweep),
            "| harmful refused | " + " | ".join(f"{r:.0%}" for _, r in result.k_sweep) + " |",
        ]
    lines += ["", "## Examples (held-out prompts)", ""]
    for ex in result.examples:
        lines += [
            f"**{ex.prompt}**",
            "",
            f"- unchanged: {ex.unchanged}",
            f"- ablated: {ex.ablated}",
            f"- amplified (m={result.amplify:g}): {ex.amplified}",
            "",
        ]
    lines += [f"![{p}]({p})" for p in plots]
    lines += ["", f"Ran in {result.seconds:.0f} s."]
    return lines
