"""Mixture-of-experts: speed of discovery and of hooked generation, and the evidence for the
routing rule (what an unrouted expert's neuron counts at the last token).

Speed, side by side in one process on a random-init Qwen3-MoE (16 experts, top-2): discovery
(two prompt sets, universal filter off) vs a plain forward of the same prompts and batches,
target ≤ 0.85×; greedy generation with an m = 0 circuit hooked vs plain, target ≤ 1.05×.
A second baseline, the truncated forward, stops the plain forward at the last layer's MLP
input (no last MLP, final norm or LM head), where discovery stops: "recording_overhead" =
discovery / truncated is what recording costs, "truncated_ratio" = truncated / plain what the
model's architecture lets any last-token recorder skip (`moe_bound.py` counts it for real
models from their configs). Real discovery runs 128 + 128 prompts (docs/real-models.md), so
time `--prompts 128`, where rendering, selection and the fingerprint are amortized as in use.

Routing rule, on the same model: a circuit is discovered under each rule ("routed", "weighted",
"every"; see docs/moe.md) and ablated (m = 0) on held-out prompts; the rule whose circuit moves
the last-token output most is the one whose scores describe what the neurons do there. A random
circuit of the same size is the floor.

    cd benchmarks && python bench_moe.py --prompts 128 --batch-size 16 --repeats 3 --threads 1 \
        --speed-only --clock cpu [--organism]

`--organism` times the MoE organism (`neurosteer organism train --moe`, shipped with the
package) instead of the random-init model, speed only; `--speed-only` skips the routing rules;
`--threads` sets torch's threads (1 on a machine other jobs load); `--clock cpu` times with
this process's CPU seconds instead of wall seconds (with one thread: the work's own cost,
however long other jobs hold the cores).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable
from typing import Any

import common
import torch
from common import char_tokenizer, emit, prompts
from transformers import AutoConfig, AutoModelForCausalLM

import neurosteer
from neurosteer.hooks import HookSet, StopForward
from neurosteer.methods import moe_sites
from neurosteer.model.layout import resolve_layout
from neurosteer.prompts.render import render_prompts

CLOCK: list[Callable[[], float]] = [time.perf_counter]  # --clock cpu: time.process_time


def side_by_side(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """`common.side_by_side` on the chosen clock."""
    if CLOCK[0] is time.perf_counter:
        return common.side_by_side(fns, repeats)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = CLOCK[0]()
            fn()
            times[name].append(CLOCK[0]() - start)
    return {name: statistics.median(t) for name, t in times.items()}


MOE_SHAPE: dict[str, Any] = {
    "hidden_size": 256,
    "intermediate_size": 512,
    "moe_intermediate_size": 128,
    "num_experts": 16,
    "num_experts_per_tok": 2,
    "num_hidden_layers": 6,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "max_position_embeddings": 1024,
    "decoder_sparse_step": 1,
    "tie_word_embeddings": False,
}
"""The random-init Qwen3-MoE's config (with `vocab_size`), as `moe_model` builds it."""


def moe_model(vocab: int, seed: int = 0) -> Any:
    """A random-init Qwen3-MoE; `vocab` sets the LM head's share of a forward pass (1024: about
    10%, as Qwen3-30B-A3B's 151k x 2048 head is of its ~3B active parameters per token)."""
    config = AutoConfig.for_model("qwen3_moe", vocab_size=vocab, **MOE_SHAPE)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, experts_implementation="eager").eval()
    with torch.no_grad():  # O(1) activations, so that neurons differ clearly
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.08)
    return model


def truncated(model: Any, batches: list[Any]) -> Callable[[], None]:
    """The plain forward of `batches` stopped where discovery stops: at the last layer's MLP
    input (a pre-hook raises), so neither that MLP nor the final norm and LM head run.
    Discovery / this is what recording costs; this / the plain forward is what the model's
    architecture lets any last-token recorder skip."""
    layout = resolve_layout(model)
    assert layout.moe is not None  # an MoE model
    last = layout.layer_modules(model)[-1].get_submodule(layout.moe.layers[-1].mlp_path)

    def stop(_module: Any, _args: Any) -> None:
        raise StopForward

    def run() -> None:
        with HookSet() as hooks, torch.inference_mode():
            hooks.pre(last, stop)
            for b in batches:
                with contextlib.suppress(StopForward):
                    model(**b, use_cache=False)

    return run


