"""Checks of sample.py on a small invented points file (benchmarks/judge_labels/sample.py).

The answers are invented here; the prompts are written to a temporary JailbreakBench-shaped
folder, so nothing depends on the shared data.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks" / "judge_labels"))
import sample

N_EVAL = 6
ANSWERS = (
    "I'm sorry, but I can't help with that.",
    "Sure, here is the plan: first gather the parts, then assemble them.",
    "the the the the the the the the the the the the the the the the",
)


def write_data(root: Path) -> Path:
    folder = root / "data" / "jailbreakbench"
    folder.mkdir(parents=True)
    for name in sample.JBB_FILES.values():
        rows = ["Index,Goal,Target,Behavior,Category,Source"]
        rows += [f"{i + 1},Task {i} of {name},t,b,c,s" for i in range(N_EVAL + 2)]
        (folder / name).write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root / "data"


def point(key: str, method: str, shift: int) -> dict[str, Any]:
    def answers(prompt_set: str) -> list[str]:
        return [f"{ANSWERS[(i + shift) % 3]} ({prompt_set} {i} {key})" for i in range(N_EVAL)]

    return {
        "key": key,
        "method": method,
        "settings": {"n_eval": N_EVAL},
        "harmful_answers": answers("harmful"),
        "benign_answers": answers("benign"),
    }


def write_points(path: Path, points: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(p) + "\n" for p in points), encoding="utf-8")
    return str(path)


def read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def run(out: Path, data: Path, per_model: int, *sources: str) -> None:
    argv = ["--out", str(out), "--data", str(data), "--per-model", str(per_model)]
    for source in sources:
        argv += ["--source", source]
    sample.main(argv)


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path, str]:
    data = write_data(tmp_path)
    points = [
        point("unchanged", "unchanged", 0),
        point("cna m=-1", "cna", 1),
        point("caa alpha=-1", "caa", 2),
    ]
    small = write_points(tmp_path / "small.jsonl", points)
    return tmp_path / "out", data, small


def test_sample_is_stratified_stable_and_appends(setup: tuple[Path, Path, str]) -> None:
    out, data, small = setup
    run(out, data, 20, f"m1={small}")
    first = read(out / "answers.jsonl")
    assert len(first) == 20
    assert sum(r["set"] == "harmful" for r in first) == 17  # round(20 * 0.85)
    # every (family, verdict) cell of the harmful set got answers: 3 x 3 cells, 17 answers
    cells = {(r["family"], r["phrase_label"]) for r in first if r["set"] == "harmful"}
    assert len(cells) == 9
    for row in first:
        assert row["prompt"] == f"Task {row['prompt_index']} of {sample.JBB_FILES[row['set']]}"
        assert row["answer_tokens_unit"] == "words"
        assert row["half"] in ("dev", "heldout")
    assert len({r["id"] for r in first}) == 20

    # the same draw in a fresh folder gives the same ids
    run(out.parent / "again", data, 20, f"m1={small}")
    assert [r["id"] for r in read(out.parent / "again" / "answers.jsonl")] == [
        r["id"] for r in first
    ]

    # a second model appends; the first model's records stay byte for byte
    other = write_points(out.parent / "other.jsonl", [point("unchanged", "unchanged", 1)])
    before = (out / "answers.jsonl").read_text(encoding="utf-8")
    run(out, data, 20, f"m1={small}", f"m2={other}")
    after = (out / "answers.jsonl").read_text(encoding="utf-8")
    assert after.startswith(before)
    added = read(out / "answers.jsonl")[20:]
    assert {r["model"] for r in added} == {"m2"}
    assert {r["batch"] for r in added} == {2}
    view = read(out / "reader_view-2.jsonl")
    assert sorted(r["id"] for r in view) == sorted(r["id"] for r in added)
    assert all(set(r) == {"id", "prompt", "answer"} for r in view)


def test_identical_texts_are_drawn_once(tmp_path: Path) -> None:
    data = write_data(tmp_path)
    same = [point("unchanged", "unchanged", 0), point("random m=0", "random", 0)]
    for p in same:  # the two points answer every prompt with the identical text
        p["harmful_answers"] = [a.rsplit(" (", 1)[0] for a in p["harmful_answers"]]
    source = write_points(tmp_path / "same.jsonl", same)
    run(tmp_path / "out", data, 100, f"m={source}")
    rows = [r for r in read(tmp_path / "out" / "answers.jsonl") if r["set"] == "harmful"]
    assert len(rows) == N_EVAL
    assert all(len(r["same_text_points"]) == 1 for r in rows)


def test_bad_source_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        run(tmp_path / "out", tmp_path, 10, f"m={tmp_path / 'missing.jsonl'}")
    assert raised.value.code == 2
    assert "does not exist" in capsys.readouterr().err
