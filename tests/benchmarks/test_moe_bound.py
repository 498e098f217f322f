"""benchmarks/moe_bound.py's per-token count, against the count written out by hand from the
config, on small configs of two families (one with MLA attention, dense first layers and a
shared expert)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from transformers import AutoConfig

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
import moe_bound


def test_qwen3_moe_count_is_the_hand_count() -> None:
    h, heads, kv, hd, e, k, i, v, n = 64, 4, 2, 16, 8, 2, 24, 100, 3
    config = AutoConfig.for_model(
        "qwen3_moe",
        hidden_size=h,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        head_dim=hd,
        num_experts=e,
        num_experts_per_tok=k,
        moe_intermediate_size=i,
        num_hidden_layers=n,
        vocab_size=v,
        tie_word_embeddings=False,
    )
    attention = h * heads * hd * 2 + h * kv * hd * 2  # q, o; k, v
    mlp = h * e + k * 3 * h * i  # router; gate, up, down of k experts
    found = moe_bound.bound(moe_bound.meta_model(config))
    assert found.total == n * (attention + mlp) + h * v
    assert (found.lm_head, found.last_mlp, found.last_query) == (h * v, mlp, h * heads * hd * 2)
    assert found.bound == pytest.approx(1 - (h * v + mlp) / found.total)
    assert found.bound_q < found.bound < 1


def test_deepseek_v3_count_is_the_hand_count() -> None:
    h, heads, e, k, i, dense_i, v = 64, 4, 8, 2, 16, 48, 100
    q_rank, kv_rank, nope, rope, vd = 24, 16, 8, 4, 8
    config = AutoConfig.for_model(
        "deepseek_v3",
        hidden_size=h,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        n_routed_experts=e,
        n_shared_experts=1,
        num_experts_per_tok=k,
        n_group=2,
        topk_group=1,
        moe_intermediate_size=i,
        intermediate_size=dense_i,
        first_k_dense_replace=1,
        num_hidden_layers=3,
        q_lora_rank=q_rank,
        kv_lora_rank=kv_rank,
        qk_nope_head_dim=nope,
        qk_rope_head_dim=rope,
        v_head_dim=vd,
        vocab_size=v,
        tie_word_embeddings=False,
    )
    query = h * q_rank + q_rank * heads * (nope + rope) + heads * vd * h  # q_a, q_b, o
    attention = query + h * (kv_rank + rope) + kv_rank * heads * (nope + vd)  # kv_a, kv_b
    moe = h * e + k * 3 * h * i + 3 * h * i  # router, k routed experts, the shared expert
    found = moe_bound.bound(moe_bound.meta_model(config))
    assert found.total == 3 * attention + 3 * h * dense_i + 2 * moe + h * v
    assert (found.last_mlp, found.last_query) == (moe, query)
