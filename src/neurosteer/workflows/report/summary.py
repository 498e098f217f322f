"""The table: one row per (method, strength) from a run's results.jsonl.

Random-control points are averaged over their seeds (`n_seeds` says how many). The shared
unsteered point is the "baseline" row at s = 0; curves in the figures start from it. MMLU Δ is
each point's accuracy minus the baseline's (a fraction, not points). Reads files only.

`at_matched_refusal` picks the headline comparison: each method at matched harmful refusal.
The target is the lowest harmful refusal CNA reaches in the sweep (the method under study;
usually at s = 1), or, in a sweep without CNA, the lowest level every method reaches (the
largest of the methods' minima). Each method is shown at its point with the smallest mean KL
among those at or below the target (ties: the smaller strength), so methods are compared by
what the same refusal removal costs them; a method that never gets that low is shown at its
lowest refusal (ties: the smaller KL) and marked as not reaching the target.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neurosteer.errors import InputError
from neurosteer.workflows.sweep.config import BASELINE, METHODS
from neurosteer.workflows.sweep.store import RESULTS_FILE, read_results

SUMMARY_FILE = "summary.csv"

COLUMNS = (
    "method",
    "strength",
    "knob",
    "n_seeds",
    "harmful_refusal",
    "harmful_compliance",
    "harmful_degenerate",
    "harmful_distinct4",
    "harmless_refusal",
    "harmless_compliance",
    "harmless_degenerate",
    "harmless_distinct4",
    "kl_first",
    "kl_mean",
    "mmlu_acc",
    "mmlu_delta",
)
"""The columns of summary.csv, in order."""

Row = dict[str, Any]


def summarise(run_dir: str | Path, *, write: bool = True) -> list[Row]:
    """One row per (method, strength), baseline first; writes RUN/summary.csv unless `write`
    is False.

    Example:
        >>> rows = summarise("runs/llama-1b")
        >>> [(r["method"], r["strength"], r["harmful_refusal"]) for r in rows][:2]
    """
    folder = Path(run_dir)
    records = read_results(folder)
    if not records:
        raise InputError(f"'{folder}' has no finished points ({RESULTS_FILE} is missing or empty)")
    groups: dict[tuple[str, float], list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        groups[(str(record["method"]), float(record["strength"]))].append(record)
    rows = [_row(method, strength, group) for (method, strength), group in groups.items()]
    rows.sort(key=_order)
    base = next((r for r in rows if r["method"] == BASELINE), None)
    for row in rows:
        base_acc = None if base is None else base["mmlu_acc"]
        acc = row["mmlu_acc"]
        row["mmlu_delta"] = None if acc is None or base_acc is None else acc - base_acc
    if write:
        (folder / SUMMARY_FILE).write_text(to_csv(rows), encoding="utf-8")
    return rows


def curves(rows: list[Row]) -> dict[str, list[Row]]:
    """{method: rows by strength}, each starting from the baseline row at s = 0 if there is one."""
    base = [r for r in rows if r["method"] == BASELINE]
    by_method: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        if row["method"] != BASELINE:
            by_method[row["method"]].append(row)
    return {
        method: sorted(base + points, key=lambda r: float(r["strength"]))
        for method, points in sorted(by_method.items(), key=lambda item: _method_rank(item[0]))
    }


@dataclass(frozen=True)
class Matched:
    """The headline comparison of methods at matched harmful refusal (see the module doc).

    Attributes:
        target: the harmful refusal rate (a fraction) methods are matched at; None when no
            steered point has a refusal rate.
        reference: how the target was set, in words ("the lowest CNA reaches (s = 1)").
        baseline: the unsteered row, or None.
        points: [(row, reaches target)] one per method, in report order.
    """

    target: float | None
    reference: str
    baseline: Row | None
    points: list[tuple[Row, bool]]


#: Rates are means of whole-prompt counts; this absorbs float noise when comparing them.
_RATE_EPS = 1e-9


def at_matched_refusal(rows: list[Row]) -> Matched:
    """Each method's point at matched harmful refusal (see the module doc for the rule).

    Example:
        >>> m = at_matched_refusal(summarise("runs/llama-1b"))
        >>> [(r["method"], r["strength"], ok) for r, ok in m.points]
    """
    base = next((r for r in rows if r["method"] == BASELINE), None)
    by_method = {
        method: [r for r in points if r["method"] != BASELINE and r["harmful_refusal"] is not None]
        for method, points in curves(rows).items()
    }
    by_method = {method: points for method, points in by_method.items() if points}
    if not by_method:
        return Matched(None, "no steered points", base, [])
    lowest = {m: min(p, key=_lowest_refusal) for m, p in by_method.items()}
    if "cna" in lowest:
        best = lowest["cna"]
        target = float(best["harmful_refusal"])
        reference = f"the lowest harmful refusal CNA reaches (at s = {best['strength']:g})"
    else:
        target = max(float(r["harmful_refusal"]) for r in lowest.values())
        reference = "the lowest harmful refusal every method reaches"
    points: list[tuple[Row, bool]] = []
    for method, candidates in by_method.items():
        reached = [r for r in candidates if r["harmful_refusal"] <= target + _RATE_EPS]
        if reached:
            points.append((min(reached, key=_cheapest), True))
        else:
            points.append((lowest[method], False))
    return Matched(target, reference, base, points)


def _lowest_refusal(row: Row) -> tuple[float, float, float]:
    return float(row["harmful_refusal"]), _kl(row), float(row["strength"])


def _cheapest(row: Row) -> tuple[float, float]:
    return _kl(row), float(row["strength"])


def _kl(row: Row) -> float:
    return float("inf") if row["kl_mean"] is None else float(row["kl_mean"])


def to_csv(rows: list[Row]) -> str:
    """The rows as CSV text (None as an empty cell, floats at full precision)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else row[c] for c in COLUMNS])
    return buffer.getvalue()


def _row(method: str, strength: float, group: list[dict[str, Any]]) -> Row:
    def mean(*path: str) -> float | None:
        values = []
        for record in group:
            value: Any = record
            for key in path:
                value = value.get(key) if isinstance(value, dict) else None
            if isinstance(value, (int, float)):
                values.append(float(value))
        return sum(values) / len(values) if values else None

    knob = group[0].get("knob") or {}
    row: Row = {
        "method": method,
        "strength": strength,
        "knob": f"{knob.get('name', '')}={knob.get('value', 0.0):g}" if knob else "",
        "n_seeds": len(group) if method == "random" else None,
    }
    for split in ("harmful", "harmless"):
        for key in ("refusal", "compliance", "degenerate", "distinct4"):
            row[f"{split}_{key}"] = mean(split, key)
    row["kl_first"] = mean("kl", "first_token")
    row["kl_mean"] = mean("kl", "mean")
    row["mmlu_acc"] = mean("mmlu", "accuracy")
    return row


def _method_rank(method: str) -> int:
    if method == BASELINE:
        return -1
    return METHODS.index(method) if method in METHODS else len(METHODS)


def _order(row: Row) -> tuple[int, str, float]:
    return _method_rank(row["method"]), row["method"], float(row["strength"])
