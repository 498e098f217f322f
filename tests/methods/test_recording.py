"""Stage 3: recorded activations are the true MLP-output-projection inputs at the last token,
batched runs equal one-at-a-time runs, and the running statistics are exact."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from neurosteer import render_prompts, resolve_layout
from neurosteer.errors import ModelRunError
from neurosteer.methods.recording import RunningStats, record_stats, run_last_token_pass
from neurosteer.prompts.render import tokenize_rendered


def _token_ids(tokenizer: PreTrainedTokenizerFast, prompts: list[str]) -> list[list[int]]:
    return tokenize_rendered(tokenizer, render_prompts(tokenizer, prompts), templated=True)


def _manual_site_input(mlp: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What each family's MLP feeds its output projection, computed by hand from its parts."""
    if hasattr(mlp, "gate_up_proj"):  # Phi-3: one fused projection, gate half first
        gate, up = mlp.gate_up_proj(x).chunk(2, dim=-1)
        return up * mlp.activation_fn(gate)
    if hasattr(mlp, "gate_proj"):  # Llama, Mistral, Qwen, Gemma, OLMo 2
        return mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x)
    if hasattr(mlp, "c_fc"):  # GPT-2
        return mlp.act(mlp.c_fc(x))
    if hasattr(mlp, "dense_h_to_4h"):  # GPT-NeoX
        return mlp.act(mlp.dense_h_to_4h(x))
    raise AssertionError(f"no manual formula for {type(mlp).__name__}")


def test_recorded_activations_equal_a_manual_mlp_computation(
    tiny_model: tuple[PreTrainedModel, PreTrainedTokenizerFast],
    positive_prompts: list[str],
) -> None:
    model, tokenizer = tiny_model
    layout = resolve_layout(model)
    ids = _token_ids(tokenizer, positive_prompts[:3])
    recorded: dict[int, torch.Tensor] = {}
    run_last_token_pass(
        model, layout, ids, batch_size=8, pad_id=0,
        on_layer=lambda layer, acts: recorded.__setitem__(layer, acts.clone()),
    )  # fmt: skip

    # The same batch, run in full with the MLP inputs captured by plain hooks (test-only).
    mlp_inputs: dict[int, torch.Tensor] = {}
    layers = layout.layer_modules(model)
    mlp_name = layout.site_path.split(".")[0]
    handles = [
        layer.get_submodule(mlp_name).register_forward_pre_hook(
            lambda _m, args, i=i: mlp_inputs.__setitem__(i, args[0].detach())
        )
        for i, layer in enumerate(layers)
    ]
    order = sorted(range(3), key=lambda i: -len(ids[i]))  # the recorder's batch order
    width = len(ids[order[0]])
    input_ids = torch.tensor([[0] * (width - len(ids[i])) + ids[i] for i in order])
    mask = (
        torch.arange(width)[None, :]
        >= (width - torch.tensor([len(ids[i]) for i in order]))[:, None]
    ).long()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    try:
        with torch.no_grad():
            model(input_ids=input_ids, attention_mask=mask, position_ids=positions)
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad():
        for i, layer in enumerate(layers):
            expected = _manual_site_input(layer.get_submodule(mlp_name), mlp_inputs[i])[:, -1]
            torch.testing.assert_close(recorded[i], expected, rtol=1e-5, atol=1e-5)
            assert recorded[i].shape == (3, layout.d_mlp)


