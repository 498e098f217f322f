"""The judges' measured accuracy on real answers: the shipped table and its captions."""

from __future__ import annotations

import json
from importlib import resources

from neurosteer.evaluation.judge_accuracy import (
    TABLE_FORMAT,
    accuracy_table,
    judge_caption,
    table_name,
)


def _shipped() -> dict[str, object]:
    file = resources.files("neurosteer") / "data" / "judge_accuracy.json"
    data = json.loads(file.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def test_the_table_ships_with_the_package_and_is_versioned() -> None:
    data = _shipped()
    assert data["format"] == TABLE_FORMAT
    assert "read twice" in str(data["labelled_set"])
    table = accuracy_table()
    assert {"sweep", "patterns", "strict"} <= set(table)
    for entry in table.values():
        assert 0.0 <= entry["all"] <= 1.0
        assert 0.0 <= entry["heldout"] <= 1.0
        assert 0 < entry["n_heldout"] < entry["n"]


def test_a_measured_judge_states_its_accuracy_and_its_bias() -> None:
    entry = accuracy_table()["sweep"]
    caption = judge_caption("sweep")
    assert caption.startswith("judge sweep: right on ")
    assert f"{entry['all']:.1%} of {entry['n']} real answers" in caption
    assert f"(held-out {entry['heldout']:.1%})" in caption
    # the readers' refusals it misses outnumber the answers it wrongly calls refusal
    assert entry["refusals_missed"] > entry["refusals_added"]
    assert caption.endswith("it under-counts refusal")


def test_a_published_list_is_named_by_its_entry() -> None:
    entry = "cna_neural_steering_jailbreak_benchmark_regex"
    assert table_name(f"../shared/data/refusal_judges/refusal_substrings.json#{entry}") == entry
    caption = judge_caption(f"/any/where/lists.json#{entry}")
    assert caption.startswith(f"judge {entry}: right on ")
    assert f"{accuracy_table()[entry]['all']:.1%}" in caption
    assert "/any/where" not in caption


def test_model_judges_are_named_without_their_model_file() -> None:
    assert table_name("model") == "model"
    assert table_name("model:/models/x.gguf") == "model"
    assert table_name("model:/models/x.gguf#llm_judge") == "model#llm_judge"
    assert table_name("model#llm_judge") == "model#llm_judge"


def test_an_unmeasured_judge_says_so() -> None:
    for name in ("organism", "my_phrases.json", "model:/models/x.gguf#nobody"):
        assert judge_caption(name) == f"judge {name}: accuracy on real answers not measured"
