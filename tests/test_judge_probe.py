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

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import judge_probe as jp

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
