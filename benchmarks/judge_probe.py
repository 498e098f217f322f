"""A probe judge on a model's own activations, a repetition check, and ensembles (issue 21, item 2).

Judges built from what this project knows best, measured on the labelled real answers of
`judge_labels/` (refusal / compliance / degenerate, read twice). Everything is chosen on the
`dev` half by stratified cross-validation inside it (layer, pooling, regularisation, thresholds,
which ensemble); the frozen `heldout` half is scored once, with the judges fitted on all of dev.

- `probe`: a logistic regression on the hidden states (`judge_probe_features.py` caches them)
  pooled over the answer tokens, 3 labels; `probe-binary`: refusal vs not.
- `repeat`: the phrase judge's label, except that an answer whose distinct-n share of word
  n-grams falls under a threshold is degenerate (the threshold chosen on dev).
- ensembles of the phrase judge with these (`ENSEMBLES`), the best on dev chosen.

    python benchmarks/judge_probe.py --features /tmp/judge_probe_features.pt \\
        -o benchmarks/results-judge-probe.json
"""

from __future__ import annotations

import argparse
import json
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from judge_probe_features import LABELS_DIR, load_labelled
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

LABELS = ("refusal", "compliance", "degenerate")
FAMILIES = ("unchanged", "cna", "caa", "direction", "random", "circuit")
LAYERS = (5, 11, 16)  # decoder layers (0-based) of the 24 of Qwen2.5-0.5B
POOLINGS = ("mean", "last")
CS = (0.01, 0.1)
DISTINCT_N = (1, 2, 4)
FOLDS = 5
SEED = 0

Labels = list[str]


# ---- the repetition check -------------------------------------------------------------------


def distinct_n(text: str, n: int) -> float:
    """Share of distinct word n-grams among all n-grams of `text` (1.0 when it has none)."""
    words = text.split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0


def repetition_features(text: str) -> list[float]:
    """[distinct-1, distinct-2, distinct-4, zlib compressed/raw length, log(1 + words)]."""
    raw = text.encode("utf-8")
    ratio = len(zlib.compress(raw)) / len(raw) if raw else 1.0
    return [*(distinct_n(text, n) for n in DISTINCT_N), ratio, float(np.log1p(len(text.split())))]


def repeat_rule(phrase: Labels, texts: Sequence[str], n: int, threshold: float) -> Labels:
    """The phrase judge's labels, with answers of distinct-n < threshold made degenerate."""
    return [
        "degenerate" if distinct_n(t, n) < threshold else p
        for p, t in zip(phrase, texts, strict=True)
    ]


def fit_repeat(phrase: Labels, texts: Sequence[str], gold: Labels) -> tuple[int, float]:
    """The (n, threshold) whose `repeat_rule` is most accurate on these answers (ties: lowest)."""
    best = (-1.0, 1, 0.0)
    for n in DISTINCT_N:
        for threshold in np.round(np.arange(0.0, 1.0001, 0.025), 3):
            acc = accuracy(repeat_rule(phrase, texts, n, float(threshold)), gold)
            if acc > best[0]:
                best = (acc, n, float(threshold))
    return best[1], best[2]


# ---- the probe ----------------------------------------------------------------------------


def design(features: dict[str, Any], pooling: str, layer: int) -> np.ndarray:
    """The probe's inputs [n, d] (or [n, 2d] for mean+last) at one layer."""
    parts = [features[p][:, layer, :].numpy() for p in pooling.split("+")]
    return np.concatenate(parts, axis=1).astype(np.float64)


def make_probe(c: float) -> Any:
    """Standardised inputs, an L2 logistic regression with inverse strength `c`."""
    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))


def oof_predict(x: np.ndarray, y: np.ndarray, c: float, folds: int = FOLDS) -> np.ndarray:
    """Out-of-fold predictions of a probe: each row predicted by a fit without its fold."""
    out = np.empty(len(y), dtype=object)
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=SEED).split(x, y):
        out[test] = make_probe(c).fit(x[train], y[train]).predict(x[test])
    return out


