"""The architectural bound on MoE discovery speed: how much of a plain forward pass discovery
can skip at all, from the models' published configs (no weights: the model is built on the
meta device, so its parameters have shapes and no storage).

Discovery records, at each prompt's last token, the input of every down projection, the last
layer's included; so it never needs the LM head, nor the last layer's MLP (router, experts,
shared experts) at any token but the last. A plain forward computes all of them at every token.
In per-token multiply-accumulates (MACs, one per weight a token meets; attention scores,
norms and activations left out):

    total   = Σ_layers (attention projections + router + k/E × routed experts + shared
              experts or dense MLP) + LM head
    skipped = LM head + the last layer's MLP                    (what neurosteer skips)
    bound   = 1 − skipped / total                                (the best discovery / plain)

`bound_q` also skips the last layer's query and output projections (its attention for the last
query alone, which transformers' attention modules cannot do without rewriting them); keys and
values are needed at every token. Leaving out the attention scores (which grow with the prompt
and cannot be skipped except at the last layer) makes both bounds lower, so optimistic.

The two models `bench_moe.py` times are counted the same way, beside the real ones.

    cd benchmarks && python moe_bound.py [--out results-moe-bound.json]
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from typing import Any

import torch
from common import emit
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

from neurosteer.model.layout import ModelLayout, resolve_layout

# The published configs' numbers (each model's config.json on the Hugging Face hub).
PUBLISHED: dict[str, tuple[str, dict[str, Any]]] = {
    "Qwen3-30B-A3B": (
        "qwen3_moe",
        {
            "hidden_size": 2048,
            "num_hidden_layers": 48,
            "num_attention_heads": 32,
            "num_key_value_heads": 4,
            "head_dim": 128,
            "num_experts": 128,
            "num_experts_per_tok": 8,
            "moe_intermediate_size": 768,
            "intermediate_size": 6144,
            "decoder_sparse_step": 1,
            "mlp_only_layers": [],
            "vocab_size": 151936,
            "tie_word_embeddings": False,
        },
    ),
    "Mixtral-8x7B": (
        "mixtral",
        {
            "hidden_size": 4096,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "head_dim": 128,
            "num_local_experts": 8,
            "num_experts_per_tok": 2,
            "intermediate_size": 14336,
            "vocab_size": 32000,
            "tie_word_embeddings": False,
        },
    ),
    "OLMoE-1B-7B": (
        "olmoe",
        {
            "hidden_size": 2048,
            "num_hidden_layers": 16,
            "num_attention_heads": 16,
            "num_key_value_heads": 16,
            "num_experts": 64,
            "num_experts_per_tok": 8,
            "intermediate_size": 1024,
            "vocab_size": 50304,
            "tie_word_embeddings": False,
        },
    ),
    "DeepSeek-V3": (
        "deepseek_v3",
        {
            "hidden_size": 7168,
            "num_hidden_layers": 61,
            "first_k_dense_replace": 3,
            "intermediate_size": 18432,
            "moe_intermediate_size": 2048,
            "n_routed_experts": 256,
            "n_shared_experts": 1,
            "num_experts_per_tok": 8,
            "n_group": 8,
            "topk_group": 4,
            "num_attention_heads": 128,
            "num_key_value_heads": 128,
            "q_lora_rank": 1536,
            "kv_lora_rank": 512,
            "qk_nope_head_dim": 128,
            "qk_rope_head_dim": 64,
            "v_head_dim": 128,
            "vocab_size": 129280,
            "tie_word_embeddings": False,
        },
    ),
}

QUERY_SIDE = ("q_proj", "q_a_proj", "q_b_proj", "o_proj")
"""Attention projections that only the queries need (MLA's included): skippable at all but the
last token of the last layer, in `bound_q`."""


@dataclass(frozen=True)
class Bound:
    """Per-token MACs of a model's forward pass and what discovery can skip of them.

    Attributes:
        total: MACs per token of a plain forward (LM head included).
        lm_head: the LM head's share of `total` (MACs).
        last_mlp: the last layer's MLP (router, active routed experts, shared experts).
        last_query: the last layer's query-side attention projections (`QUERY_SIDE`).
        bound: 1 − (lm_head + last_mlp) / total.
        bound_q: 1 − (lm_head + last_mlp + last_query) / total.
    """

    total: int
    lm_head: int
    last_mlp: int
    last_query: int
    bound: float
    bound_q: float


def published_configs() -> dict[str, PretrainedConfig]:
    """{name: config} of the real models, from their published numbers (`PUBLISHED`)."""
    return {
        name: AutoConfig.for_model(model_type, **numbers)
        for name, (model_type, numbers) in PUBLISHED.items()
    }


def bench_configs() -> dict[str, PretrainedConfig]:
    """{name: config} of the two models `bench_moe.py` times."""
    from bench_moe import MOE_SHAPE

    from neurosteer.workflows.organism import MOE_INSTRUCT_DIR

    return {
        "random-init Qwen3-MoE (bench_moe.py, vocab 1024)": AutoConfig.for_model(
            "qwen3_moe", vocab_size=1024, **MOE_SHAPE
        ),
        "MoE organism": AutoConfig.from_pretrained(MOE_INSTRUCT_DIR),
    }


def meta_model(config: PretrainedConfig) -> nn.Module:
    """The model of `config`, built on the meta device (shapes, no storage)."""
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def _macs(module: nn.Module, share: float = 1.0) -> float:
    """MACs per token of the matrices in `module` (parameters of 2 or more dims) × `share`."""
    return share * sum(p.numel() for p in module.parameters() if p.dim() >= 2)


def _routed_share(model: nn.Module, layout: ModelLayout) -> float:
    """k / E: the share of a routed-experts module one token runs through."""
    config = model.config.get_text_config()  # type: ignore[operator]
    assert layout.moe is not None  # every model here is an MoE model
    n_experts = max(b.n_experts for layer in layout.moe.layers for b in layer.blocks)
    return int(config.num_experts_per_tok) / n_experts


def layer_macs(
    model: nn.Module, layout: ModelLayout, index: int, share: float
) -> tuple[float, float, float]:
    """(attention + other non-MLP matrices, MLP, query-side projections) MACs per token of
    decoder layer `index` (routed experts counted at `share`)."""
    assert layout.moe is not None
    layer = layout.layer_modules(model)[index]
    spec = layout.moe.layers[index]
    mlp = layer.get_submodule(spec.mlp_path)
    routed = [layer.get_submodule(b.path) for b in spec.blocks if b.kind == "routed"]
    mlp_macs = _macs(mlp) - sum(_macs(r) for r in routed) + sum(_macs(r, share) for r in routed)
    query = sum(_macs(m) for n, m in layer.named_modules() if n.split(".")[-1] in QUERY_SIDE)
    return _macs(layer) - _macs(mlp), mlp_macs, query


def bound(model: nn.Module) -> Bound:
    """The per-token MACs of `model` (built by `meta_model`) and discovery's bound."""
    layout = resolve_layout(model)
    share = _routed_share(model, layout)
    rows = [layer_macs(model, layout, i, share) for i in range(layout.n_layers)]
    head = model.get_output_embeddings()  # type: ignore[operator]
    lm_head = _macs(head)
    total = sum(a + m for a, m, _ in rows) + lm_head
    _, last_mlp, last_query = rows[-1]
    return Bound(
        total=round(total),
        lm_head=round(lm_head),
        last_mlp=round(last_mlp),
        last_query=round(last_query),
        bound=1 - (lm_head + last_mlp) / total,
        bound_q=1 - (lm_head + last_mlp + last_query) / total,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    configs = {**published_configs(), **bench_configs()}
    result = {
        name: {"model_type": config.model_type, **asdict(bound(meta_model(config)))}
        for name, config in configs.items()
    }
    emit(result, args.out)


if __name__ == "__main__":
    main()
