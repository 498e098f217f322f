"""Join two independent readings, measure their agreement, and write the settled labels.

    python benchmarks/judge_labels/agreement.py --reading A.jsonl --reading B.jsonl \\
        [--settled S.jsonl] [-o labels.jsonl] [--disagreements D.jsonl] [--json]

Each reading is JSON lines of `{id, label, kind, note}` over the same ids. Prints the share of
answers on which the readers give the same label (and the same kind), Cohen's κ on the label,
and the confusion between readers. `--disagreements` writes the answers they differ on (both
readings side by side, for a third reading that settles them); `--settled` is that third
reading (`{id, label, kind, note}` for the disagreements only), and `-o` then writes the final
labels: for each id, the agreed label (or the settled one) with both readings kept beside it.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path
from typing import Any

LABELS = ("refusal", "compliance", "degenerate")


def read(path: Path) -> dict[str, dict[str, Any]]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {row["id"]: row for row in rows}


def cohen_kappa(pairs: list[tuple[str, str]]) -> float:
    """Cohen's κ of two raters' labels: (observed - chance agreement) / (1 - chance)."""
    n = len(pairs)
    observed = sum(a == b for a, b in pairs) / n
    first, second = Counter(a for a, _ in pairs), Counter(b for _, b in pairs)
    chance = sum(first[label] * second[label] for label in LABELS) / (n * n)
    return (observed - chance) / (1 - chance) if chance < 1 else 1.0


def agreement(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]]) -> dict[str, Any]:
    ids = sorted(a.keys() & b.keys())
    pairs = [(a[i]["label"], b[i]["label"]) for i in ids]
    same_kind = sum(a[i]["kind"] == b[i]["kind"] for i in ids)
    return {
        "answers": len(ids),
        "only_in_one": len(a.keys() ^ b.keys()),
        "label_agreement": sum(x == y for x, y in pairs) / len(ids),
        "kind_agreement": same_kind / len(ids),
        "cohen_kappa": cohen_kappa(pairs),
        "confusion": {f"{x}/{y}": n for (x, y), n in sorted(Counter(pairs).items())},
    }


def settle(
    a: dict[str, dict[str, Any]],
    b: dict[str, dict[str, Any]],
    settled: dict[str, dict[str, Any]],
) -> list[dict[str, Any]]:
    """The final label of each id: agreed, or the third reading's where the two differ."""
    rows = []
    for i in sorted(a.keys() & b.keys()):
        agreed = a[i]["label"] == b[i]["label"]
        if not agreed and i not in settled:
            raise SystemExit(f"error: {i} is a disagreement with no settled reading")
        final = a[i] if agreed else settled[i]
        kind = final["kind"] if not agreed or a[i]["kind"] == b[i]["kind"] else a[i]["kind"]
        rows.append(
            {
                "id": i,
                "label": final["label"],
                "kind": kind,
                "settled": not agreed,
                "readings": [
                    {"label": r[i]["label"], "kind": r[i]["kind"], "note": r[i].get("note", "")}
                    for r in (a, b)
                ],
                **({"settled_note": settled[i].get("note", "")} if not agreed else {}),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reading", action="append", required=True, type=Path)
    parser.add_argument("--settled", type=Path)
    parser.add_argument("-o", "--output", type=Path)
    parser.add_argument("--disagreements", type=Path)
    parser.add_argument("--view", type=Path, help="reader view (id, prompt, answer) to attach")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if len(args.reading) != 2:
        parser.error("give exactly two --reading files")
    a, b = (read(path) for path in args.reading)
    measured = agreement(a, b)
    print(
        f"{measured['answers']} answers read twice: same label {measured['label_agreement']:.1%}"
        f" (Cohen's κ {measured['cohen_kappa']:.2f}), same kind {measured['kind_agreement']:.1%}"
    )
    print("confusion (reader 1 / reader 2):", measured["confusion"])
    if args.disagreements:
        view = read(args.view) if args.view else {}
        with args.disagreements.open("w") as handle:
            for i in sorted(a.keys() & b.keys()):
                if a[i]["label"] != b[i]["label"]:
                    row = {"id": i, **{k: view[i][k] for k in ("prompt", "answer") if i in view}}
                    row["readings"] = [
                        {k: r[i].get(k, "") for k in ("label", "kind", "note")} for r in (a, b)
                    ]
                    handle.write(json.dumps(row) + "\n")
    if args.output:
        settled = read(args.settled) if args.settled else {}
        rows = settle(a, b, settled)
        args.output.write_text("".join(json.dumps(row) + "\n" for row in rows))
        measured["settled"] = sum(row["settled"] for row in rows)
        print(f"wrote {len(rows)} labels ({measured['settled']} settled by a third reading)")
    if args.json:
        print(json.dumps(measured))


if __name__ == "__main__":
    main()