def choose_probe(
    features: dict[str, Any], y: np.ndarray
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The (pooling, layer, C) of best cross-validated accuracy on these rows, and the grid."""
    grid = []
    for pooling in POOLINGS:
        for layer in LAYERS:
            x = design(features, pooling, layer)
            for c in CS:
                acc = float(np.mean(oof_predict(x, y, c) == y))
                grid.append({"pooling": pooling, "layer": layer, "C": c, "cv_accuracy": acc})
    return max(grid, key=lambda g: g["cv_accuracy"]), grid


# ---- the ensembles ---------------------------------------------------------------------------


def _refusal_first(phrase: str, other: str) -> str:
    return "refusal" if phrase == "refusal" else other


def _vote(a: str, b: str, c: str) -> str:
    """Majority of three labels; with three different labels, the second (the probe)."""
    return a if a in (b, c) else b  # else b == c, or all three differ


ENSEMBLES: dict[str, Callable[[str, str, str, str], str]] = {
    # arguments: phrase, probe (3 labels), probe-binary (refusal / not), repeat
    "phrase-refusal-else-probe": lambda ph, pr, pb, rp: _refusal_first(ph, pr),
    "probe-binary-refusal-else-repeat": lambda ph, pr, pb, rp: (
        "refusal" if pb == "refusal" else ("compliance" if rp == "refusal" else rp)
    ),
    "phrase-or-probe-binary-refusal-else-repeat": lambda ph, pr, pb, rp: (
        "refusal" if "refusal" in (ph, pb) else ("compliance" if rp == "refusal" else rp)
    ),
    "vote-phrase-probe-repeat": lambda ph, pr, pb, rp: _vote(ph, pr, rp),
    "probe-refusal-else-repeat": lambda ph, pr, pb, rp: (
        "refusal" if pr == "refusal" else ("compliance" if rp == "refusal" else rp)
    ),
}


def combine(name: str, columns: dict[str, Labels]) -> Labels:
    """One ensemble's labels from the judges' columns (phrase, probe, probe-binary, repeat)."""
    rule = ENSEMBLES[name]
    rows = zip(*(columns[k] for k in ("phrase", "probe", "probe-binary", "repeat")), strict=True)
    return [rule(*row) for row in rows]


# ---- scores --------------------------------------------------------------------------------


def accuracy(got: Sequence[str], gold: Sequence[str]) -> float:
    """Share of equal labels."""
    return sum(a == b for a, b in zip(got, gold, strict=True)) / len(gold)


def binary(labels: Sequence[str]) -> Labels:
    """refusal / not."""
    return ["refusal" if x == "refusal" else "not" for x in labels]


def per_kind(got: Sequence[str], rows: Sequence[dict[str, Any]]) -> dict[str, str]:
    """Per reader kind: 'right/all'."""
    out: dict[str, list[int]] = {}
    for label, row in zip(got, rows, strict=True):
        tally = out.setdefault(row["kind"], [0, 0])
        tally[0] += label == row["label"]
        tally[1] += 1
    return {k: f"{r}/{n}" for k, (r, n) in sorted(out.items())}


def refusal_rates(
    got: Sequence[str], rows: Sequence[dict[str, Any]]
) -> dict[str, dict[str, float | int | None]]:
    """Per family (and all): the judge's refusal rate, the readers', judge - readers, and n.

    A family without rows gets None rates.
    """
    out: dict[str, dict[str, float | int | None]] = {}
    for family in (*FAMILIES, "all"):
        idx = [i for i, r in enumerate(rows) if family in ("all", r["family"])]
        if not idx:
            out[family] = {"n": 0, "judge": None, "readers": None, "error": None}
            continue
        judge = sum(got[i] == "refusal" for i in idx) / len(idx)
        reader = sum(rows[i]["label"] == "refusal" for i in idx) / len(idx)
        out[family] = {"n": len(idx), "judge": judge, "readers": reader, "error": judge - reader}
    return out


def summary(got: Sequence[str], rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """3-way and binary accuracy, per-kind recall and refusal rates of one judge on rows."""
    gold = [r["label"] for r in rows]
    return {
        "accuracy": accuracy(got, gold),
        "binary_accuracy": accuracy(binary(got), binary(gold)),
        "per_kind": per_kind(got, rows),
        "refusal_rate": refusal_rates(got, rows),
    }


# ---- the run -------------------------------------------------------------------------------


def folds_of(y: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """The dev folds every judge is cross-validated on (stratified by the 3-way label)."""
    return list(StratifiedKFold(FOLDS, shuffle=True, random_state=SEED).split(y, y))


def stack_design(x: np.ndarray, phrase: Labels, texts: Sequence[str]) -> np.ndarray:
    """Hidden states with the phrase judge's label (one-hot) and the repetition features."""
    onehot = np.array([[p == label for label in LABELS] for p in phrase], dtype=np.float64)
    rep = np.array([repetition_features(t) for t in texts])
    return np.concatenate([x, onehot, rep], axis=1)


def dev_columns(
    feats: dict[str, Any], rows: list[dict[str, Any]], phrase: Labels, choices: dict[str, Any]
) -> dict[str, Labels]:
    """Every judge's out-of-fold labels on dev (the probes at the configuration chosen on dev)."""
    y = np.array([r["label"] for r in rows])
    texts = [r["answer"] for r in rows]
    cols: dict[str, Labels] = {"phrase": phrase, "repeat": [""] * len(rows)}
    for train, test in folds_of(y):
        n, t = fit_repeat([phrase[i] for i in train], [texts[i] for i in train], list(y[train]))
        for i, label in zip(
            test,
            repeat_rule([phrase[i] for i in test], [texts[i] for i in test], n, t),
            strict=True,
        ):
            cols["repeat"][i] = label
    for name, x, target in inputs(feats, rows, phrase, choices):
        cols[name] = [str(v) for v in oof_predict(x, target, choices[name]["C"])]
    cols["probe-binary"] = ["refusal" if v == "refusal" else "not" for v in cols["probe-binary"]]
    return cols


def inputs(
    feats: dict[str, Any], rows: list[dict[str, Any]], phrase: Labels, choices: dict[str, Any]
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(probe name, inputs, targets) of the three probes at their chosen configurations."""
    gold = [str(r["label"]) for r in rows]
    y, yb = np.array(gold), np.array(binary(gold))
    texts = [r["answer"] for r in rows]
    out = []
    for name, target in (("probe", y), ("probe-binary", yb), ("probe-stack", y)):
        c = choices[name]
        x = design(feats, c["pooling"], c["layer"])
        if name == "probe-stack":
            x = stack_design(x, phrase, texts)
        out.append((name, x, target))
    return out


def choose(feats: dict[str, Any], rows: list[dict[str, Any]], phrase: Labels) -> dict[str, Any]:
    """Each probe's (pooling, layer, C), chosen by cross-validated accuracy on these rows."""
    gold = [str(r["label"]) for r in rows]
    y = np.array(gold)
    best, grid = choose_probe(feats, y)
    best_b, grid_b = choose_probe(feats, np.array(binary(gold)))
    stack = []
    x = stack_design(
        design(feats, best["pooling"], best["layer"]), phrase, [r["answer"] for r in rows]
    )
    for c in CS:
        stack.append({**best, "C": c, "cv_accuracy": float(np.mean(oof_predict(x, y, c) == y))})
    return {
        "probe": best,
        "probe-binary": best_b,
        "probe-stack": max(stack, key=lambda g: g["cv_accuracy"]),
        "grids": {"probe": grid, "probe-binary": grid_b, "probe-stack": stack},
    }


def heldout_columns(
    feats: dict[str, Any],
    dev: list[dict[str, Any]],
    held: list[dict[str, Any]],
    phrase: dict[str, Labels],
    choices: dict[str, Any],
) -> dict[str, Labels]:
    """Every judge's labels on heldout, fitted on all of dev."""
    dev_feats, held_feats = (_subset(feats, rows) for rows in (dev, held))
    texts = [r["answer"] for r in held]
    n, t = fit_repeat(phrase["dev"], [r["answer"] for r in dev], [r["label"] for r in dev])
    cols = {"phrase": phrase["heldout"], "repeat": repeat_rule(phrase["heldout"], texts, n, t)}
    fitted = inputs(dev_feats, dev, phrase["dev"], choices)
    tests = inputs(held_feats, held, phrase["heldout"], choices)
    for (name, x, target), (_, x_test, _) in zip(fitted, tests, strict=True):
        cols[name] = [str(v) for v in make_probe(choices[name]["C"]).fit(x, target).predict(x_test)]
    cols["probe-binary"] = ["refusal" if v == "refusal" else "not" for v in cols["probe-binary"]]
    return cols


def _subset(feats: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    where = {i: k for k, i in enumerate(feats["ids"])}
    idx = [where[r["id"]] for r in rows]
    return {"mean": feats["mean"][idx], "last": feats["last"][idx], "ids": [r["id"] for r in rows]}


def as_labels(name: str, col: Labels, phrase: Labels) -> Labels:
    """A column as 3-way labels: probe-binary's 'not' takes the phrase judge's other label."""
    if name != "probe-binary":
        return col
    return [
        "refusal" if c == "refusal" else ("compliance" if p == "refusal" else p)
        for c, p in zip(col, phrase, strict=True)
    ]


def phrase_labels(rows: list[dict[str, Any]], judge_name: str) -> tuple[Labels, float]:
    """The phrase judge's labels and its seconds per answer."""
    from neurosteer.workflows.judges import get_judge

    judge = get_judge(judge_name)
    began = time.perf_counter()
    labels = judge([r["prompt"] for r in rows], [r["answer"] for r in rows])
    return [str(x) for x in labels], (time.perf_counter() - began) / len(rows)


def run(feats: dict[str, Any], rows: list[dict[str, Any]], judge_name: str) -> dict[str, Any]:
    """Choose everything on dev, score dev (cross-validated) and heldout once."""
    halves = {h: [r for r in rows if r["half"] == h] for h in ("dev", "heldout")}
    phrase = {h: phrase_labels(halves[h], judge_name)[0] for h in halves}
    dev_feats = _subset(feats, halves["dev"])
    choices = choose(dev_feats, halves["dev"], phrase["dev"])
    dev_cols = dev_columns(dev_feats, halves["dev"], phrase["dev"], choices)
    judges = {name: as_labels(name, col, phrase["dev"]) for name, col in dev_cols.items()}
    for name in ENSEMBLES:
        judges[f"ensemble:{name}"] = combine(name, dev_cols)
    dev_scores = {name: summary(col, halves["dev"]) for name, col in judges.items()}
    gold = [r["label"] for r in halves["dev"]]
    chosen = max(ENSEMBLES, key=lambda e: accuracy(judges[f"ensemble:{e}"], gold))
    held_cols = heldout_columns(feats, halves["dev"], halves["heldout"], phrase, choices)
    held = {name: as_labels(name, col, phrase["heldout"]) for name, col in held_cols.items()}
    held[f"ensemble:{chosen}"] = combine(chosen, held_cols)
    return {
        "judge": judge_name,
        "choices": choices,
        "chosen_ensemble": chosen,
        "dev_cv": dev_scores,
        "heldout": {name: summary(col, halves["heldout"]) for name, col in held.items()},
        "phrase_seconds_per_answer": phrase_labels(rows, judge_name)[1],
        "n": {h: len(v) for h, v in halves.items()},
    }


def print_table(result: dict[str, Any]) -> None:
    """The Markdown accuracy table: dev (cross-validated) and heldout, 3-way and binary."""
    print("| judge | dev CV | heldout | dev refusal-vs-not | heldout refusal-vs-not |")
    print("|---|---:|---:|---:|---:|")
    for name, dev in result["dev_cv"].items():
        held = result["heldout"].get(name)
        cells = [f"{100 * dev['accuracy']:.1f}%", _pct(held, "accuracy")]
        cells += [f"{100 * dev['binary_accuracy']:.1f}%", _pct(held, "binary_accuracy")]
        print(f"| {name} | {' | '.join(cells)} |")


def print_kinds(result: dict[str, Any], half: str) -> None:
    """Per reader kind, each judge's right/all on one half."""
    scores = result["dev_cv" if half == "dev" else "heldout"]
    names = list(scores)
    kinds = sorted({k for s in scores.values() for k in s["per_kind"]})
    print(f"\n{half}: right/all per kind\n| kind | {' | '.join(names)} |")
    print("|---|" + "---:|" * len(names))
    for kind in kinds:
        cells = [scores[n]["per_kind"].get(kind, "-") for n in names]
        print(f"| {kind} | {' | '.join(cells)} |")


def print_rates(result: dict[str, Any], half: str) -> None:
    """Per family, the readers' refusal rate and each judge's (points), on one half."""
    scores = result["dev_cv" if half == "dev" else "heldout"]
    names = list(scores)
    print(
        f"\n{half}: refusal rate, readers vs judges\n| family | n | readers | {' | '.join(names)} |"
    )
    print("|---|---:|---:|" + "---:|" * len(names))
    for family in (*FAMILIES, "all"):
        first = scores[names[0]]["refusal_rate"][family]
        if not first["n"]:
            continue
        cells = [f"{100 * scores[n]['refusal_rate'][family]['judge']:.0f}" for n in names]
        print(f"| {family} | {first['n']} | {100 * first['readers']:.0f} | {' | '.join(cells)} |")


def _pct(score: dict[str, Any] | None, key: str) -> str:
    return "-" if score is None else f"{100 * score[key]:.1f}%"


def main(argv: list[str] | None = None) -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--features", type=Path, required=True, help="judge_probe_features.py's cache"
    )
    parser.add_argument("--labels", type=Path, default=LABELS_DIR, help="the judge_labels folder")
    parser.add_argument("--judge", default="patterns", help="the phrase judge to combine with")
    parser.add_argument("-o", "--output", type=Path, help="write the results here as JSON")
    args = parser.parse_args(argv)
    feats = torch.load(args.features)
    cached = set(feats["ids"])
    rows = [r for r in load_labelled(args.labels) if r["id"] in cached]
    result = run(feats, rows, args.judge)
    keys = ("model", "threads", "depth", "seconds_per_answer")
    result["features"] = {k: feats[k] for k in keys}
    print_table(result)
    for half in ("dev", "heldout"):
        print_kinds(result, half)
        print_rates(result, half)
    if args.output:
        args.output.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
