"""Cost of steering during generation, per new token, side by side: plain model, the same
model with steering hooks (m = 0 on a 0.1% circuit), and the circuit baked into the weights.
Targets: hooked ≤ 1.03× plain; baked = plain.

    python benchmarks/bench_generation.py --shape 100m --batch-sizes 1,8 --new-tokens 32
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from common import bench_model, emit, prompts, side_by_side

import neurosteer
from neurosteer.prompts.render import render_prompts


def run(
    shape: str,
    batch_sizes: list[int],
    new_tokens: int,
    repeats: int,
    model_path: str | None = None,
) -> dict[str, Any]:
    model, tokenizer, shape = bench_model(shape, model_path)
    circuit = neurosteer.discover(
        model, tokenizer, prompts(8), prompts(8, offset=8), universal_filter=False
    )
    rows = []
    for batch_size in batch_sizes:
        rendered = render_prompts(tokenizer, prompts(batch_size, offset=16))
        batch = tokenizer(rendered, return_tensors="pt", padding=True, add_special_tokens=False)

        def generate(batch: dict[str, torch.Tensor] = batch) -> None:
            with torch.inference_mode():
                model.generate(
                    **batch,
                    max_new_tokens=new_tokens,
                    min_new_tokens=new_tokens,
                    do_sample=False,
                    pad_token_id=int(tokenizer.pad_token_id or 0),
                )

        def hooked() -> None:
            with neurosteer.steer(model, circuit, 0.0):
                generate()

        def baked() -> None:
            handle = neurosteer.bake(model, circuit, 0.0)
            try:
                generate()
            finally:
                handle.undo()

        generate()  # warm-up
        times = side_by_side({"plain": generate, "hooked": hooked, "baked": baked}, repeats)
        per_token = {k: v / new_tokens for k, v in times.items()}
        rows.append(
            {
                "batch_size": batch_size,
                "plain_ms_per_token": round(1000 * per_token["plain"], 2),
                "hooked_ms_per_token": round(1000 * per_token["hooked"], 2),
                "baked_ms_per_token": round(1000 * per_token["baked"], 2),
                "hooked_over_plain": round(per_token["hooked"] / per_token["plain"], 3),
                "baked_over_plain": round(per_token["baked"] / per_token["plain"], 3),
            }
        )
    return {"shape": shape, "circuit_neurons": len(circuit), "new_tokens": new_tokens, "runs": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="100m")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default=None, help="A real model (folder or .gguf file).")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    result = run(args.shape, sizes, args.new_tokens, args.repeats, args.model)
    emit(result, args.json)


if __name__ == "__main__":
    main()
