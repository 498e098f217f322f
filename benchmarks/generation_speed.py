"""Speed of the greedy answers of a real-table point (issue 22, item 5): the old path (HF
`generate`, every row running until its batch's longest answer ends) side by side with the new
one (finished answers leave the batch, at one or more batch sizes), interleaved in one process,
on real JailbreakBench prompts; plus the floor the hardware sets (sustained matmul GFLOP/s in
float32 and bfloat16 at the thread count, and the FLOPs a point needs).

    python benchmarks/generation_speed.py --model qwen.gguf --data ../shared/data \
        --n-prompts 32 --new-tokens 150 --batch-sizes 16,32 --repeats 2 --json out.json

Prints seconds, answer tokens per second and the ratio new/old for each variant (the machine
may be shared: read the ratios, which interleaving protects, more than the seconds).

    python benchmarks/generation_speed.py --lengths benchmarks/results-answer-lengths-qwen05.json

estimates a 1.5B point instead, without loading a model: one decoding step of the 1.5B's shape
timed at 1-64 rows (random weights), replayed over measured answer lengths for each path.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from common import emit

#: (rows, in, out) of the matmuls timed for the floor: one MLP projection of a 1.5B Qwen
#: (1536 -> 8960) at a decoding batch of 1, 16, 64 and 256 rows
FLOOR_SHAPES = ((1, 1536, 8960), (16, 1536, 8960), (64, 1536, 8960), (256, 1536, 8960))


def matmul_floor(seconds: float = 2.0) -> list[dict[str, Any]]:
    """Sustained GFLOP/s of `F.linear` per dtype and shape: by the wall clock, and per
    CPU-second (what one core gives when the machine is not shared; x threads = the floor)."""
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        for m, k, n in FLOOR_SHAPES:
            x, w = torch.randn(m, k, dtype=dtype), torch.randn(n, k, dtype=dtype)
            torch.nn.functional.linear(x, w)  # warm-up
            wall, cpu, calls = time.perf_counter(), time.process_time(), 0
            while time.perf_counter() - wall < seconds:
                torch.nn.functional.linear(x, w)
                calls += 1
            flops = 2.0 * m * k * n * calls
            rows.append(
                {
                    "dtype": str(dtype).removeprefix("torch."),
                    "rows": m,
                    "shape": [k, n],
                    "gflops_wall": round(flops / (time.perf_counter() - wall) / 1e9, 2),
                    "gflops_per_cpu_second": round(flops / (time.process_time() - cpu) / 1e9, 2),
                }
            )
            print(rows[-1], flush=True)
    return rows


#: Qwen2.5-1.5B's shape (the GGUF of issue 22), for `step_costs`
QWEN15 = {
    "hidden_size": 1536,
    "intermediate_size": 8960,
    "num_attention_heads": 12,
    "num_key_value_heads": 2,
    "vocab_size": 151936,
    "tie_word_embeddings": True,
}
STEP_ROWS = (1, 4, 8, 16, 32, 64)


def step_costs(cached: int = 150, repeats: int = 3) -> dict[int, float]:
    """Seconds of one decoding step of the 1.5B model's shape (random weights, float32) per
    number of rows, each row on a cache of `cached` positions: measured with 2 and 4 decoder
    layers, rows interleaved in every repeat, and extended to 28 layers (the steps cost
    base + layers x per-layer). Random weights: speed only."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    per: dict[int, dict[int, list[float]]] = {}
    for layers in (2, 4):
        model = Qwen2ForCausalLM(Qwen2Config(num_hidden_layers=layers, **QWEN15)).eval()
        per[layers] = {rows: [] for rows in STEP_ROWS}
        with torch.inference_mode():
            for _ in range(repeats):
                for rows in STEP_ROWS:
                    cache = filled_cache(model, rows, cached)
                    ids = torch.randint(0, 1000, (rows, 1))
                    start = time.perf_counter()
                    model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
                    per[layers][rows].append(time.perf_counter() - start)
        del model
    costs = {}
    for rows in STEP_ROWS:
        two, four = (statistics.median(per[n][rows]) for n in (2, 4))
        layer = (four - two) / 2
        costs[rows] = two - 2 * layer + 28 * layer
        print(f"{rows} rows: {costs[rows]:.3f} s per step (28 layers)", flush=True)
    return costs


def filled_cache(model: Any, rows: int, length: int) -> Any:
    """A DynamicCache of `rows` x `length` random keys and values in every layer (what a
    prefill would leave, without its cost)."""
    from transformers import DynamicCache

    config = model.config
    shape = (
        rows,
        config.num_key_value_heads,
        length,
        config.hidden_size // config.num_attention_heads,
    )
    cache = DynamicCache(config=config)
    for layer in range(config.num_hidden_layers):
        cache.update(torch.randn(shape), torch.randn(shape), layer)
    return cache


def step_seconds(costs: dict[int, float], rows: int) -> float:
    """Seconds of a step on `rows` rows, linear between the measured row counts."""
    known = sorted(costs)
    if rows in costs:
        return costs[rows]
    low = max(r for r in known if r < rows)
    high = min((r for r in known if r > rows), default=known[-1])
    if high == low:
        return costs[low] * rows / low
    return costs[low] + (costs[high] - costs[low]) * (rows - low) / (high - low)


