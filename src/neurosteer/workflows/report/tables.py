"""The tables both pages show, as text cells: the headline comparison at
matched refusal (`summary.at_matched_refusal`) and every point with grouped column titles.
"""

from __future__ import annotations

from typing import Any

from neurosteer.workflows.report.headline import cell, method_label, percent
from neurosteer.workflows.report.summary import Matched, Row

#: The full table's column groups and labels: (group, ((column, label), ...)).
GROUPS: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    ("", (("method", "method"), ("strength", "s"), ("knob", "knob"))),  # seeds: in the method
    *(
        (
            f"{split} prompts",
            (
                (f"{split}_refusal", "refused"),
                (f"{split}_compliance", "complied"),
                (f"{split}_degenerate", "degenerate"),
                (f"{split}_distinct4", "distinct-4"),
            ),
        )
        for split in ("harmful", "harmless")
    ),
    ("KL to unsteered (nats)", (("kl_first", "first token"), ("kl_mean", "mean"))),
    ("MMLU", (("mmlu_acc", "accuracy"), ("mmlu_delta", "Δ"))),
)

#: The headline table: (column, label).
MATCHED_COLUMNS = (
    ("strength", "s"),
    ("harmful_refusal", "harmful refused"),
    ("harmful_compliance", "harmful complied"),
    ("harmful_degenerate", "harmful degenerate"),
    ("harmless_refusal", "harmless refused"),
    ("kl_mean", "mean KL (nats)"),
    ("mmlu_delta", "MMLU Δ"),
)


def matched_note(matched: Matched) -> str:
    """The headline table's explanation: the target and how each row was picked."""
    if matched.target is None:
        return "No steered point has a refusal rate yet."
    base = matched.baseline
    unsteered = (
        ""
        if base is None or base["harmful_refusal"] is None
        else f" The unsteered model refuses {percent(base['harmful_refusal'])}."
    )
    return (
        f"Each method at its lowest-KL point whose harmful refusal is at or below "
        f"{percent(matched.target)}, {matched.reference}; rows marked * never get that low "
        f"and show their lowest refusal instead. Random = mean over its seeds.{unsteered} "
        "Lower refusal with more degenerate answers is breakage, not compliance."
    )


def matched_rows(
    matched: Matched, rows: list[Row], config: dict[str, Any]
) -> list[tuple[str, list[str], bool]]:
    """(label, cells, reaches the target) per headline row, the unsteered model first."""
    columns = [c for c, _ in MATCHED_COLUMNS if c != "mmlu_delta" or has_mmlu(rows)]
    out = []
    points = list(matched.points)
    if matched.baseline is not None:
        points.insert(0, (matched.baseline, True))
    for row, reached in points:
        label = method_label(row["method"], config, row.get("n_seeds"))
        if not reached:
            label += " *"
        out.append((label, [cell(row, c) for c in columns], reached))
    return out


def matched_header(rows: list[Row]) -> list[str]:
    """The headline table's column titles (MMLU Δ only when the sweep measured MMLU)."""
    return ["method"] + [
        label for c, label in MATCHED_COLUMNS if c != "mmlu_delta" or has_mmlu(rows)
    ]


FULL_COLUMNS = tuple(c for _, cols in GROUPS for c, _ in cols)


def full_method(row: Row) -> str:
    """ "cna", or "random (3 seeds)" for a mean over seeds."""
    seeds = row.get("n_seeds")
    return f"{row['method']} ({seeds} seeds)" if seeds else str(row["method"])


def has_mmlu(rows: list[Row]) -> bool:
    """Whether any point has an MMLU accuracy."""
    return any(r.get("mmlu_acc") is not None for r in rows)