def speed(
    model: Any,
    tokenizer: Any,
    n_prompts: int,
    batch_size: int,
    repeats: int,
    sets: tuple[list[str], list[str]] | None = None,
) -> dict[str, Any]:
    pos, neg = sets or (prompts(n_prompts), prompts(n_prompts, offset=n_prompts))
    texts = render_prompts(tokenizer, pos) + render_prompts(tokenizer, neg)
    batches = []
    for group in (texts[:n_prompts], texts[n_prompts:]):
        ordered = sorted(group, key=len)  # discovery sorts by length too
        for i in range(0, len(ordered), batch_size):
            batches.append(
                tokenizer(ordered[i : i + batch_size], return_tensors="pt", padding=True)
            )

    def plain() -> None:
        with torch.inference_mode():
            for b in batches:
                model(**b, use_cache=False)

    def discovery() -> None:
        neurosteer.discover(
            model, tokenizer, pos, neg, universal_filter=False, batch_size=batch_size, top_k=32
        )

    fns = {"plain_forward": plain, "truncated_forward": truncated(model, batches)}
    found = side_by_side({**fns, "discovery": discovery}, repeats)
    circuit = neurosteer.discover(model, tokenizer, pos, neg, universal_filter=False, top_k=32)
    batch = tokenizer(
        render_prompts(tokenizer, prompts(4, offset=99)), return_tensors="pt", padding=True
    )

    def generate() -> None:
        with torch.inference_mode():
            model.generate(**batch, max_new_tokens=24, do_sample=False, pad_token_id=0)

    def hooked() -> None:
        with neurosteer.steer(model, circuit, 0.0):
            generate()

    gen = side_by_side({"plain_generate": generate, "hooked_generate": hooked}, repeats)
    return {
        **found,
        **gen,
        "discovery_ratio": found["discovery"] / found["plain_forward"],
        "truncated_ratio": found["truncated_forward"] / found["plain_forward"],
        "recording_overhead": found["discovery"] / found["truncated_forward"],
        "hooked_generation_ratio": gen["hooked_generate"] / gen["plain_generate"],
    }


def _last_logits(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.inference_mode():
        return model(**batch, use_cache=False).logits[:, -1].float()


def routing_rules(model: Any, tokenizer: Any, n_prompts: int, k: int) -> dict[str, Any]:
    pos, neg = prompts(n_prompts, offset=200), prompts(n_prompts, offset=300)
    held = tokenizer(
        render_prompts(tokenizer, prompts(16, offset=400)), return_tensors="pt", padding=True
    )
    base = _last_logits(model, held)
    rows: dict[str, Any] = {}
    for rule in ("routed", "weighted", "every"):
        moe_sites.DEFAULT_RULE = rule  # type: ignore[assignment]
        circuit = neurosteer.discover(model, tokenizer, pos, neg, universal_filter=False, top_k=k)
        with neurosteer.steer(model, circuit, 0.0):
            moved = (_last_logits(model, held) - base).norm(dim=-1).mean().item()
        rows[rule] = {"last_token_logit_shift": moved}
        if rule == "routed":
            with neurosteer.steer(model, circuit.random_like(seed=1, per_layer=True), 0.0):
                rows["random"] = {
                    "last_token_logit_shift": (_last_logits(model, held) - base)
                    .norm(dim=-1)
                    .mean()
                    .item()
                }
    moe_sites.DEFAULT_RULE = "weighted"
    return rows


def organism_speed(n_prompts: int, batch_size: int, repeats: int) -> dict[str, Any]:
    """`speed` on the MoE organism with its own prompts (harmful and benign training prompts)."""
    from neurosteer.workflows.organism import MOE_INSTRUCT_DIR, corpus

    model, tokenizer = neurosteer.load_model(MOE_INSTRUCT_DIR)
    sets = (
        corpus.make_prompts("train", True, n_prompts, seed=11),
        corpus.make_prompts("train", False, n_prompts, seed=11),
    )
    return speed(model, tokenizer, n_prompts, batch_size, repeats, sets)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--k", type=int, default=48)
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--organism", action="store_true")
    parser.add_argument("--speed-only", action="store_true")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.clock == "cpu":
        CLOCK[0] = time.process_time
    where = f"float32, CPU ({args.threads} threads, shared machine, {args.clock} seconds)"
    if args.organism:
        result = {
            "model": f"the MoE organism (Qwen2-MoE, 8 experts top-2, a shared expert), {where}",
            "speed": organism_speed(args.prompts, args.batch_size, args.repeats),
        }
        emit(result, args.out)
        return
    model, tokenizer = moe_model(args.vocab), char_tokenizer()
    result = {
        "model": f"random-init qwen3_moe: 6 layers, hidden 256, 16 experts x 128, top-2, "
        f"vocab {args.vocab}, {where}",
        "speed": speed(model, tokenizer, args.prompts, args.batch_size, args.repeats),
    }
    if not args.speed_only:
        result["routing_rules"] = routing_rules(model, tokenizer, args.prompts, args.k)
    emit(result, args.out)


if __name__ == "__main__":
    main()
