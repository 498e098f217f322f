"""The figures of benchmarks/real_table.py's report, drawn from its stored points.

`refusal_vs_kl`: every point's harmful refusal against its first-token KL. `strength_curves`: the
paper's robustness claim, refusal, degenerate share and distinct-4 as the steering gets stronger,
for CNA at the paper's default (m from 1 down), at the reference's top-1,600, and for CAA (α from
0 down), each starting at the unchanged model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

Curve = list[tuple[float, dict[str, Any]]]


def refusal_vs_kl(rows: list[dict[str, Any]], path: Path, about: str) -> None:
    """Every point's harmful refusal against its first-token KL, each labelled by its key;
    `about` (the model and dtype) goes in the title."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 6))
    ax = fig.add_subplot()
    for method in sorted({row["method"] for row in rows}):
        chosen = [row for row in rows if row["method"] == method]
        ax.scatter(
            [row["kl"] for row in chosen],
            [row["harmful"]["refusal"] for row in chosen],
            label=method,
        )
    for row in rows:
        label = row["key"].removeprefix("cna ").replace("circuit ", "")
        ax.annotate(
            Path(label).name if "/" in label else label,
            (row["kl"], row["harmful"]["refusal"]),
            fontsize=6,
            xytext=(3, 3),
            textcoords="offset points",
        )
    ax.set_xscale("symlog", linthresh=0.01)  # linear below 0.01 nats, logarithmic above
    ax.set_xlabel("KL to the unchanged model on benign prompts (nats, first token; symlog)")
    ax.set_ylabel("harmful prompts refused")
    ax.set_title(f"JailbreakBench, {about}: refusal vs KL")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def curves(rows: list[dict[str, Any]]) -> dict[str, Curve]:
    """The strength curves in `rows`, each a list of (strength from none, row) sorted by strength.

    Strength from none puts both methods on one axis: 1 - m for CNA (m = 1 is the unchanged
    model, m = -2 is 3) and -α for CAA. A curve with no measured point is left out.
    """
    unchanged = [row for row in rows if row["method"] == "unchanged"]
    found: dict[str, Curve] = {
        "CNA 0.1% both (x = 1 - m)": [],
        "CNA top-1,600 both (x = 1 - m)": [],
        "CAA (x = -α)": [],
    }
    for row in rows:
        both = row["method"] == "cna" and not row.get("positive_only")
        if both and row.get("fraction") == 0.001:
            found["CNA 0.1% both (x = 1 - m)"].append((1 - row["strength"], row))
        elif both and row.get("top_k") == 1600:
            found["CNA top-1,600 both (x = 1 - m)"].append((1 - row["strength"], row))
        elif row["method"] == "caa":
            found["CAA (x = -α)"].append((-row["strength"], row))
    return {
        name: sorted([(0.0, row) for row in unchanged[:1]] + points, key=lambda p: p[0])
        for name, points in found.items()
        if points
    }


def strength_curves(
    rows: list[dict[str, Any]],
    distinct4: dict[str, float],
    path: Path,
    about: str,
    read: dict[str, tuple[float, float, float]] | None = None,
) -> bool:
    """Draw `curves(rows)` (refusal, degenerate share, distinct-4 of the harmful answers, keyed
    by point in `distinct4`) to `path`, `about` (the model and dtype) in the title; False, and
    no file, when there is no curve. `read` ({point: (share, low, high)}, readers' refusal
    rates with their interval) adds each curve's read points to the refusal panel, dashed."""
    from matplotlib.figure import Figure

    found = curves(rows)
    if not found:
        return False
    fig = Figure(figsize=(11, 3.6))
    panels = fig.subplots(1, 3)
    measures = [
        ("harmful refused", lambda row: row["harmful"]["refusal"]),
        ("degenerate answers", lambda row: row["harmful"]["degenerate"]),
        ("distinct-4", lambda row: distinct4[row["key"]]),
    ]
    for ax, (label, value) in zip(panels, measures, strict=True):
        for name, points in found.items():
            ax.plot([x for x, _ in points], [value(row) for _, row in points], "o-", label=name)
        ax.set_xlabel("strength from none (1 - m for CNA, -α for CAA)")
        ax.set_title(label)
        if label != "distinct-4":  # shares of the answers
            ax.set_ylim(-0.03, 1.03)
    for index, (name, points) in enumerate(found.items()):
        seen = [(x, read[row["key"]]) for x, row in points if read and row["key"] in read]
        if len(seen) < 2:
            continue
        shares = [share for _, (share, _, _) in seen]
        below = [share - low for _, (share, low, _) in seen]
        above = [high - share for _, (share, _, high) in seen]
        panels[0].errorbar(
            [x for x, _ in seen],
            shares,
            yerr=[below, above],
            fmt="s--",
            color=f"C{index}",
            alpha=0.6,
            capsize=2,
            label=f"{name}, read",
        )
    panels[0].set_title(
        "harmful refused (solid: judge; dashed: readers)" if read else "harmful refused"
    )
    panels[0].legend(fontsize=6)
    fig.suptitle(f"Steering strength: refusal against fluency (JailbreakBench harmful, {about})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True
