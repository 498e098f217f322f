"""Discovery speed, side by side in one process:

- vs a plain Hugging Face forward pass (`model(**batch)`, same prompts, same batches, full
  logits), target ≤ 0.85×; discovery runs with the universal filter off and the filter's own
  pass over the neutral prompts is timed separately;
- vs the reference algorithm (one prompt per forward pass, full logits, activations taken by
  hooks on the output projections), target ≥ 3× faster.

    python benchmarks/bench_discovery.py --shape 100m --prompts 64 --repeats 3
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from common import bench_model, emit, prompts, side_by_side, timed

import neurosteer
from neurosteer.hooks import HookSet
from neurosteer.model.runtime import auto_batch_size, position_ids_from_mask
from neurosteer.prompts.render import iter_batches, render_prompts, tokenize_rendered


def reference_discovery(
    model: torch.nn.Module, tokenizer: Any, positive: list[str], negative: list[str]
) -> torch.Tensor:
    """The reference code's way: one prompt per pass, full logits, mean of per-prompt rows."""
    layout = neurosteer.resolve_layout(model)
    means = []
    for group in (positive, negative):
        rows: list[list[torch.Tensor]] = []
        for text in render_prompts(tokenizer, group):
            inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False)
            captured: list[torch.Tensor] = []
            with HookSet() as hooks, torch.no_grad():
                for site in layout.site_modules(model):
                    hooks.pre(
                        site, lambda _m, args, out=captured: out.append(args[0][0, -1].float())
                    )
                model(**inputs)
            rows.append(captured)
        means.append(torch.stack([torch.stack(r) for r in rows]).mean(0))
    return means[0] - means[1]


def run(
    shape: str,
    n_prompts: int,
    batch_size: int,
    repeats: int,
    reference: bool,
    *,
    device: str = "cpu",
    dtype: str = "float32",
    model_path: str | None = None,
) -> dict[str, Any]:
    model, tokenizer, shape = bench_model(shape, model_path, dtype, device)
    layout = neurosteer.resolve_layout(model)
    pad_id = int(tokenizer.pad_token_id or 0)
    half = n_prompts // 2
    positive, negative = prompts(half), prompts(n_prompts - half, offset=half)
    ids = tokenize_rendered(
        tokenizer, render_prompts(tokenizer, positive + negative), templated=True
    )
    if batch_size == 0:  # what discovery would choose on this device
        batch_size = auto_batch_size(model, layout, max(map(len, ids)))

    def plain_forward() -> None:
        with torch.inference_mode():
            for group in (ids[:half], ids[half:]):
                for batch in iter_batches(group, batch_size, pad_id):
                    model(
                        input_ids=batch.input_ids.to(device),
                        attention_mask=batch.attention_mask.to(device),
                        position_ids=position_ids_from_mask(batch.attention_mask).to(device),
                    )

    def discovery() -> None:
        neurosteer.discover(
            model, tokenizer, positive, negative, universal_filter=False, batch_size=batch_size
        )

    plain_forward()  # warm-up
    fns = {"plain_forward": plain_forward, "discovery": discovery}
    if reference:
        fns["reference"] = lambda: reference_discovery(model, tokenizer, positive, negative)
    times = side_by_side(fns, repeats)
    neutral = timed(
        lambda: neurosteer.discover(
            model, tokenizer, positive[:1], negative[:1], batch_size=batch_size
        )
    )
    result: dict[str, Any] = {
        "shape": shape,
        "parameters": sum(p.numel() for p in model.parameters()),
        "prompts": n_prompts,
        "tokens": sum(map(len, ids)),
        "batch_size": batch_size,
        "threads": torch.get_num_threads(),
        "device": device,
        "dtype": dtype,
        "plain_forward_s": round(times["plain_forward"], 3),
        "discovery_s": round(times["discovery"], 3),
        "discovery_over_forward": round(times["discovery"] / times["plain_forward"], 3),
        "universal_filter_pass_s": round(neutral, 3),
        "discovery_tokens_per_s": round(sum(map(len, ids)) / times["discovery"], 1),
    }
    if reference:
        result["reference_s"] = round(times["reference"], 3)
        result["speedup_over_reference"] = round(times["reference"] / times["discovery"], 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="100m")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16, help="0: choose automatically.")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--model", default=None, help="A real model (folder or .gguf file).")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reference", action="store_true", help="Also time the reference way.")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = run(
        args.shape,
        args.prompts,
        args.batch_size,
        args.repeats,
        args.reference,
        device=args.device,
        dtype=args.dtype,
        model_path=args.model,
    )
    emit(result, args.json)


if __name__ == "__main__":
    main()
