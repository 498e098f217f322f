"""MoE checkpoints baked exactly: streamed shard by shard (fused 3-D expert tensors, or one
tensor per expert as transformers saves Mixtral and Qwen-MoE) and with `save_baked`, equal to
the in-memory bake."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_models import make_tiny, save_tiny
from transformers import AutoModelForCausalLM

from conftest import NEGATIVE_PROMPTS, POSITIVE_PROMPTS
from neurosteer import bake, discover, render_prompts, save_baked
from neurosteer.export.streaming import bake_streaming


@pytest.mark.parametrize("family", ["mixtral", "gpt_oss", "deepseek_v3"])
def test_streamed_and_saved_moe_bakes_equal_the_in_memory_bake(family: str, tmp_path: Path) -> None:
    source = save_tiny(family, tmp_path / "source")
    model = AutoModelForCausalLM.from_pretrained(source, experts_implementation="eager").eval()
    _, tokenizer = make_tiny(family)
    circuit = discover(
        model,
        tokenizer,
        POSITIVE_PROMPTS,
        NEGATIVE_PROMPTS,
        top_k=15,
        skip_layers=(),
        universal_filter=False,
    )
    rendered = render_prompts(tokenizer, POSITIVE_PROMPTS[:3])
    batch = tokenizer(rendered, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        base = model(**batch).logits
    handle = bake(model, circuit, 0.0)
    with torch.no_grad():
        expected = model(**batch).logits
    handle.undo()
    report = bake_streaming(source, circuit, 0.0, tmp_path / "streamed")
    assert report.tensors  # expert tensors were found and rewritten
    save_baked(model, tokenizer, circuit, 0.0, tmp_path / "saved")
    for folder in ("streamed", "saved"):
        baked = AutoModelForCausalLM.from_pretrained(
            tmp_path / folder, experts_implementation="eager"
        ).eval()
        with torch.no_grad():
            got = baked(**batch).logits
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert (expected - base).abs().max() > 0.1
