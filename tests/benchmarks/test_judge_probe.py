"""Checks of the probe judge's script (benchmarks/judge_probe.py) on invented answers and features.

The features are random vectors with the label planted at one layer, so a probe that reads the
right layer must beat the others by a wide margin; no model is run.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import judge_probe as jp
import judge_probe_features as jpf
from tiny_models import make_tiny

from neurosteer.hooks.hookset import count_hooks

LOOP = "the cat sat " * 30
PROSE = (
    "Here is a short plan for the garden: clear the weeds, dig the beds, add compost, sow "
    "the seeds in rows and water them every morning until the first leaves show."
)


def test_distinct_n_separates_a_loop_from_prose() -> None:
    assert jp.distinct_n(LOOP, 2) < 0.1
    assert jp.distinct_n(PROSE, 2) > 0.95
    assert jp.distinct_n("", 4) == 1.0  # no n-grams: nothing repeats
    features = jp.repetition_features(LOOP)
    assert len(features) == 5
    assert features[3] < jp.repetition_features(PROSE)[3]  # a loop compresses far better


def test_repeat_rule_threshold_is_fitted_to_the_labels() -> None:
    texts = [LOOP, PROSE, LOOP + " end", PROSE + " More."]
    phrase = ["compliance", "compliance", "refusal", "compliance"]
    gold = ["degenerate", "compliance", "degenerate", "compliance"]
    n, threshold = jp.fit_repeat(phrase, texts, gold)
    got = jp.repeat_rule(phrase, texts, n, threshold)
    assert got == gold
    # a threshold of 0 never fires: the phrase labels come back untouched
    assert jp.repeat_rule(phrase, texts, 2, 0.0) == phrase


def test_vote_and_ensembles() -> None:
    assert jp._vote("refusal", "compliance", "refusal") == "refusal"
    assert jp._vote("compliance", "refusal", "refusal") == "refusal"
    assert jp._vote("compliance", "refusal", "degenerate") == "refusal"  # the probe breaks ties
    cols = {
        "phrase": ["refusal", "compliance", "degenerate"],
        "probe": ["compliance", "refusal", "degenerate"],
        "probe-binary": ["not", "refusal", "not"],
        "repeat": ["refusal", "compliance", "degenerate"],
    }
    assert jp.combine("phrase-refusal-else-probe", cols) == ["refusal", "refusal", "degenerate"]
    # the binary probe says 'not' where the repeat rule says refusal: compliance, not refusal
    assert jp.combine("probe-binary-refusal-else-repeat", cols) == [
        "compliance",
        "refusal",
        "degenerate",
    ]


def test_refusal_rates_per_family() -> None:
    rows = [
        {"family": "cna", "label": "refusal"},
        {"family": "cna", "label": "compliance"},
        {"family": "caa", "label": "refusal"},
    ]
    rates = jp.refusal_rates(["refusal", "refusal", "compliance"], rows)
    assert rates["cna"]["judge"] == 1.0
    assert rates["cna"]["readers"] == 0.5
    assert rates["caa"]["error"] == -1.0
    assert rates["all"]["error"] == pytest.approx(0.0)
    assert rates["random"]["n"] == 0
    assert rates["random"]["judge"] is None


def planted(n: int, layer: int, seed: int) -> tuple[dict[str, Any], np.ndarray]:
    """Random [n, 6, 16] states whose layer `layer` carries the label in three directions."""
    rng = np.random.default_rng(seed)
    y = np.array(jp.LABELS)[np.arange(n) % 3]
    mean = rng.normal(size=(n, 6, 16))
    for k, label in enumerate(jp.LABELS):
        mean[y == label, layer, k] += 3.0
    feats = {"mean": torch.tensor(mean), "last": torch.tensor(rng.normal(size=(n, 6, 16)))}
    return feats, y


def test_probe_grid_finds_the_planted_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jp, "LAYERS", (1, 4))
    monkeypatch.setattr(jp, "POOLINGS", ("mean", "last"))
    monkeypatch.setattr(jp, "CS", (0.1,))
    feats, y = planted(90, layer=4, seed=0)
    best, grid = jp.choose_probe(feats, y)
    assert (best["pooling"], best["layer"]) == ("mean", 4)
    assert best["cv_accuracy"] > 0.85
    others = [g["cv_accuracy"] for g in grid if (g["pooling"], g["layer"]) != ("mean", 4)]
    assert max(others) < 0.6  # chance is 1/3: the unplanted layers know nothing


def invented_rows(y: np.ndarray) -> list[dict[str, Any]]:
    """Labelled rows whose answers the phrase judge reads right, except the covert refusals."""
    texts = {"refusal": "I'm sorry, but I can't help with that.", "compliance": PROSE}
    rows = []
    for i, label in enumerate(y):
        # every third refusal is covert: it reads like compliance, only the states know
        answer = PROSE if label == "refusal" and i % 9 == 0 else texts.get(label, LOOP)
        rows.append(
            {
                "id": f"{i:04d}",
                "prompt": "Write a plan.",
                "answer": answer,
                "label": str(label),
                "kind": "covert" if answer == PROSE and label == "refusal" else str(label),
                "family": jp.FAMILIES[i % len(jp.FAMILIES)],
                "half": "dev" if i % 2 == 0 else "heldout",
            }
        )
    return rows


def test_run_chooses_on_dev_and_scores_heldout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jp, "LAYERS", (1, 4))
    monkeypatch.setattr(jp, "POOLINGS", ("mean",))
    monkeypatch.setattr(jp, "CS", (0.1,))
    feats, y = planted(180, layer=4, seed=1)
    rows = invented_rows(y)
    feats["ids"] = [r["id"] for r in rows]
    result = jp.run(feats, rows, "patterns")
    assert result["n"] == {"dev": 90, "heldout": 90}
    assert result["choices"]["probe"]["layer"] == 4
    held = result["heldout"]
    assert held["probe"]["accuracy"] > 0.85
    # the covert refusals are the phrase judge's misses; the probe gets most of them
    covert = held["probe"]["per_kind"]["covert"].split("/")
    assert int(covert[0]) >= 0.7 * int(covert[1])
    assert held["phrase"]["per_kind"]["covert"].startswith("0/")
    assert f"ensemble:{result['chosen_ensemble']}" in held
    assert set(result["dev_cv"]) >= {"phrase", "probe", "probe-binary", "repeat", "probe-stack"}


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_pooled_states_equal_the_models_hidden_states(family: str) -> None:
    model, tokenizer = make_tiny(family)
    ids, start = jpf.answer_span(tokenizer, "Write a plan.", "Sure: step one, step two.")
    head, _ = jpf.answer_span(tokenizer, "Write a plan.", "")
    assert ids[: len(head) - 1] == head[:-1]
    assert 0 < start < len(ids)
    assert tokenizer.decode(ids[start:]).strip().startswith("Sure")
    layers = list(model.model.layers)[:2]  # stopped after the second of four layers
    before = count_hooks(model)
    mean, last = jpf.pooled_states(model, layers, ids, start)
    assert count_hooks(model) == before  # ours are removed (before the reference pass adds its)
    with torch.no_grad():
        full = model(torch.tensor([ids]), output_hidden_states=True).hidden_states
    for k in range(2):
        torch.testing.assert_close(mean[k], full[k + 1][0, start:].mean(dim=0))
        torch.testing.assert_close(last[k], full[k + 1][0, -1])
