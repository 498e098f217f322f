"""The paper's JailbreakBench table on a real model (issue 10, item 4), resumable point by point.

Discovery runs once on the refusal-direction train splits (disjoint from JailbreakBench), with
the full δ table kept, so every CNA point of the grid is a `reselect` of it; a second discovery
with the universal filter off gives the reference code's own settings. Every point is judged on
the JailbreakBench harmful and benign prompts (greedy, `--max-new-tokens`), with the KL to the
unchanged model on benign prompts, and appended to OUT/points.jsonl as soon as it is measured:
a killed run resumes where it stopped. `--report` writes OUT/table.md, OUT/refusal_vs_kl.png
and OUT/strength_curves.png (benchmarks/real_table_plots.py) from whatever points exist.

    python benchmarks/real_table.py --model qwen.gguf --data ../shared/data -o real-table/
    python benchmarks/real_table.py -o real-table/ --report

Points, in the order they run (the cheapest evidence first): unchanged; CNA at the paper's
default (0.1%, m = 0, both signs) with and without the universal filter; CAA and directional
ablation at their default strengths; a random circuit; four CNA settings that removed refusal in
the real-model test; CAA over α and directional ablation over its share; the rest of CNA over
k x m x sign rule; two more random circuits of 0.1% at m = 0.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from common import data_folder, run_main
from real_table_plots import refusal_vs_kl, strength_curves

from neurosteer.errors import InputError

FRACTIONS = (0.001, 0.002, 0.005, 0.01, 0.02)
MULTIPLIERS = (0.0, -0.5, -1.0)
CAA_ALPHAS = (-0.5, -1.0, -2.0)
DIRECTION_SHARES = (0.5, 1.0)
RANDOM_SEEDS = (0, 1, 2)
TOP_K = 1600  # the reference script's own JailbreakBench setting (issue 22)
# the paper's robustness curve, CNA (m = 1 is `unchanged`)
CURVE_MULTIPLIERS = (0.5, -0.5, -1.0, -1.5, -2.0)
CURVE_ALPHAS = (-0.5, -1.5, -2.5, -3.0)  # and CAA's (α = -1, -2 are points of the grid)


@dataclass(frozen=True)
class Point:
    """One row of the table: a method, its settings and its strength."""

    key: str
    method: str
    settings: dict[str, Any]
    strength: float | None


def plan() -> Iterator[Point]:
    """Every point, the most telling first (a run cut short still answers the main questions)."""
    yield Point("unchanged", "unchanged", {}, None)
    yield cna(0.001, False, 0.0)
    yield top_k(TOP_K, False, 0.0)
    yield Point("direction s=1", "direction", {}, 1.0)
    yield Point(f"random top{TOP_K} seed=0 m=0", "random_top_k", {"seed": 0}, 0.0)
    yield Point("caa alpha=-1", "caa", {}, -1.0)
    yield Point("random 0.1% seed=0 m=0", "random", {"seed": 0}, 0.0)
    yield Point(
        "cna 0.1% both m=0 (no universal filter)",
        "cna_reference",
        {"fraction": 0.001, "positive_only": False},
        0.0,
    )
    yield top_k(TOP_K, True, 0.0)
    yield top_k(TOP_K, False, -1.0)
    for m in CURVE_MULTIPLIERS:  # the strength curve of the paper's default, m from 1 to -2
        yield cna(0.001, False, m)
    for alpha in CURVE_ALPHAS:
        if alpha not in CAA_ALPHAS:
            yield Point(f"caa alpha={alpha:g}", "caa", {}, alpha)
    first = [(f, True, -1.0) for f in (0.002, 0.005, 0.01)] + [(0.02, False, 0.0)]
    for fraction, positive_only, m in first:
        yield cna(fraction, positive_only, m)
    for alpha in CAA_ALPHAS:
        if alpha != -1.0:
            yield Point(f"caa alpha={alpha:g}", "caa", {}, alpha)
    for share in DIRECTION_SHARES:
        if share != 1.0:
            yield Point(f"direction s={share:g}", "direction", {}, share)
    for positive_only in (True, False):
        for fraction in FRACTIONS:
            for m in MULTIPLIERS:
                curve = fraction == 0.001 and not positive_only and m in CURVE_MULTIPLIERS
                if (fraction, positive_only, m) not in [*first, (0.001, False, 0.0)] and not curve:
                    yield cna(fraction, positive_only, m)
    for positive_only in (False, True):  # the reference's k over the same m grid
        for m in MULTIPLIERS:
            if (positive_only, m) not in [(False, 0.0), (True, 0.0), (False, -1.0)]:
                yield top_k(TOP_K, positive_only, m)
    for seed in RANDOM_SEEDS[1:]:
        yield Point(f"random 0.1% seed={seed} m=0", "random", {"seed": seed}, 0.0)


def file_point(spec: str) -> Point:
    """`PATH` (the circuit at its stored multiplier) or `PATH@M` (at multiplier M)."""
    path, _, multiplier = spec.rpartition("@") if "@" in spec else (spec, "", "")
    if not multiplier:
        return Point(f"circuit {path}", "file", {"path": path}, None)
    return Point(
        f"circuit {path} m={float(multiplier):g}", "file", {"path": path}, float(multiplier)
    )


def cna(fraction: float, positive_only: bool, m: float) -> Point:
    sign = "positive" if positive_only else "both"
    settings = {"fraction": fraction, "positive_only": positive_only}
    return Point(f"cna {fraction:.1%} {sign} m={m:g}", "cna", settings, m)


def top_k(k: int, positive_only: bool, m: float) -> Point:
    sign = "positive" if positive_only else "both"
    settings = {"top_k": k, "positive_only": positive_only}
    return Point(f"cna top{k} {sign} m={m:g}", "cna", settings, m)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    out = Path(args.output)
    if args.report:
        if not (out / "points.jsonl").exists():
            raise InputError(f"no {out / 'points.jsonl'}; give -o a run folder")
        report(out, args.model, args.readings)
        return
    needed = ["refusal_direction/splits", "jailbreakbench/harmful-behaviors.csv"]
    needed += ["jailbreakbench/benign-behaviors.csv"] + (["mmlu"] if args.mmlu else [])
    data_folder(args.data, *needed)  # before the model loads
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    run(args, out)
    report(out, args.model)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="the model (a .gguf file or a folder)")
    parser.add_argument("--data", default="../shared/data", help="the shared data folder")
    parser.add_argument("-o", "--output", required=True, help="run folder (resumed if present)")
    parser.add_argument("--report", action="store_true", help="only write the table and plots")
    parser.add_argument(
        "--readings",
        action="append",
        default=[],
        help="a judge_labels/read_points.py folder: its readers' rates join the strength "
        "curves (repeatable; --report)",
    )
    parser.add_argument("--n-fit", type=int, default=128, help="train prompts per set")
    parser.add_argument("--n-eval", type=int, default=100, help="JailbreakBench prompts per set")
    parser.add_argument("--max-new-tokens", type=int, default=150)
    parser.add_argument("--kl-limit", type=int, default=32, help="benign prompts for the KL")
    parser.add_argument("--kl-tokens", type=int, default=16, help="continuation scored for KL")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--caa-layer", type=int, default=None, help="default: the heuristic")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--check-one-at-a-time", action="store_true", help="also discover with batch size 1"
    )
    parser.add_argument(
        "--circuit",
        action="append",
        default=[],
        help="also measure this circuit (e.g. from `optimize --export`) first: PATH at its "
        "stored multiplier, PATH@M at multiplier M (repeatable)",
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        help="run only this point, or every point whose key contains this (repeatable)",
    )
    parser.add_argument(
        "--dtype",
        default="float32",
        help="weights and activations (bfloat16 is about 2.5x faster on CPUs with AMX)",
    )
    parser.add_argument(
        "--mmlu",
        action="append",
        default=[],
        metavar="KEY",
        help="also score MMLU at the point with this key; the unchanged model is "
        "scored first (repeatable; needs the `eval` extra)",
    )
    parser.add_argument(
        "--mmlu-limit", type=int, default=4, help="MMLU questions per subject (default 4)"
    )
    parser.add_argument(
        "--mmlu-shots",
        type=int,
        default=5,
        help="dev questions shown before each question (default 5, the paper's); other counts "
        "are kept apart, in OUT/mmlu-Nshot.jsonl (0-shot prompts are a fifth as long: the 1.5B's "
        "5-shot scoring takes hours on 2 cores)",
    )
    parser.add_argument(
        "--mmlu-batch-size",
        type=int,
        default=8,
        help="MMLU requests per forward pass (default 8). A batch holds logits over the whole "
        "vocabulary at every position, twice while lm-eval takes the log-softmax: for Qwen2.5 "
        "(151,936 tokens) 0.6 GB per request per 1,000 tokens, so 8 of the 1.5B's 5-shot "
        "prompts filled 24 GiB; 2 fits",
    )
    args = parser.parse_args(argv)
    if not args.report and not args.model:
        parser.error("--model is required unless --report is given")
    return args


def run(args: argparse.Namespace, out: Path) -> None:
    import neurosteer
    from neurosteer.evaluation import (
        PhraseJudge,
        kl_to_reference,
        load_dataset_prompts,
        mmlu_accuracy,
    )
    from neurosteer.evaluation.refusal import measure_refusal
    from neurosteer.methods.ablation import DirectionAblation
    from neurosteer.methods.baselines import CAA, contrast_vectors
    from neurosteer.methods.circuit import Circuit
    from neurosteer.methods.contrast import ContrastVectors
    from neurosteer.model.layout import resolve_layout

    data = Path(args.data)
    splits = data / "refusal_direction" / "splits"
    harmful_fit = load_dataset_prompts(splits, split="harmful_train", limit=args.n_fit)
    harmless_fit = load_dataset_prompts(splits, split="harmless_train", limit=args.n_fit)
    jbb = data / "jailbreakbench"
    harmful = load_dataset_prompts(jbb / "harmful-behaviors.csv", limit=args.n_eval)
    benign = load_dataset_prompts(jbb / "benign-behaviors.csv", limit=args.n_eval)

    done = read_points(out)
    extra = [file_point(spec) for spec in args.circuit]
    every = {point.key: point for point in [*extra, *plan()]}
    keys = set(every)
    todo = [p for p in every.values() if p.key not in done and wanted(p.key, args.only, keys)]
    mmlu_todo = mmlu_plan(args.mmlu, every, read_mmlu(out, args.mmlu_shots))
    if not todo and not mmlu_todo:
        return
    started = time.perf_counter()
    model, tokenizer = neurosteer.load_model(args.model, dtype=args.dtype)
    log(out, f"loaded in {time.perf_counter() - started:.0f} s")
    saved = out / "discovery.circuit"
    if saved.exists():  # discovery is kept, so that a resumed run goes straight to the points
        base = Circuit.load(saved)
        base.check_fits(resolve_layout(model))
    else:
        started = time.perf_counter()
        base = neurosteer.discover(
            model, tokenizer, harmful_fit, harmless_fit, keep_table=True, progress=True
        )
        log(
            out,
            f"discovery on {len(harmful_fit)}+{len(harmless_fit)} prompts: "
            f"{time.perf_counter() - started:.0f} s",
        )
        base.save(saved)
    if args.check_one_at_a_time and not (out / "batching.json").exists():
        check_batching(model, tokenizer, harmful_fit, harmless_fit, base, out)
    judge = PhraseJudge()

    def intervention(point: Point) -> Any:
        if point.method == "cna":
            return base.reselect(**point.settings)
        if point.method == "cna_reference":
            return neurosteer.discover(
                model,
                tokenizer,
                harmful_fit,
                harmless_fit,
                fraction=point.settings["fraction"],
                universal_filter=False,
            )
        if point.method == "file":
            return Circuit.load(point.settings["path"])
        if point.method == "random":
            return base.random_like(point.settings["seed"])
        if point.method == "random_top_k":
            return base.reselect(top_k=TOP_K).random_like(point.settings["seed"])
        vectors_file = out / "vectors.safetensors"
        if vectors_file.exists():
            vectors = ContrastVectors.load(vectors_file)
        else:
            vectors = contrast_vectors(model, tokenizer, harmful_fit, harmless_fit)
            vectors.save(vectors_file)
        if point.method == "caa":
            return CAA.fit(vectors, layer=args.caa_layer)
        return DirectionAblation.fit(vectors, layer=args.caa_layer)

    for point in todo:
        started = time.perf_counter()
        target = None if point.method == "unchanged" else intervention(point)
        measured: dict[str, Any] = {
            "key": point.key,
            "method": point.method,
            "strength": point.strength,
            **point.settings,
        }
        for name, prompts in (("harmful", harmful), ("benign", benign)):
            judged = measure_refusal(
                model,
                tokenizer,
                prompts,
                judge,
                intervention=target,
                strength=point.strength,
                max_new_tokens=args.max_new_tokens,
                batch_size=args.batch_size,
            )
            measured[name] = dict(judged.rates)
            measured[f"{name}_answers"] = list(judged.answers)
        measured["kl"] = measured["kl_mean"] = 0.0
        if target is not None:
            kl = kl_to_reference(
                model,
                tokenizer,
                benign[: args.kl_limit],
                intervention=target,
                strength=point.strength,
                max_new_tokens=args.kl_tokens,
                batch_size=args.batch_size,
            )
            measured["kl"], measured["kl_mean"] = kl.first_token, kl.mean
        if target is not None and hasattr(target, "neurons"):
            measured["neurons"] = len(target)
            measured["layers"] = target.neurons_per_layer()
        measured["seconds"] = time.perf_counter() - started
        measured["settings"] = {
            "n_eval": len(harmful),
            "max_new_tokens": args.max_new_tokens,
            "n_fit": len(harmful_fit),
            "kl_limit": args.kl_limit,
            "kl_tokens": args.kl_tokens,
            "dtype": args.dtype,
            "model": Path(args.model).name,
        }
        with (out / "points.jsonl").open("a") as f:
            f.write(json.dumps(measured, default=str) + "\n")
        log(
            out,
            f"{point.key}: harmful refused {measured['harmful']['refusal']:.0%}, "
            f"kl {measured['kl']:.3f}, {measured['seconds']:.0f} s",
        )
    for point in mmlu_todo:
        started = time.perf_counter()
        target = None if point.method == "unchanged" else intervention(point)
        result = mmlu_accuracy(
            model,
            tokenizer,
            data / "mmlu",
            n_shot=args.mmlu_shots,
            limit=args.mmlu_limit,
            batch_size=args.mmlu_batch_size,
            intervention=target,
            strength=point.strength,
        )
        row = {
            "key": point.key,
            "accuracy": result.accuracy,
            "n": result.n,
            "seconds": time.perf_counter() - started,
            "correct": {subject: list(right) for subject, right in result.correct.items()},
        }
        with mmlu_path(out, args.mmlu_shots).open("a") as f:
            f.write(json.dumps(row) + "\n")
        seconds = row["seconds"]
        log(
            out,
            f"MMLU ({args.mmlu_shots}-shot) at {point.key}: {result.accuracy:.1%} of {result.n}, "
            f"{seconds:.0f} s",
        )


def check_batching(
    model: Any, tokenizer: Any, positive: list[str], negative: list[str], base: Any, out: Path
) -> None:
    """Discovery one prompt at a time gives the batched circuit (rules out a padding fault)."""
    import neurosteer

    started = time.perf_counter()
    single = neurosteer.discover(model, tokenizer, positive, negative, batch_size=1)

    def by_neuron(circuit: Any) -> dict[tuple[int, int], float]:
        keys = zip(circuit.layers.tolist(), circuit.neurons.tolist(), strict=True)
        return dict(zip(keys, circuit.delta.tolist(), strict=True))

    batched, one = by_neuron(base), by_neuron(single)
    same = batched.keys() == one.keys()
    delta = max(abs(batched[k] - one[k]) for k in batched) if same else float("nan")
    (out / "batching.json").write_text(json.dumps({"same_neurons": same, "max_delta": delta}))
    log(
        out,
        f"one prompt at a time: same {len(base)} neurons: {same}; largest δ difference "
        f"{delta:.2e}; {time.perf_counter() - started:.0f} s",
    )


def wanted(key: str, only: list[str], keys: set[str]) -> bool:
    """Whether `--only` asks for this point: a value that is one of `keys` names that point
    alone, any other value every key containing it (none given: every point)."""
    exact = [w for w in only if w in keys]
    return not only or key in exact or any(w in key for w in only if w not in keys)


def mmlu_plan(keys: list[str], every: dict[str, Point], done: dict[str, Any]) -> list[Point]:
    """The points to score on MMLU: the unchanged model, then `keys`, minus those scored."""
    if not keys:
        return []
    unknown = [key for key in keys if key not in every]
    if unknown:
        raise SystemExit(f"--mmlu: no point is called {unknown[0]!r}; the keys are in points.jsonl")
    chosen = dict.fromkeys(["unchanged", *keys])
    return [every[key] for key in chosen if key not in done]


def read_points(out: Path) -> dict[str, dict[str, Any]]:
    return read_rows(out / "points.jsonl")


def mmlu_path(out: Path, shots: int) -> Path:
    """Where MMLU scores with `shots` dev questions live (5-shot in mmlu.jsonl, as before)."""
    return out / ("mmlu.jsonl" if shots == 5 else f"mmlu-{shots}shot.jsonl")


def read_mmlu(out: Path, shots: int = 5) -> dict[str, dict[str, Any]]:
    return read_rows(mmlu_path(out, shots))


def mmlu_scores(out: Path) -> dict[int, dict[str, dict[str, Any]]]:
    """Every MMLU protocol scored in `out`, by number of shots (5 first, then the others)."""
    found = {5: read_mmlu(out)}
    for path in sorted(out.glob("mmlu-*shot.jsonl")):
        shots = int(path.name.removeprefix("mmlu-").removesuffix("shot.jsonl"))
        found[shots] = read_rows(path)
    return {shots: rows for shots, rows in found.items() if rows}


def read_shares(folders: list[str]) -> dict[str, tuple[float, float, float]]:
    """{point: (readers' refusal share, low, high)} from `judge_labels/read_points.py` folders
    (each holding view.jsonl, key.jsonl and reading-r1/-r2.jsonl)."""
    if not folders:
        return {}
    sys.path.insert(0, str(Path(__file__).resolve().parent / "judge_labels"))
    import read_points

    shares = {}
    for folder in map(Path, folders):
        scored = read_points.score(
            folder, [folder / "reading-r1.jsonl", folder / "reading-r2.jsonl"]
        )
        for key, p in scored["points"].items():
            shares[key] = (p["readers"] / p["n"], p["low"], p["high"])
    return shares


def mmlu_cell(score: dict[str, Any] | None, mmlu: dict[int, Any], shots: int) -> str:
    """An MMLU accuracy, with its paired difference from the unchanged model's on the same
    questions (points, 95%) where both runs stored which questions they got right."""
    from neurosteer.evaluation import paired_difference

    if not score:
        return ""
    base = mmlu.get(shots, {}).get("unchanged")
    if score["key"] == "unchanged" or not base or "correct" not in score or "correct" not in base:
        return f"{score['accuracy']:.1%}"
    delta, half = paired_difference(score["correct"], base["correct"])
    return f"{score['accuracy']:.1%} ({100 * delta:+.1f} ± {100 * half:.1f})"


def read_rows(path: Path) -> dict[str, dict[str, Any]]:
    """JSON lines keyed by their `key` (a later line for the same key wins)."""
    if not path.exists():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {row["key"]: row for row in rows}


def log(out: Path, message: str) -> None:
    print(message, file=sys.stderr, flush=True)
    with (out / "run.log").open("a") as f:
        f.write(message + "\n")


def report(out: Path, model: str | None = None, readings: list[str] | None = None) -> None:
    """Write OUT/table.md and the plots; `model` names the run's model in the judge's caption
    (default: the name stored with the points, which older points lack)."""
    from neurosteer.evaluation import PhraseJudge, quality, refusal_rates
    from neurosteer.evaluation.judge_accuracy import judge_caption

    rows = list(read_points(out).values())
    if not rows:
        print(f"no points in {out}/points.jsonl yet", file=sys.stderr)
        return
    judge = PhraseJudge()  # the answers are judged anew, so that a judge fix reaches old points
    for row in rows:
        for name in ("harmful", "benign"):
            row[name] = refusal_rates([judge.label(a) for a in row[f"{name}_answers"]])
    mmlu = mmlu_scores(out)
    heads = [f"MMLU {shots}-shot" for shots in mmlu if shots != 5]
    lines = [
        "| point | neurons | harmful refused | degenerate | distinct-4 | benign refused "
        f"| KL first | KL mean | MMLU | {''.join(h + ' | ' for h in heads)}s |",
        "|---|---|---|---|---|---|---|---|---|---|" + "---|" * len(heads),
    ]
    distinct4s = {row["key"]: quality(row["harmful_answers"]).mean_distinct4 for row in rows}
    for row in rows:
        distinct4 = distinct4s[row["key"]]
        columns = [5, *(shots for shots in mmlu if shots != 5)]
        scored = " | ".join(
            mmlu_cell(mmlu.get(shots, {}).get(row["key"]), mmlu, shots) for shots in columns
        )
        lines.append(
            f"| {row['key']} | {row.get('neurons', '')} | {row['harmful']['refusal']:.0%} | "
            f"{row['harmful']['degenerate']:.0%} | {distinct4:.3f} | "
            f"{row['benign']['refusal']:.0%} | {row['kl']:.3f} | {row['kl_mean']:.3f} | "
            f"{scored} | {row['seconds']:.0f} |"
        )
    settings = rows[0]["settings"]
    model_name = Path(model).name if model else settings.get("model")
    caption = judge_caption("patterns", model_name)
    lines.append(
        f"\n{settings['n_eval']} harmful / {settings['n_eval']} benign JailbreakBench prompts, "
        f"{settings['max_new_tokens']} new tokens, greedy, {caption} (answers "
        "judged anew by this version); distinct-4 averaged "
        f"over the harmful answers; KL on {settings['kl_limit']} benign prompts over "
        f"{settings['kl_tokens']} tokens (first answer token, and mean); discovery on "
        f"{settings['n_fit']} + {settings['n_fit']} refusal-direction train prompts; "
        f"{settings.get('dtype', 'float32')}."
    )
    for shots, scored_rows in mmlu.items():
        n = next(iter(scored_rows.values()))["n"]
        lines.append(
            f"MMLU{'' if shots == 5 else f' {shots}-shot'}: the shared subset, {shots}-shot, "
            f"{n} questions, scored by lm-eval; in brackets the paired difference from the "
            "unchanged model on the same questions, points, 95%."
        )
    (out / "table.md").write_text("\n".join(lines) + "\n")
    about = f"{model_name or 'the real model'}, {settings.get('dtype', 'float32')}"
    refusal_vs_kl(rows, out / "refusal_vs_kl.png", about)
    read = read_shares(readings or [])
    drawn = strength_curves(rows, distinct4s, out / "strength_curves.png", about, read)
    figures = ["refusal_vs_kl.png", *(["strength_curves.png"] if drawn else [])]
    print("\n".join(lines))
    print(f"wrote {out / 'table.md'}, " + ", ".join(str(out / name) for name in figures))
    if not drawn:
        print("no strength curve: no CNA 0.1% / top-1,600 (both signs) or CAA point yet")


if __name__ == "__main__":
    run_main(main)
