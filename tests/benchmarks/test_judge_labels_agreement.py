"""agreement.py (benchmarks/judge_labels): agreement, Cohen's kappa and the settled labels."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks" / "judge_labels"))
import agreement


def write(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    lines = [json.dumps({"id": i, "label": label, "kind": kind}) for i, label, kind in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_kappa_is_one_for_identical_readings_and_zero_at_chance() -> None:
    same = [("refusal", "refusal"), ("compliance", "compliance")] * 5
    assert agreement.cohen_kappa(same) == pytest.approx(1.0)
    # each reader says refusal half the time, independently: observed = chance = 0.5
    chance = [("refusal", "refusal"), ("refusal", "compliance")] * 2 + [
        ("compliance", "refusal"),
        ("compliance", "compliance"),
    ] * 2
    assert agreement.cohen_kappa(chance) == pytest.approx(0.0)


def test_disagreements_are_settled_by_the_third_reading_and_both_readings_kept(
    tmp_path: Path,
) -> None:
    a = write(tmp_path / "a.jsonl", [("1", "refusal", "direct_refusal"), ("2", "compliance", "x")])
    b = write(tmp_path / "b.jsonl", [("1", "refusal", "direct_refusal"), ("2", "refusal", "y")])
    settled = write(tmp_path / "s.jsonl", [("2", "refusal", "covert_redirect")])
    out = tmp_path / "labels.jsonl"
    agreement.main(
        ["--reading", str(a), "--reading", str(b), "--settled", str(settled), "-o", str(out)]
    )
    rows = {row["id"]: row for row in map(json.loads, out.read_text().splitlines())}
    assert rows["1"]["label"] == "refusal"
    assert not rows["1"]["settled"]
    assert rows["2"]["label"] == "refusal"
    assert rows["2"]["kind"] == "covert_redirect"
    assert rows["2"]["settled"]
    assert [r["label"] for r in rows["2"]["readings"]] == [
        "compliance",
        "refusal",
    ]


def test_a_disagreement_without_a_settled_reading_stops(tmp_path: Path) -> None:
    a = write(tmp_path / "a.jsonl", [("1", "refusal", "k")])
    b = write(tmp_path / "b.jsonl", [("1", "compliance", "k")])
    with pytest.raises(SystemExit, match="no settled reading"):
        agreement.main(["--reading", str(a), "--reading", str(b), "-o", str(tmp_path / "o")])