def point_seconds(
    costs: dict[int, float], answers: list[int], batch_size: int, drop: bool
) -> float:
    """Decoding seconds of one set of answers (tokens per answer, in batching order): each
    batch runs until its longest answer ends, on all its rows (old) or on the rows still
    running (`drop`)."""
    total = 0.0
    for start in range(0, len(answers), batch_size):
        batch = answers[start : start + batch_size]
        for step in range(max(batch)):
            rows = sum(1 for n in batch if n > step) if drop else len(batch)
            total += step_seconds(costs, rows)
    return total


def flops_per_token(model: Any) -> float:
    """Forward FLOPs of one decoded token: 2 x (every weight matrix but the input embedding;
    the output head counted even when tied to it). Attention over the cache is left out (under
    2% at 150 + 100 positions)."""
    embed = model.get_input_embeddings().weight
    params = sum(p.numel() for p in model.parameters() if p.dim() >= 2 and p is not embed)
    head = model.get_output_embeddings().weight
    if head is embed:
        params += head.numel()
    return 2.0 * params


def run(args: argparse.Namespace) -> dict[str, Any]:
    import neurosteer
    from neurosteer.evaluation import load_dataset_prompts

    jbb = Path(args.data) / "jailbreakbench"
    half = args.n_prompts // 2
    prompts = load_dataset_prompts(jbb / "harmful-behaviors.csv", limit=half)
    prompts += load_dataset_prompts(jbb / "benign-behaviors.csv", limit=args.n_prompts - half)
    started = time.perf_counter()
    model, tokenizer = neurosteer.load_model(args.model, dtype=args.dtype)
    print(f"loaded in {time.perf_counter() - started:.0f} s", flush=True)
    variants = {"old": (args.old_batch_size, False)}
    variants |= {f"drop b{b}": (b, True) for b in args.batch_sizes}
    times: dict[str, list[float]] = {name: [] for name in variants}
    answers: dict[str, list[str]] = {}
    for repeat in range(args.repeats):
        for name, (batch_size, drop) in variants.items():
            start = time.perf_counter()
            answers[name] = neurosteer.generate(
                model,
                tokenizer,
                prompts,
                max_new_tokens=args.new_tokens,
                batch_size=batch_size,
                drop_finished=drop,
            )
            times[name].append(time.perf_counter() - start)
            print(f"repeat {repeat}: {name} {times[name][-1]:.1f} s", flush=True)
    tokens = answer_tokens(tokenizer, answers["old"], args.new_tokens)
    old = statistics.median(times["old"])
    rows = [
        {
            "variant": name,
            "batch_size": variants[name][0],
            "seconds": [round(t, 1) for t in times[name]],
            "median_seconds": round(statistics.median(times[name]), 1),
            "tokens_per_second": round(tokens / statistics.median(times[name]), 2),
            "new_over_old_seconds": round(statistics.median(times[name]) / old, 3),
            "answers_identical": answers[name] == answers["old"],
        }
        for name in variants
    ]
    for row in rows:
        print(row, flush=True)
    return {
        "model": Path(args.model).name,
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "n_prompts": len(prompts),
        "new_tokens": args.new_tokens,
        "answer_tokens": tokens,
        "flops_per_token": flops_per_token(model),
        "runs": rows,
    }


def estimate_point(lengths_file: str) -> dict[str, Any]:
    """Decoding seconds of a 1.5B point (both sets), old path and new, from measured step
    costs and measured answer lengths, the prompts batched longest first as `generate` does."""
    import json

    costs = step_costs()
    sets = json.loads(Path(lengths_file).read_text())
    variants = {"old b16": (16, False), "drop b16": (16, True)}
    variants |= {"drop b32": (32, True), "drop b64": (64, True)}
    seconds = dict.fromkeys(variants, 0.0)
    tokens = 0
    for lengths in sets.values():
        order = sorted(
            range(len(lengths["prompt_tokens"])), key=lambda i: (-lengths["prompt_tokens"][i], i)
        )
        answers = [lengths["answer_tokens"][i] for i in order]
        tokens += sum(answers)
        for name, (batch_size, drop) in variants.items():
            seconds[name] += point_seconds(costs, answers, batch_size, drop)
    old = seconds["old b16"]
    rows = [
        {
            "variant": name,
            "decoding_seconds": round(t, 1),
            "tokens_per_second": round(tokens / t, 2),
            "new_over_old_seconds": round(t / old, 3),
        }
        for name, t in seconds.items()
    ]
    for row in rows:
        print(row, flush=True)
    return {"step_seconds": costs, "answer_tokens": tokens, "estimate": rows}


def answer_tokens(tokenizer: Any, answers: list[str], budget: int) -> int:
    """Tokens the answers took: each answer re-tokenised, plus its stop token when it ended
    before the budget (an estimate: re-tokenising stripped text may differ by a token)."""
    lengths = [len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers]
    return sum(min(budget, n + 1) for n in lengths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a real model (folder or .gguf file)")
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--n-prompts", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=150)
    parser.add_argument("--old-batch-size", type=int, default=16)
    parser.add_argument("--batch-sizes", default="16,32", help="new path, comma-separated")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--floor", action="store_true", help="only the matmul floor")
    parser.add_argument(
        "--lengths",
        default=None,
        help="JSON of measured answer lengths {set: {answer_tokens, prompt_tokens}}: estimate "
        "a 1.5B point from measured step costs instead of running a model",
    )
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    torch.set_num_threads(args.threads)
    result: dict[str, Any] = {"threads": args.threads, "matmul_floor": matmul_floor()}
    if args.lengths:
        result |= estimate_point(args.lengths)
    elif not args.floor:
        if not args.model:
            parser.error("--model is needed (or --floor)")
        result |= run(args)
    emit(result, args.json)


if __name__ == "__main__":
    main()
