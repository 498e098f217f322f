"""The neuron logit lens on tiny models of every family: the tokens it says a neuron promotes
are the tokens the model itself ranks first when that neuron's output dominates the residual
stream at the last layer (and last when its activation is negative)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from neurosteer.errors import InputError
from neurosteer.methods.logit_lens import (
    neuron_logit_lens,
    residual_directions,
    unembed,
)
from neurosteer.model.layout import resolve_layout

Model = tuple[PreTrainedModel, PreTrainedTokenizerFast]
BIG = 1e4
NEURON = 5


@contextmanager
def _only_neuron(model: nn.Module, layer: int, neuron: int, value: float) -> Iterator[None]:
    """At `layer`, every MLP neuron silent but `neuron`, set to `value` at every position; a
    norm on the MLP's output (Gemma 2/3, OLMo 2) has its output scaled by BIG, so that the
    neuron's write outweighs the rest of the residual stream."""
    layout = resolve_layout(model)
    site = layout.site_modules(model)[layer]

    def only(_: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        acts = torch.zeros_like(args[0])
        acts[..., neuron] = value
        return (acts, *args[1:])

    handles = [site.register_forward_pre_hook(only)]
    post = getattr(layout.layer_modules(model)[layer], "post_feedforward_layernorm", None)
    if isinstance(post, nn.Module):
        handles.append(post.register_forward_hook(lambda _m, _a, out: out * BIG))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _model_ranking(model: Model, layer: int, value: float) -> list[int]:
    """Token ids by the LM head's logits at the last position, highest first (the head's own
    output, before any soft-capping)."""
    net, tokenizer = model
    head = net.get_output_embeddings()
    seen: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda _m, _a, out: seen.append(out.detach()))
    ids = tokenizer("How do I bake bread?", return_tensors="pt").input_ids
    try:
        with _only_neuron(net, layer, NEURON, value), torch.no_grad():
            net(input_ids=ids)
    finally:
        hook.remove()
    logits = seen[-1][0, -1, : len(tokenizer)].float()
    return logits.argsort(descending=True).tolist()


def test_the_lens_names_the_tokens_the_neuron_moves(tiny_model: Model) -> None:
    net, tokenizer = tiny_model
    layout = resolve_layout(net)
    last = layout.n_layers - 1
    at = (torch.tensor([last]), torch.tensor([NEURON]))
    lens_logits = unembed(net, residual_directions(net, layout, *at), len(tokenizer))[0]
    lens_order = lens_logits.argsort(descending=True).tolist()
    assert _model_ranking(tiny_model, last, BIG)[:3] == lens_order[:3]
    assert _model_ranking(tiny_model, last, -BIG)[:3] == lens_order[::-1][:3]
    # the texts and values handed out are those of the same tokens
    (found,) = neuron_logit_lens(net, tokenizer, layout, *at, top=3)
    assert [text for text, _ in found.promoted] == [tokenizer.decode([i]) for i in lens_order[:3]]
    assert [text for text, _ in found.suppressed] == [
        tokenizer.decode([i]) for i in lens_order[::-1][:3]
    ]
    promoted, suppressed = [v for _, v in found.promoted], [v for _, v in found.suppressed]
    assert promoted == sorted(promoted, reverse=True)  # strongest first on both sides
    assert suppressed == sorted(suppressed)
    assert found.promoted[0][1] > 0 > found.suppressed[0][1]


def test_a_neuron_outside_the_model_or_no_tokens_is_refused(tiny_llama: Model) -> None:
    net, tokenizer = tiny_llama
    layout = resolve_layout(net)
    outside = (torch.tensor([layout.n_layers]), torch.tensor([0]))
    with pytest.raises(InputError, match="outside"):
        neuron_logit_lens(net, tokenizer, layout, *outside)
    with pytest.raises(InputError, match="at least 1"):
        neuron_logit_lens(net, tokenizer, layout, torch.tensor([2]), torch.tensor([0]), top=0)
