"""float32 against bfloat16 on this CPU, side by side on a real GGUF model: generation speed,
discovery time, and how much the answers differ (greedy answers identical, first-token top-1
agreement, the largest first-token logit difference).

The two models are loaded once each and the timed steps alternate between them, so drift in
machine load hits both alike. This chooses what `--dtype auto` means for GGUF files on a CPU.

    python benchmarks/bench_dtype.py MODEL.gguf --prompts 6 --new-tokens 32 -o result.json
"""

from __future__ import annotations

import argparse
import platform
import re
from pathlib import Path
from typing import Any

import torch
from common import emit, side_by_side, timed

import neurosteer
from neurosteer.model.runtime import pad_id
from neurosteer.prompts.render import encode_for_model, load_prompts, make_batch

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "real_model"
DTYPES = ("float32", "bfloat16")


def cpu_flags() -> dict[str, Any]:
    """The CPU's name and whether it has AVX-512, AVX512-BF16 and AMX (Linux /proc/cpuinfo)."""
    info = Path("/proc/cpuinfo")
    text = info.read_text() if info.is_file() else ""
    flags = set(re.search(r"^flags\s*:(.*)$", text, re.M).group(1).split()) if text else set()
    name = re.search(r"^model name\s*:(.*)$", text, re.M)
    return {
        "cpu": name.group(1).strip() if name else platform.processor(),
        "threads": torch.get_num_threads(),
        "avx512f": "avx512f" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
    }


def first_token_logits(model: Any, tokenizer: Any, prompts: list[str]) -> torch.Tensor:
    """The logits of the first answer token, float32, [n_prompts, vocab]."""
    token_ids = encode_for_model(model, tokenizer, prompts)
    batch = make_batch(token_ids, range(len(prompts)), pad_id(tokenizer))
    with torch.inference_mode():
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    return out.logits[:, -1, :].float()


def run(path: str, n_prompts: int, new_tokens: int, n_fit: int, repeats: int) -> dict[str, Any]:
    harmful = load_prompts(DATA / "jailbreakbench_harmful.jsonl")
    benign = load_prompts(DATA / "harmless_train.jsonl")
    asked = harmful[: n_prompts // 2] + benign[-(n_prompts - n_prompts // 2) :]
    loads, models = {}, {}
    for dtype in DTYPES:
        loads[dtype] = timed(
            lambda d=dtype: models.__setitem__(d, neurosteer.load_model(path, dtype=d))
        )
    answers: dict[str, list[str]] = {}

    def generator(dtype: str) -> Any:
        def go() -> None:
            answers[dtype] = neurosteer.generate(*models[dtype], asked, max_new_tokens=new_tokens)

        return go

    def discoverer(dtype: str) -> Any:
        def go() -> None:
            neurosteer.discover(
                *models[dtype],
                load_prompts(DATA / "harmful_train.jsonl")[:n_fit],
                load_prompts(DATA / "harmless_train.jsonl")[:n_fit],
                fraction=0.002,
                positive_only=True,
            )

        return go

    generation = side_by_side({d: generator(d) for d in DTYPES}, repeats)
    discovery = side_by_side({d: discoverer(d) for d in DTYPES}, repeats)
    logits = {d: first_token_logits(*models[d], asked) for d in DTYPES}
    tokens = {d: sum(len(models[d][1](a).input_ids) for a in answers[d]) for d in DTYPES}
    same = [a == b for a, b in zip(answers["float32"], answers["bfloat16"], strict=True)]
    return {
        "model": Path(path).name,
        "machine": cpu_flags(),
        "prompts": len(asked),
        "new_tokens": new_tokens,
        "load_s": loads,
        "generation_s": generation,
        "generation_tokens_per_s": {d: tokens[d] / generation[d] for d in DTYPES},
        "discovery_s": discovery,
        "bf16_speedup": {
            "generation": generation["float32"] / generation["bfloat16"],
            "discovery": discovery["float32"] / discovery["bfloat16"],
        },
        "answers_identical": f"{sum(same)}/{len(same)}",
        "first_token_top1_agree": float(
            (logits["float32"].argmax(-1) == logits["bfloat16"].argmax(-1)).float().mean()
        ),
        "first_token_max_logit_diff": float((logits["float32"] - logits["bfloat16"]).abs().max()),
        "answers": {d: answers[d] for d in DTYPES},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a GGUF file (neurosteer models fetch prints one)")
    parser.add_argument("--prompts", type=int, default=6, help="half harmful, half benign")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--fit", type=int, default=8, help="prompts per side for discovery")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("-o", "--output", default=None)
    args = parser.parse_args()
    emit(run(args.model, args.prompts, args.new_tokens, args.fit, args.repeats), args.output)


if __name__ == "__main__":
    main()