def test_batched_recording_equals_one_prompt_at_a_time(
    tiny_model: tuple[PreTrainedModel, PreTrainedTokenizerFast],
    positive_prompts: list[str],
) -> None:
    model, tokenizer = tiny_model
    layout = resolve_layout(model)
    ids = _token_ids(tokenizer, positive_prompts)
    assert len({len(i) for i in ids}) > 3  # really padded
    batched = record_stats(model, layout, ids, batch_size=3, pad_id=0)
    single = record_stats(model, layout, ids, batch_size=1, pad_id=0)
    assert batched.count == single.count == len(ids)
    torch.testing.assert_close(batched.mean, single.mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(batched.var, single.var, rtol=1e-4, atol=1e-5)


def test_recording_stops_before_the_lm_head_and_leaves_no_hooks(
    tiny_llama: tuple[PreTrainedModel, PreTrainedTokenizerFast],
    negative_prompts: list[str],
) -> None:
    model = copy.deepcopy(tiny_llama[0])
    tokenizer = tiny_llama[1]
    layout = resolve_layout(model)
    calls: list[int] = []
    handle = model.lm_head.register_forward_hook(lambda *_: calls.append(1))
    try:
        stats = record_stats(
            model, layout, _token_ids(tokenizer, negative_prompts), batch_size=4, pad_id=0
        )
    finally:
        handle.remove()
    assert calls == []
    assert stats.mean.shape == (layout.n_layers, layout.d_mlp)
    assert all(not m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("batch_sizes", [(5,), (1, 1, 1, 1, 1), (2, 3), (4, 1)])
def test_running_stats_match_torch_mean_and_var(batch_sizes: tuple[int, ...]) -> None:
    gen = torch.Generator().manual_seed(0)
    data = torch.randn(sum(batch_sizes), 2, 7, generator=gen) * 50 + 1000  # large offset
    stats = RunningStats(n_layers=2)
    start = 0
    for size in batch_sizes:
        for layer in range(2):
            stats.update(layer, data[start : start + size, layer])
        start += size
    result = stats.result()
    torch.testing.assert_close(result.mean, data.mean(0), rtol=1e-6, atol=1e-3)
    torch.testing.assert_close(result.var, data.var(0), rtol=1e-4, atol=1e-2)


def test_out_of_memory_halves_the_batch_without_losing_or_repeating_prompts(
    tiny_llama: tuple[PreTrainedModel, PreTrainedTokenizerFast],
    positive_prompts: list[str],
) -> None:
    model = copy.deepcopy(tiny_llama[0])
    layout = resolve_layout(model)
    ids = _token_ids(tiny_llama[1], positive_prompts)
    expected = record_stats(model, layout, ids, batch_size=1, pad_id=0)
    seen: list[int] = []

    def fake_oom(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        # fails in the middle of the model, after some layers were already recorded
        seen.append(args[0].shape[0])
        if args[0].shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    handle = layout.layer_modules(model)[2].register_forward_pre_hook(fake_oom)
    stats = RunningStats(layout.n_layers)
    try:
        final = run_last_token_pass(
            model, layout, ids, batch_size=8, pad_id=0, on_layer=stats.update
        )
    finally:
        handle.remove()
    assert final == 2
    assert seen[:3] == [8, 4, 2]
    result = stats.result()
    assert result.count == len(ids)
    torch.testing.assert_close(result.mean, expected.mean, rtol=1e-4, atol=1e-5)


def test_errors_other_than_out_of_memory_are_not_retried(
    tiny_llama: tuple[PreTrainedModel, PreTrainedTokenizerFast],
    positive_prompts: list[str],
) -> None:
    model = copy.deepcopy(tiny_llama[0])
    layout = resolve_layout(model)

    def broken(_module: nn.Module, _args: tuple[torch.Tensor, ...]) -> None:
        raise RuntimeError("shape mismatch")

    handle = layout.layer_modules(model)[1].register_forward_pre_hook(broken)
    try:
        # a hook not of neurosteer's making fails inside the forward: the model's failure
        with pytest.raises(ModelRunError, match="RuntimeError: shape mismatch") as caught:
            record_stats(
                model, layout, _token_ids(tiny_llama[1], positive_prompts), batch_size=8, pad_id=0
            )
        assert isinstance(caught.value.__cause__, RuntimeError)
    finally:
        handle.remove()
    assert all(not m._forward_pre_hooks for m in model.modules())


def test_every_activation_keeps_each_prompt_in_its_column_and_refuses_a_missing_one() -> None:
    from neurosteer.methods.recording import EveryActivation, PromptActivations

    torch.manual_seed(0)
    acts = torch.randn(2, 5, 3, 4)  # [batch, prompt in batch, layer, neuron]
    order = [torch.tensor([3, 0, 4]), torch.tensor([1, 2])]  # batches run longest first
    layers, neurons = torch.tensor([2, 0, 1, 2]), torch.tensor([3, 0, 1, 0])
    every, chosen = EveryActivation(5, 3, 4), PromptActivations(5, layers, neurons)
    with pytest.raises(RuntimeError, match="not every prompt"):
        every.take(layers, neurons)
    for b, index in enumerate(order):
        for keeper in (every, chosen):
            keeper.rows(index)
            for layer in range(3):
                keeper.update(layer, acts[b, : len(index), layer])
    expected = torch.empty(4, 5)
    for b, index in enumerate(order):
        for row, prompt in enumerate(index.tolist()):
            expected[:, prompt] = acts[b, row][layers, neurons]
    assert torch.equal(every.take(layers, neurons), expected)
    assert torch.equal(every.take(layers, neurons), chosen.result())
