"""Discovery time vs a plain Hugging Face forward pass over the same prompts, side by side.

Random-init Llama models of a given shape (random weights measure speed, not behaviour). Both
sides see the same prompts in the same batches (sorted by length, left-padded, same batch
size); the plain side is `model(**batch)` under `inference_mode`, full logits included, as a
user would run it. Discovery runs with the universal filter off (its neutral pass is timed on
its own). Each figure is the median of several alternating runs; ratios are what to compare,
since absolute times on a shared 2-core machine are noisy.

    python benchmarks/bench_discovery.py --shape 100m --prompts 64 --repeats 3 --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

import neurosteer
from neurosteer.prompts import iter_batches, render_prompts, tokenize_rendered
from neurosteer.recording import positions_from_mask

SHAPES = {
    # ~100M parameters (GPT-2-small-like widths, Llama blocks)
    "100m": {"hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": 12,
             "num_attention_heads": 12, "num_key_value_heads": 12, "vocab_size": 32000},
    # Llama-3.2-1B's shape
    "llama-1b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
                 "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
                 "tie_word_embeddings": True},
    "tiny": {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 4,
             "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 1000},
}  # fmt: skip


def char_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer with a chat template, built offline."""
    chars = [chr(c) for c in range(32, 127)]
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3} | {c: i + 4 for i, c in enumerate(chars)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        unk_token="<unk>", padding_side="left",
    )  # fmt: skip
    fast.chat_template = (
        "<s>{% for m in messages %}User: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}Assistant:{% endif %}"
    )
    return fast


def prompts(n: int) -> list[str]:
    base = neurosteer.neutral_prompts()
    return [f"{base[i % len(base)]} (variant {i // len(base)})" for i in range(n)]


def median_time(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="100m")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None, help="Also write the results here.")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    config = LlamaConfig(**SHAPES[args.shape], max_position_embeddings=2048)
    model = LlamaForCausalLM(config).to(device=args.device, dtype=dtype).eval()
    tokenizer = char_tokenizer()
    half = args.prompts // 2
    positive, negative = prompts(args.prompts)[:half], prompts(args.prompts)[half:]

    rendered = render_prompts(tokenizer, positive + negative)
    ids = tokenize_rendered(tokenizer, rendered, templated=True)
    n_tokens = sum(len(i) for i in ids)

    def plain_forward() -> None:
        with torch.inference_mode():
            for group in (ids[:half], ids[half:]):
                for batch in iter_batches(group, args.batch_size, 0):
                    model(
                        input_ids=batch.input_ids.to(args.device),
                        attention_mask=batch.attention_mask.to(args.device),
                        position_ids=positions_from_mask(batch.attention_mask).to(args.device),
                    )

    def discovery() -> None:
        neurosteer.discover(
            model, tokenizer, positive, negative, universal_filter=False,
            batch_size=args.batch_size,
        )  # fmt: skip

    def neutral_pass() -> None:
        neurosteer.discover(
            model, tokenizer, positive[:1], negative[:1], universal_filter=True,
            batch_size=args.batch_size,
        )  # fmt: skip

    plain_forward()  # warm-up
    plain_times, discovery_times = [], []
    for _ in range(args.repeats):  # alternate, so drift in machine load hits both sides
        plain_times.append(median_time(plain_forward, 1))
        discovery_times.append(median_time(discovery, 1))
    plain, disc = statistics.median(plain_times), statistics.median(discovery_times)
    neutral = median_time(neutral_pass, 1)
    result = {
        "shape": args.shape,
        "parameters": sum(p.numel() for p in model.parameters()),
        "prompts": args.prompts,
        "tokens": n_tokens,
        "batch_size": args.batch_size,
        "dtype": args.dtype,
        "threads": args.threads,
        "plain_forward_s": round(plain, 3),
        "discovery_s": round(disc, 3),
        "discovery_over_forward": round(disc / plain, 3),
        "universal_filter_pass_s": round(neutral, 3),
        "discovery_tokens_per_s": round(n_tokens / disc, 1),
    }
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
