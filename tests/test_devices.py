"""Models whose weights accelerate keeps off the execution device (offload hooks, meta
parameters): discovery and steering give the same results; in-memory baking refuses clearly."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from accelerate import cpu_offload
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from neurosteer import InputError, bake, discover, generate, load_model, render_prompts, steer
from neurosteer.hooks import count_hooks

Pair = tuple[PreTrainedModel, PreTrainedTokenizerFast]


@pytest.fixture(scope="module")
def offloaded(tiny_llama: Pair) -> PreTrainedModel:
    model = copy.deepcopy(tiny_llama[0])
    cpu_offload(model, execution_device=torch.device("cpu"))
    assert model.model.layers[2].mlp.down_proj.weight.device.type == "meta"
    return model


def test_discovery_and_steering_match_on_an_offloaded_model(
    tiny_llama: Pair,
    offloaded: PreTrainedModel,
    positive_prompts: list[str],
    negative_prompts: list[str],
) -> None:
    model, tokenizer = tiny_llama
    here = discover(model, tokenizer, positive_prompts, negative_prompts, top_k=6)
    there = discover(offloaded, tokenizer, positive_prompts, negative_prompts, top_k=6)
    assert torch.equal(here.layers, there.layers)
    assert torch.equal(here.neurons, there.neurons)
    torch.testing.assert_close(here.delta, there.delta)

    rendered = render_prompts(tokenizer, positive_prompts[:3])
    batch = tokenizer(rendered, return_tensors="pt", padding=True, add_special_tokens=False)
    before = count_hooks(offloaded)
    with torch.no_grad():
        with steer(model, here, 0.0):
            expected = model(**batch).logits
        with steer(offloaded, here, 0.0):
            got = offloaded(**batch).logits
    torch.testing.assert_close(got, expected)
    assert count_hooks(offloaded) == before


def test_in_memory_bake_refuses_offloaded_weights(
    tiny_llama: Pair,
    offloaded: PreTrainedModel,
    positive_prompts: list[str],
    negative_prompts: list[str],
) -> None:
    model, tokenizer = tiny_llama
    circuit = discover(model, tokenizer, positive_prompts, negative_prompts, top_k=6)
    with pytest.raises(InputError, match="offloaded"):
        bake(offloaded, circuit, 0.0)


def test_device_map_auto_with_disk_offload(
    tiny_llama_dir: Path,
    positive_prompts: list[str],
    negative_prompts: list[str],
    tmp_path: Path,
) -> None:
    model, tokenizer = load_model(tiny_llama_dir)
    split, _ = load_model(
        tiny_llama_dir, device_map="auto", max_memory={"cpu": "40KB"}, offload_folder=tmp_path
    )
    assert "disk" in set(split.hf_device_map.values())
    here = discover(model, tokenizer, positive_prompts, negative_prompts, top_k=6)
    there = discover(split, tokenizer, positive_prompts, negative_prompts, top_k=6)
    assert torch.equal(here.neurons, there.neurons)
    torch.testing.assert_close(here.delta, there.delta)
    with steer(model, here, 0.0):
        expected = generate(model, tokenizer, positive_prompts[:2], max_new_tokens=5)
    with steer(split, here, 0.0):
        got = generate(split, tokenizer, positive_prompts[:2], max_new_tokens=5)
    assert got == expected
    with pytest.raises(InputError, match="need a device map"):
        load_model(tiny_llama_dir, max_memory={"cpu": "1GB"})
