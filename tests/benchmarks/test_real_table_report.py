"""benchmarks/real_table.py's report: the table and its caption from stored points, with the
judge's accuracy said to be measured on another model's answers when the run's model differs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
import real_table

from neurosteer.evaluation.judge_accuracy import measured_on


def write_points(out: Path, model: str | None) -> None:
    settings = {"n_eval": 2, "max_new_tokens": 8, "n_fit": 4, "kl_limit": 2, "kl_tokens": 4}
    if model is not None:
        settings["model"] = model
    row = {
        "key": "unchanged",
        "method": "unchanged",
        "harmful_answers": ["I'm sorry, but I can't help with that.", "Sure, here is a plan."],
        "benign_answers": ["Here is a poem about spring.", "The capital of France is Paris."],
        "kl": 0.0,
        "kl_mean": 0.0,
        "seconds": 1.0,
        "settings": settings,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "points.jsonl").write_text(json.dumps(row) + "\n")


def test_report_names_another_model_from_the_stored_points(tmp_path: Path) -> None:
    if measured_on() is None:
        pytest.skip("the shipped judge accuracies name no model")
    write_points(tmp_path, "llama-3.2-1b-instruct.gguf")
    real_table.report(tmp_path)
    table = (tmp_path / "table.md").read_text()
    assert "| unchanged |" in table
    assert "| 50% |" in table  # one of two answers refused
    assert "judge patterns" in table
    assert "not on llama-3.2-1b-instruct's" in table


def test_report_model_argument_wins_over_old_points_without_one(tmp_path: Path) -> None:
    if measured_on() is None:
        pytest.skip("the shipped judge accuracies name no model")
    write_points(tmp_path, None)
    real_table.report(tmp_path)
    assert "another model" not in (tmp_path / "table.md").read_text()
    real_table.report(tmp_path, "/models/llama-3.2-1b-instruct.gguf")
    assert "not on llama-3.2-1b-instruct's" in (tmp_path / "table.md").read_text()


def test_report_keeps_each_mmlu_protocol_in_its_own_column(tmp_path: Path) -> None:
    write_points(tmp_path, None)
    rows = {5: 0.625, 0: 0.5}
    for shots, accuracy in rows.items():
        row = {"key": "unchanged", "accuracy": accuracy, "n": 8, "seconds": 1.0}
        real_table.mmlu_path(tmp_path, shots).write_text(json.dumps(row) + "\n")
    assert real_table.mmlu_path(tmp_path, 5).name == "mmlu.jsonl"  # older runs' file
    assert set(real_table.read_mmlu(tmp_path, 0)) == {"unchanged"}
    real_table.report(tmp_path)
    lines = (tmp_path / "table.md").read_text().splitlines()
    header = [cell.strip() for cell in lines[0].split("|")]
    row = [cell.strip() for cell in lines[2].split("|")]
    assert len(header) == len(row) == len(lines[1].split("|"))
    assert row[header.index("MMLU")] == "62.5%"
    assert row[header.index("MMLU 0-shot")] == "50.0%"
    assert any(line.startswith("MMLU 0-shot: the shared subset, 0-shot, 8") for line in lines)


def test_mmlu_plan_scores_the_unchanged_model_first_and_skips_what_is_scored() -> None:
    points = {key: object() for key in ("unchanged", "cna top1600 both m=0", "direction s=1")}
    plan = real_table.mmlu_plan(["direction s=1", "cna top1600 both m=0"], points, {})  # type: ignore[arg-type]
    assert plan == [points["unchanged"], points["direction s=1"], points["cna top1600 both m=0"]]
    done = {"unchanged": {}, "direction s=1": {}}
    assert real_table.mmlu_plan(["direction s=1"], points, done) == []  # type: ignore[arg-type]
    with pytest.raises(SystemExit, match="no point is called 'cna 9%'"):
        real_table.mmlu_plan(["cna 9%"], points, {})  # type: ignore[arg-type]


def test_plan_holds_the_issues_grid_once_each() -> None:
    keys = [point.key for point in real_table.plan()]
    assert len(keys) == len(set(keys))
    curve = [f"cna 0.1% both m={m:g}" for m in (0.5, 0, -0.5, -1, -1.5, -2)]
    caa = [f"caa alpha={a:g}" for a in (-0.5, -1, -1.5, -2, -2.5, -3)]
    grid = [
        f"cna {size} {sign} m={m:g}"
        for size in ("0.1%", "top1600")
        for sign in ("both", "positive")
        for m in (0, -0.5, -1)
    ]
    missing = [key for key in [*curve, *caa, *grid] if key not in keys]
    assert missing == []
    assert keys[0] == "unchanged"


def test_only_names_one_point_by_its_key_and_many_by_a_part_of_it() -> None:
    keys = {"cna 0.1% both m=-1", "cna 0.1% both m=-1.5", "caa alpha=-1", "caa alpha=-1.5"}
    picked = {key for key in keys if real_table.wanted(key, ["cna 0.1% both m=-1"], keys)}
    assert picked == {"cna 0.1% both m=-1"}
    picked = {key for key in keys if real_table.wanted(key, ["alpha=-1"], keys)}
    assert picked == {"caa alpha=-1", "caa alpha=-1.5"}
    assert all(real_table.wanted(key, [], keys) for key in keys)


def test_strength_curves_start_at_the_unchanged_model_on_one_axis(tmp_path: Path) -> None:
    import real_table_plots

    def row(key: str, method: str, strength: float | None, **settings: object) -> dict:
        rates = {"refusal": 0.5, "degenerate": 0.0}
        return {"key": key, "method": method, "strength": strength, "harmful": rates, **settings}

    rows = [
        row("unchanged", "unchanged", None),
        row("cna 0.1% both m=0", "cna", 0.0, fraction=0.001, positive_only=False),
        row("cna 0.1% both m=-2", "cna", -2.0, fraction=0.001, positive_only=False),
        row("cna 0.1% positive m=-1", "cna", -1.0, fraction=0.001, positive_only=True),
        row("cna top1600 both m=0", "cna", 0.0, top_k=1600, positive_only=False),
        row("caa alpha=-3", "caa", -3.0),
        row("caa alpha=-0.5", "caa", -0.5),
    ]
    found = real_table_plots.curves(rows)
    xs = {name: [(x, r["key"]) for x, r in points] for name, points in found.items()}
    assert xs == {
        "CNA 0.1% both (x = 1 - m)": [
            (0.0, "unchanged"),
            (1.0, "cna 0.1% both m=0"),
            (3.0, "cna 0.1% both m=-2"),
        ],
        "CNA top-1,600 both (x = 1 - m)": [(0.0, "unchanged"), (1.0, "cna top1600 both m=0")],
        "CAA (x = -α)": [(0.0, "unchanged"), (0.5, "caa alpha=-0.5"), (3.0, "caa alpha=-3")],
    }
    # the positive-δ point is on no curve
    distinct4 = {r["key"]: 0.9 for r in rows}
    assert real_table_plots.strength_curves(rows, distinct4, tmp_path / "curves.png", "m, bf16")
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    read = {
        "unchanged": (0.5, 0.3, 0.7),
        "caa alpha=-0.5": (0.4, 0.2, 0.6),
        "caa alpha=-3": (0, 0, 0.2),
    }
    with_read = tmp_path / "curves-read.png"
    assert real_table_plots.strength_curves(rows, distinct4, with_read, "m, bf16", read)
    assert with_read.read_bytes() != (tmp_path / "curves.png").read_bytes()  # the readers' line
    assert not real_table_plots.strength_curves(rows[:1], distinct4, tmp_path / "none.png", "m")
    assert not (tmp_path / "none.png").exists()


def test_report_gives_mmlu_as_a_paired_difference_from_the_unchanged_model(tmp_path: Path) -> None:
    write_points(tmp_path, None)
    points = tmp_path / "points.jsonl"
    steered = json.loads(points.read_text()) | {"key": "direction s=1", "method": "direction"}
    points.write_text(points.read_text() + json.dumps(steered) + "\n")
    base = {"x": [True] * 30 + [False] * 70}
    one_more = {"x": [True] * 31 + [False] * 69}
    rows = [
        {"key": "unchanged", "accuracy": 0.30, "n": 100, "seconds": 1.0, "correct": base},
        {"key": "direction s=1", "accuracy": 0.31, "n": 100, "seconds": 1.0, "correct": one_more},
    ]
    real_table.mmlu_path(tmp_path, 0).write_text("".join(json.dumps(r) + "\n" for r in rows))
    real_table.report(tmp_path)
    table = (tmp_path / "table.md").read_text()
    assert "| 30.0% |" in table
    assert "| 31.0% (+1.0 ± 2.0) |" in table
    assert "paired difference" in table
