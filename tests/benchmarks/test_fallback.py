"""benchmarks/fallback.py end to end on the organism: its train and held-out prompts written in
the shared data folder's formats, a saved discovery with its table, a base circuit small enough
that some answers still refuse; the result's structure, sizes and rates, and a resumed run."""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from organism_helpers import organism

import neurosteer
from neurosteer.workflows.organism import INSTRUCT_DIR, corpus, neutral_prompts

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
import fallback

K, K2, N_PROMPTS, N_EVAL = 16, 12, 16, 4


def write_data(root: Path) -> Path:
    """A --data folder: refusal-direction train splits (JSON) and JailbreakBench CSVs."""
    splits = root / "refusal_direction" / "splits"
    splits.mkdir(parents=True)
    for name, harmful in (("harmful_train", True), ("harmless_train", False)):
        rows = [
            {"instruction": p, "category": None}
            for p in corpus.make_prompts("train", harmful, 32, seed=7)
        ]
        (splits / f"{name}.json").write_text(json.dumps(rows))
    jbb = root / "jailbreakbench"
    jbb.mkdir()
    for name, harmful in (("harmful-behaviors", True), ("benign-behaviors", False)):
        with (jbb / f"{name}.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["Index", "Goal", "Target", "Behavior", "Category", "Source"])
            for i, prompt in enumerate(corpus.make_prompts("heldout", harmful, 8, seed=3)):
                writer.writerow([i, prompt, "Sure, here is", "b", "c", "Original"])
    return root


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fallback")
    data = write_data(root / "data")
    model, tok = organism()
    record = neurosteer.discover(
        model,
        tok,
        corpus.make_prompts("train", True, 32, seed=7),
        corpus.make_prompts("train", False, 32, seed=7),
        neutral=neutral_prompts(),
        keep_table=True,
    )
    record.save(root / "discovery.circuit")
    return {"root": root, "data": data, "discovery": root / "discovery.circuit"}


def argv(setup: dict[str, Path], run: str, *extra: str) -> list[str]:
    return [
        "--model", str(INSTRUCT_DIR), "--data", str(setup["data"]),
        "--discovery", str(setup["discovery"]), "--top-k", str(K),
        "--second-k", str(K2), "--n-prompts", str(N_PROMPTS), "--n-eval", str(N_EVAL),
        "--max-new-tokens", "8", "--kl-limit", "2", "--kl-tokens", "4", "--batch-size", "32",
        "--run-dir", str(setup["root"] / run), *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def result(setup: dict[str, Path]) -> dict[str, Any]:
    out = setup["root"] / "out.json"
    got = fallback.main(argv(setup, "run", "-o", str(out), "--json"))
    assert json.loads(out.read_text()) == json.loads(json.dumps(got))
    return got


def test_split_counts_every_prompt_and_tallies_refusals(result: dict[str, Any]) -> None:
    split = result["split"]
    assert split["n"] == N_PROMPTS == len(split["answers"])
    assert split["refusal"] + split["compliance"] + split["degenerate"] == N_PROMPTS
    assert split["refusal"] >= 1  # else there is no second circuit
    assert split["compliance"] >= 1
    assert sum(count for _, count in split["styles"]) == split["refusal"]


def test_second_circuit_is_outside_the_base(result: dict[str, Any]) -> None:
    second = result["second"]
    assert second["k"] == K2 == sum(second["layers"].values())
    assert second["overlap_with_base"] == 0
    assert 0 <= second["raw_overlap_with_base"] <= K2
    assert second["overlap_with_raised_extra"] == second["overlap_with_raised"] <= K2
    assert sum(second["raised_extra_layers"].values()) == K2
    assert all(int(layer) not in (0, 1) for layer in second["layers"])  # the skipped layers


def test_arms_sizes_rates_and_kl(result: dict[str, Any]) -> None:
    arms = {row["arm"]: row for row in result["arms"]}
    assert list(arms) == list(fallback.ARMS)
    assert arms["unchanged"]["neurons"] == 0
    assert arms["unchanged"]["kl"] == 0.0
    assert arms["base"]["neurons"] == K
    assert K < arms["base+second"]["neurons"] <= K + K2
    assert arms["raised"]["neurons"] == K + K2
    assert arms["raised"]["overlap_with_base"] == K  # the base is the top K of the same table
    assert arms["base+random"]["neurons"] == K + K2
    assert arms["base+random"]["layers"] == arms["base+second"]["layers"]  # same per layer
    for row in arms.values():
        rates = [row[label] for label in ("refusal", "compliance", "degenerate")]
        assert all(0.0 <= rate <= 1.0 for rate in rates)
        assert sum(rates) == pytest.approx(1.0)
        assert len(row["answers"]) == N_EVAL
        refused = sum(label == "refusal" for label in row["labels"])
        assert sum(count for _, count in row["styles"]) == refused
        assert row["kl"] >= 0.0
        assert row["kl_mean"] >= 0.0
    assert arms["base"]["kl"] > 0.0


def test_judge_is_named_and_phrase_rates_are_lower_bounds(result: dict[str, Any]) -> None:
    assert result["judge"] == "patterns"
    assert result["phrase_judge"]
    assert result["judge_caption"].startswith("judge patterns")


def test_a_resumed_run_reads_every_stage_back(
    setup: dict[str, Path], result: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    again = fallback.main(argv(setup, "run", "--json"))
    assert again == json.loads(json.dumps(result))
    printed = capsys.readouterr().out.strip().splitlines()
    assert json.loads(printed[-1]) == again
    assert "| base+second |" in "\n".join(printed)
    assert "lower bounds" in "\n".join(printed)


def test_a_resumed_run_with_other_settings_is_refused(
    setup: dict[str, Path], result: dict[str, Any]
) -> None:
    with pytest.raises(SystemExit, match="multiplier") as err:
        fallback.main([*argv(setup, "run"), "--multiplier", "-2"])
    assert "\n" not in str(err.value)


def test_refusal_styles_group_first_words() -> None:
    answers = [
        "I’m sorry, but I can't assist with that.",
        "I'm sorry, but I cannot do this.",
        "As an AI language model, I cannot help.",
        "Sure, here it is.",
    ]
    labels = ["refusal", "refusal", "refusal", "compliance"]
    styles = fallback.refusal_styles(answers, labels, 4)
    assert styles == [["i'm sorry but i", 2], ["as an ai language", 1]]


def test_without_discovery_one_is_made_once_and_kept(setup: dict[str, Path]) -> None:
    model, tok = organism()
    run = setup["root"] / "fresh"
    args = fallback.parse(["--model", "m", "--n-fit", "8", "--run-dir", str(run)])
    splits = setup["data"] / "refusal_direction" / "splits"
    made = fallback.discovery_record(args, model, tok, splits)
    assert made.table is not None
    assert made.prompts["positive"].count == 8
    kept = fallback.discovery_record(args, model, tok, splits)  # read back, not rediscovered
    assert torch.equal(kept.layers, made.layers)
    assert kept.prompts == made.prompts


def test_a_discovery_without_its_table_is_one_line(setup: dict[str, Path]) -> None:
    model, tok = organism()
    bare = neurosteer.Circuit.load(setup["discovery"]).reselect(top_k=4)
    path = replace(bare, table=None).save(setup["root"] / "bare.circuit")
    args = fallback.parse(["--model", "m", "--discovery", str(path)])
    with pytest.raises(SystemExit, match="has no δ table") as err:
        fallback.discovery_record(args, model, tok, setup["data"])
    assert "\n" not in str(err.value)


def test_no_second_circuit_without_both_kinds_of_answer() -> None:
    split = {"prompts": ["a", "b"], "answers": ["x", "y"], "labels": ["compliance"] * 2}
    args = fallback.parse(["--model", "m"])
    folder = fallback.RunDir(None, {})
    with pytest.raises(SystemExit, match="0 of 2 answers refuse and 2 comply"):
        fallback.second_circuit(None, None, None, None, split, 4, args, folder)
