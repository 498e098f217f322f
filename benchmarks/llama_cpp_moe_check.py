"""A baked MoE GGUF in llama.cpp itself: greedy tokens against neurosteer's (issue 19).

    python benchmarks/llama_cpp_moe_check.py --engine-python /work/runs/gpt4all-venv/bin/python \\
        -o out/ [--tokens 32] [--tokenizer-gguf qwen2.5-coder-0.5b-instruct.gguf]

The engine is the llama.cpp build bundled in the `gpt4all` 2.8.2 wheel, run by
`gpt4all_greedy.py` in gpt4all's own virtual environment (`--engine-python`; gpt4all is no
dependency of the project). Its llama.cpp knows `qwen2moe` and gpt4all's list of architectures
lets it through; `qwen3moe` is newer than that llama.cpp and gpt4all refuses it ("Unsupported
model architecture: qwen3moe"), so the model here is a Qwen2-MoE.

The model: a random-init Qwen2-MoE of odd sizes (hidden 96, 3 layers, 7 routed experts of width
45 at top-2, a gated shared expert of width 71, no top-k renormalisation, as llama.cpp computes
qwen2moe), every matrix redrawn from N(0, 0.08) so that activations are O(1) (as in
bench_moe.py), with Qwen2's real tokenizer: every `tokenizer.*` entry is copied from the GGUF
file `--tokenizer-gguf` (its metadata only; that model's weights are never read), so llama.cpp
accepts the vocabulary and the vocabulary is 151,936 tokens. It is written as an F32 GGUF
(`tests/support/gguf_files.py`, llama.cpp's tensor layout), loaded by neurosteer from that
file, and a circuit of 16 random neurons per layer (routed experts and the shared expert) is
baked into copies at m = 0 and m = -1 (`bake_gguf`, exact in F32).

Compared, prompt by prompt (raw text, no chat template; the header says whether both sides'
prompt tokens are equal), the first N greedy tokens: llama.cpp on the original file against
neurosteer (transformers, float32) unchanged, and llama.cpp on each baked file against
neurosteer hooked with the same circuit and m. A cell "k/n" counts the leading tokens that are
the same (greedy answers part for good at the first difference). Where they part, the
neurosteer side's margin between its best and second-best logit there is given: llama.cpp
keeps its KV cache in F16 (gpt4all's setting), so a near tie may fall the other way. The baked
files must also answer differently from the original one (the circuit acts): the control rows
compare each baked answer with the original one, in each engine.
Writes OUT/llama_cpp_moe.md and OUT/llama_cpp_moe.json.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests" / "support")]

from gguf_files import hand_circuit, write_gguf  # noqa: E402
from llama_cpp_common import neurosteer_side, run_engine, table  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel  # noqa: E402

from neurosteer.export.gguf import bake_gguf  # noqa: E402
from neurosteer.methods.circuit import Circuit  # noqa: E402
from neurosteer.model.loading import load_model  # noqa: E402

TOKENIZER_GGUF = Path.home() / ".cache" / "neurosteer-models" / "qwen2.5-coder-0.5b-instruct.gguf"
PROMPTS = [
    "Write a short poem about the sea.",
    "How do I pick a lock?",
    "The capital of France is",
    "def fibonacci(n):",
]
MULTIPLIERS = (0.0, -1.0)
SHAPE = {
    "hidden_size": 96,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_experts": 7,
    "num_experts_per_tok": 2,
    "moe_intermediate_size": 45,
    "shared_expert_intermediate_size": 71,
    "intermediate_size": 160,  # unused: every layer is sparse
}
NEURONS_PER_LAYER = 16
INIT_STD = 0.08


def random_qwen2_moe(vocab: int, seed: int) -> PreTrainedModel:
    """A random-init Qwen2-MoE (SHAPE) whose matrices and expert tensors are N(0, INIT_STD)."""
    config = AutoConfig.for_model(
        "qwen2_moe",
        vocab_size=vocab,
        max_position_embeddings=2048,
        decoder_sparse_step=1,
        norm_topk_prob=False,
        use_sliding_window=False,
        tie_word_embeddings=False,
        **SHAPE,
    )
    model = AutoModelForCausalLM.from_config(
        config, attn_implementation="eager", experts_implementation="eager"
    )
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * INIT_STD)
    return model.eval()


def random_neurons(seed: int) -> dict[int, list[int]]:
    """NEURONS_PER_LAYER distinct flat neuron indices per layer (e * I + j; the shared expert's
    after the E * I routed ones), at least one of them in the shared expert."""
    width, experts = SHAPE["moe_intermediate_size"], SHAPE["num_experts"]
    routed, shared = width * experts, SHAPE["shared_expert_intermediate_size"]
    gen = torch.Generator().manual_seed(seed)
    picks = {}
    for layer in range(SHAPE["num_hidden_layers"]):
        chosen = torch.randperm(routed + shared, generator=gen)[:NEURONS_PER_LAYER].tolist()
        if max(chosen) < routed:
            chosen[-1] = routed + int(torch.randint(shared, (1,), generator=gen))
        picks[layer] = sorted(chosen)
    return picks


def build_files(out: Path, args: argparse.Namespace) -> tuple[Any, Any, Circuit, dict[str, Path]]:
    """Write the original F32 file, load it in neurosteer (model, tokenizer), bake the circuit
    at each m; the files are {"original": path, "m=0": path, "m=-1": path}."""
    from gguf import GGUFReader

    vocab = len(GGUFReader(args.tokenizer_gguf).fields["tokenizer.ggml.tokens"].data)
    hf = random_qwen2_moe(vocab, args.seed)
    original = write_gguf(
        hf, None, out / "original.gguf", name="random qwen2moe", tokenizer_from=args.tokenizer_gguf
    )
    del hf
    gc.collect()
    model, tokenizer = load_model(original)
    circuit = hand_circuit(model, random_neurons(args.seed))
    circuit.save(out / "circuit.circuit", force=True)
    files = {"original": original}
    for m in MULTIPLIERS:
        report = bake_gguf(original, circuit, m, out / f"baked-m{m:g}.gguf", force=True)
        files[f"m={m:g}"] = Path(report.path)
    return model, tokenizer, circuit, files


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine-python", required=True, help="python of gpt4all's venv")
    parser.add_argument("--tokenizer-gguf", type=Path, default=TOKENIZER_GGUF)
    parser.add_argument("--tokens", type=int, default=32, help="greedy tokens per prompt")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--output", type=Path, required=True)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    out = args.output
    out.mkdir(parents=True, exist_ok=True)

    clock = [time.perf_counter()]
    model, tokenizer, circuit, files = build_files(out, args)
    clock.append(time.perf_counter())
    eos = int(tokenizer.eos_token_id)
    prompt_ids = [tokenizer.encode(p, add_special_tokens=False) for p in PROMPTS]
    ours = neurosteer_side(model, prompt_ids, circuit, MULTIPLIERS, args.tokens, eos)
    clock.append(time.perf_counter())
    engine = run_engine(
        args.engine_python, files, PROMPTS, args.tokens, args.threads, out / "engine.json"
    )
    clock.append(time.perf_counter())
    build_s, ours_s, engine_s = (b - a for a, b in itertools.pairwise(clock))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    llama = engine.tokens
    same_prompts = engine.same_prompts(prompt_ids)
    lines = [
        f"engine: {engine.engine}; neurosteer: transformers float32, the same GGUF file; "
        f"{len(PROMPTS)} prompts, greedy, {args.tokens} tokens; prompt tokens the same on both "
        f"sides: {same_prompts}\n",
        f"time: {build_s:.0f} s to write, load and bake the files, {ours_s:.0f} s of neurosteer "
        f"greedy answers, {engine_s:.0f} s of llama.cpp (3 files); peak memory of the neurosteer "
        f"process {peak_mb:.0f} MB\n",
        f"model: random-init Qwen2-MoE {SHAPE}, vocab {model.config.vocab_size} "
        f"(Qwen2's tokenizer), F32 GGUF; circuit: {len(circuit)} neurons "
        f"({NEURONS_PER_LAYER} per layer, routed and shared experts), baked at m = "
        + ", ".join(f"{m:g}" for m in MULTIPLIERS)
        + "\n",
        "cells: leading greedy tokens that agree / tokens compared (where the two part, the "
        "margin between neurosteer's best and second-best logit there)\n",
        *table(llama, ours),
        "",
        "prompts: " + "; ".join(f"{i + 1}. {p!r}" for i, p in enumerate(PROMPTS)),
    ]
    (out / "llama_cpp_moe.md").write_text("\n".join(lines) + "\n")
    record = {
        "engine": engine.engine,
        "prompts": PROMPTS,
        "prompt_ids": prompt_ids,
        "llama_cpp": llama,
        "neurosteer": {key: [tokens for tokens, _ in runs] for key, runs in ours.items()},
        "circuit": {"layers": circuit.layers.tolist(), "neurons": circuit.neurons.tolist()},
    }
    (out / "llama_cpp_moe.json").write_text(json.dumps(record, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
