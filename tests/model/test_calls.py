"""A failure inside the model's own code becomes a `ModelRunError` naming the model; one in
neurosteer's code run inside the forward (a hook) propagates unchanged, as a bug."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from neurosteer.errors import InputError, ModelRunError
from neurosteer.hooks.hookset import HookSet
from neurosteer.hooks.recorders import add_last_token_recorders
from neurosteer.model.calls import model_forward, model_generate, raised_by_model


class _Failing(nn.Module):
    """A "model" whose own forward raises `error` after running its one layer."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.layer = nn.Linear(3, 3)
        self.error = error

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.layer(x)
        raise self.error


class _Rewrapping(nn.Module):
    """A "model" whose own code turns any failure of its layer into another error, as some
    modelling code does."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(3, 3)

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # named as nn.Sequential names it
        try:
            return self.layer(input)
        except RuntimeError as err:
            raise ValueError("the layer failed") from err


def test_a_failure_in_the_models_own_code_is_a_model_run_error() -> None:
    error = RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x3 and 5x3)\nmore detail")
    with pytest.raises(ModelRunError) as caught:
        model_forward(_Failing(error), x=torch.ones(2, 3))
    message = str(caught.value)
    assert message.startswith(
        "the model's own forward pass failed (RuntimeError: mat1 and mat2 shapes cannot be "
        "multiplied (2x3 and 5x3)), inside its transformers/torch code, not neurosteer's; "
        "check that the model loads and runs with transformers alone"
    )
    assert "more detail" not in message
    assert "--debug shows the traceback" in message
    assert caught.value.__cause__ is error


def _raise_inside_hook() -> torch.Tensor:
    raise RuntimeError("a fault met by neurosteer's recorder")


@pytest.mark.parametrize("model", [nn.Sequential(nn.Linear(3, 3)), _Rewrapping()])
def test_a_failure_in_neurosteers_hook_inside_the_forward_is_left_a_bug(model: nn.Module) -> None:
    """The recorder hook (neurosteer's code) calls a function that raises: whether the error
    comes out as is or re-raised by the model's own code, it is neurosteer's, not the model's."""
    layer = next(m for m in model.modules() if isinstance(m, nn.Linear))
    with HookSet() as hooks:
        add_last_token_recorders(
            hooks, [layer], _raise_inside_hook, lambda _i, _x: None, stop_after_last=False
        )
        with pytest.raises((RuntimeError, ValueError)) as caught:
            model_forward(model, input=torch.ones(1, 2, 3))
    assert not isinstance(caught.value, ModelRunError)
    assert not raised_by_model(caught.value)


@pytest.mark.parametrize(
    "error",
    [
        InputError("a neurosteer error raised on purpose"),
        RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),  # retried smaller
    ],
)
def test_our_own_errors_and_out_of_memory_pass_unchanged(error: Exception) -> None:
    with pytest.raises(type(error)) as caught:
        model_forward(_Failing(error), x=torch.ones(2, 3))
    assert caught.value is error


def test_an_error_raised_before_the_model_is_reached_is_not_the_models() -> None:
    """A call neurosteer gets wrong fails in its own frame (no model frame below it)."""
    with pytest.raises(TypeError, match="not callable") as caught:
        model_forward(object(), x=torch.ones(1))  # type: ignore[arg-type]
    assert not isinstance(caught.value, ModelRunError)


def test_generate_past_the_embedding_names_the_models_generation(
    tiny_llama: tuple[PreTrainedModel, PreTrainedTokenizerFast],
) -> None:
    model, _ = tiny_llama
    vocab = model.get_input_embeddings().num_embeddings
    ids = torch.tensor([[1, vocab + 5]])
    with pytest.raises(ModelRunError) as caught:
        model_generate(model, input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=1)
    assert "the model's own generation failed (IndexError: index out of range" in str(caught.value)
    assert isinstance(caught.value.__cause__, IndexError)
