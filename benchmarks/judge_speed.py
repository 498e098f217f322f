"""Seconds per answer of the model judge on stored real answers, batched and one at a time.

Reads N harmful answers spread over the points of benchmarks/results-real-table-full.jsonl
(with their JailbreakBench prompts), loads each judge model once, and times `label_many` with
an empty cache at each batch size. Writes a JSON summary (one object per model and batch size).

    m=~/.cache/neurosteer-models
    python benchmarks/judge_speed.py --model $m/qwen2.5-coder-0.5b-instruct.gguf \
        --model $m/qwen2.5-coder-1.5b-instruct.gguf -o benchmarks/results-judge-speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from neurosteer.evaluation import load_dataset_prompts
from neurosteer.evaluation.judge_cache import VerdictCache, release_judge_models
from neurosteer.evaluation.model_judge import ModelJudge

HERE = Path(__file__).resolve().parent
STORED = HERE / "results-real-table-full.jsonl"
DATA = Path("../shared/data")  # as real_table.py: relative to the checkout


def stored_answers(n: int, data: Path) -> tuple[list[str], list[str]]:
    """N (prompt, answer) pairs: answer i of point i mod points, so every point contributes."""
    points = [json.loads(line) for line in STORED.read_text(encoding="utf-8").splitlines() if line]
    prompts = load_dataset_prompts(data / "jailbreakbench" / "harmful-behaviors.csv", limit=100)
    pairs = [(prompts[i], points[i % len(points)]["harmful_answers"][i]) for i in range(n)]
    return [p for p, _ in pairs], [a for _, a in pairs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True, help="judge model (repeat)")
    parser.add_argument("--n", type=int, default=32, help="answers to judge")
    parser.add_argument("--batch-size", type=int, action="append", default=None)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("-o", "--output", type=Path, default=None)
    args = parser.parse_args()
    prompts, answers = stored_answers(args.n, args.data)
    results = []
    for path in args.model:
        start = time.perf_counter()
        judge = ModelJudge(path, dtype=args.dtype)
        load_s = time.perf_counter() - start
        for batch_size in args.batch_size or [8, 1]:
            judge.batch_size = batch_size
            judge.cache = VerdictCache()  # every answer read by the model
            start = time.perf_counter()
            labels = judge.label_many(prompts, answers)
            seconds = time.perf_counter() - start
            read = judge.cache.misses
            row = {
                "model": Path(path).name,
                "dtype": args.dtype,
                "batch_size": batch_size,
                "answers": len(answers),
                "read_by_model": read,
                "load_s": round(load_s, 1),
                "seconds": round(seconds, 1),
                "s_per_answer": round(seconds / max(read, 1), 2),
                "labels": {k: labels.count(k) for k in sorted(set(labels))},
            }
            print(json.dumps(row), flush=True)
            results.append(row)
        del judge
        release_judge_models()
    machine = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": os.getloadavg()[0],
    }
    if args.output is not None:
        args.output.write_text(json.dumps({"machine": machine, "runs": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
