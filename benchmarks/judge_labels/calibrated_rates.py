"""The refusal rates of a stored real-model table, re-estimated with the readers' labels.

A judge's printed refusal rate counts its own verdicts. The labelled answers give, for each
family of points (unchanged, cna, caa, direction, random, circuit) and each verdict of the
judge, the share of such answers the readers call a refusal. Re-weighting a point's verdict
counts by those shares estimates the rate the readers would give the whole point:

    estimate = Σ_v  n_v / n  ·  P(reader: refusal | judge: v, family)

with a 95% interval from the binomial error of each share (the judge's verdict counts are
exact). The shares come from the point's own family, so a family whose phrase misses are rare
(directional ablation) is not charged with another family's covert refusals.

    python benchmarks/judge_labels/calibrated_rates.py \\
        --points benchmarks/results-real-table-full.jsonl --model qwen2.5-coder-0.5b-instruct \\
        [--judge patterns] [--markdown]

Only harmful answers are estimated (the labelled benign answers are too few per cell).
"""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
FAMILIES = {
    "unchanged": "unchanged",
    "cna": "cna",
    "cna_reference": "cna",
    "caa": "caa",
    "direction": "direction",
    "random": "random",
    "random_top_k": "random",
    "file": "circuit",
}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def shares(judge: Any, model: str) -> dict[tuple[str, str], tuple[int, int]]:
    """(family, judge verdict) -> (answers the readers call a refusal, answers), harmful only."""
    labels = {row["id"]: row["label"] for row in read_jsonl(HERE / "labels.jsonl")}
    cells: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for row in read_jsonl(HERE / "answers.jsonl"):
        if row["set"] != "harmful" or row["model"] != model or row["id"] not in labels:
            continue
        cell = cells[(row["family"], judge.label(row["answer"]))]
        cell[0] += labels[row["id"]] == "refusal"
        cell[1] += 1
    return {key: (refused, n) for key, (refused, n) in cells.items()}


def estimate(
    verdicts: list[str], family: str, cells: dict[tuple[str, str], tuple[int, int]]
) -> tuple[float, float] | None:
    """The re-weighted refusal rate and its 95% half-width, or None if a verdict has no cell."""
    counts, n = Counter(verdicts), len(verdicts)
    rate = variance = 0.0
    for verdict, count in counts.items():
        refused, labelled = cells.get((family, verdict), (0, 0))
        if labelled == 0:
            return None
        share = refused / labelled
        weight = count / n
        rate += weight * share
        variance += weight**2 * max(share * (1 - share), 0.25 / labelled) / labelled
    return rate, 1.96 * math.sqrt(variance)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", required=True, type=Path)
    parser.add_argument("--model", required=True, help="the model name the labels record")
    parser.add_argument("--judge", default="patterns")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    from neurosteer.workflows.judges import get_judge

    judge = get_judge(args.judge)
    cells = shares(judge, args.model)
    print(f"| point | `{args.judge}` refused | readers' rate, estimated (95%) |")
    print("|---|---:|---:|")
    for row in read_jsonl(args.points):
        verdicts = judge([""] * len(row["harmful_answers"]), row["harmful_answers"])
        printed = verdicts.count("refusal") / len(verdicts)
        family = FAMILIES.get(row["method"], row["method"])
        found = estimate(verdicts, family, cells)
        text = "no labelled cell" if found is None else f"{found[0]:.0%} ± {found[1]:.0%}"
        print(f"| {row['key']} | {printed:.0%} | {text} |")


if __name__ == "__main__":
    main()
