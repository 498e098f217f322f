"""Extra peak memory of discovery, and whether it grows with the number of prompts.

Each prompt count runs in a fresh process. In it, after the model is built, we measure the
resident-memory peak above the starting level (a sampling thread reads /proc) of

- one plain decoder forward over the largest batch (no LM head): "one batch's activations";
- a whole discovery (universal filter off).

Targets: discovery's extra peak is about the same at 64 and 512 prompts, and below
1.5 × (the running sums + one batch's activations).

    python benchmarks/bench_memory.py --shape 100m --counts 64,512
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from typing import Any

import torch
from common import PeakRSS, char_tokenizer, emit, prompts, random_model

import neurosteer
from neurosteer.model.runtime import position_ids_from_mask
from neurosteer.prompts.render import iter_batches, render_prompts, tokenize_rendered


def child(shape: str, n_prompts: int, batch_size: int) -> dict[str, Any]:
    torch.set_num_threads(2)
    model = random_model(shape)
    tokenizer = char_tokenizer()
    half = n_prompts // 2
    positive, negative = prompts(half), prompts(n_prompts - half, offset=half)
    ids = tokenize_rendered(tokenizer, render_prompts(tokenizer, positive), templated=True)
    largest = next(iter_batches(ids, batch_size, 0))  # longest prompts come first
    with PeakRSS() as batch_peak, torch.inference_mode():
        model.model(
            input_ids=largest.input_ids,
            attention_mask=largest.attention_mask,
            position_ids=position_ids_from_mask(largest.attention_mask),
        )
    with PeakRSS() as discovery_peak:
        neurosteer.discover(
            model, tokenizer, positive, negative, universal_filter=False, batch_size=batch_size
        )
    layout = neurosteer.resolve_layout(model)
    # mean and M2 per set, plus one batch's pending last-token rows, float32
    sums = 4 * layout.n_neurons * (2 * 2 + batch_size)
    return {
        "prompts": n_prompts,
        "one_batch_activations_bytes": batch_peak.extra,
        "running_sums_bytes": sums,
        "discovery_extra_peak_bytes": discovery_peak.extra,
        "bound_bytes": int(1.5 * (sums + batch_peak.extra)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="100m")
    parser.add_argument("--counts", default="64,512")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.shape, args.child, args.batch_size)))
        return
    runs = []
    for count in [int(c) for c in args.counts.split(",")]:
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--shape",
                args.shape,
                "--batch-size",
                str(args.batch_size),
                "--child",
                str(count),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    first, last = runs[0], runs[-1]
    result = {
        "shape": args.shape,
        "batch_size": args.batch_size,
        "runs": runs,
        "extra_peak_ratio_most_vs_fewest_prompts": round(
            last["discovery_extra_peak_bytes"] / max(first["discovery_extra_peak_bytes"], 1), 3
        ),
        "extra_peak_over_bound": round(
            max(r["discovery_extra_peak_bytes"] / r["bound_bytes"] for r in runs), 3
        ),
    }
    emit(result, args.json)


if __name__ == "__main__":
    main()
