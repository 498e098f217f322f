"""Runtime helpers for every stage that runs the model on batches of prompts.

Recording, generation, KL, the model judge and the baselines all need the same few things: the
device the input ids go to, the pad id, the inputs of one left-padded forward pass (position ids
included), a first batch size, and a loop over length-sorted batches that halves the batch when
the accelerator runs out of memory. They live here once.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import ParamSpec, TypeVar, cast

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from neurosteer.model.layout import ModelLayout
from neurosteer.prompts.render import Batch, iter_batches

logger = logging.getLogger(__name__)

T = TypeVar("T")
P = ParamSpec("P")

#: Set on every function `runs_model` wraps (a test checks that each model-running entry
#: point carries it).
RUNS_MODEL_MARK = "__neurosteer_runs_model__"


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """Run the block with `model` in eval mode (dropout off), then give back each submodule's
    own mode, as the caller had it (a model from a training loop stays in training mode).

    Every pass that measures (discovery, RelP attribution, probes, KL, generation, ...) runs under
    this, through `runs_model`: dropout would give another circuit, probe and KL on each call.
    A model already in eval mode is left as it is (no pass over its modules' setters).
    """
    training = [module for module in model.modules() if module.training]
    if not training:  # already in eval mode (the usual case): nothing to switch or give back
        yield
        return
    model.eval()
    try:
        yield
    finally:
        for module in training:
            module.training = True


def runs_model(func: Callable[P, T]) -> Callable[P, T]:
    """Decorator for a function that runs its `model` argument: the call runs under
    `evaluating(model)`, whichever mode the caller left the model in.

    The function must take a parameter named `model` (an `nn.Module`).
    """
    signature = inspect.signature(func)
    if "model" not in signature.parameters:
        raise TypeError(f"runs_model needs a 'model' parameter on {func.__qualname__}")

    @functools.wraps(func)
    def call(*args: P.args, **kwargs: P.kwargs) -> T:
        model = signature.bind_partial(*args, **kwargs).arguments.get("model")
        if not isinstance(model, nn.Module):  # the function's own checks report it
            return func(*args, **kwargs)
        with evaluating(model):
            return func(*args, **kwargs)

    setattr(call, RUNS_MODEL_MARK, True)
    return cast(Callable[P, T], call)


def input_device(model: PreTrainedModel) -> torch.device:
    """Where input ids must go: the embedding's device (CPU when it is offloaded)."""
    weight = model.get_input_embeddings().weight
    assert isinstance(weight, torch.Tensor)
    return torch.device("cpu") if weight.device.type == "meta" else weight.device


def pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id batches are padded with: the tokenizer's pad id, or 0 when it has none.

    Padded positions are masked out, so any id in the vocabulary serves; `load_model` gives
    every tokenizer a pad token, this covers tokenizers prepared elsewhere.
    """
    pad = tokenizer.pad_token_id
    return int(pad) if pad is not None else 0


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """[batch, seq] int64 position ids from a [batch, seq] 0/1 mask: 0 at each row's first real
    token, counting up over real tokens (as `generate` makes them); padding before it gets 0."""
    return (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)


def forward_takes(model: PreTrainedModel, name: str) -> bool:
    """Whether `model.forward` takes the keyword `name` (e.g. "position_ids")."""
    return name in inspect.signature(model.forward).parameters


def model_inputs(
    model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The keyword inputs of one padded forward pass, on the devices of the given tensors.

    Args:
        input_ids, attention_mask: [batch, seq] int64, padded on either side.

    Returns:
        {"input_ids", "attention_mask"} and, for models whose forward takes them,
        "position_ids" from the mask (so a left-padded row reads like an unpadded one).
    """
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    if forward_takes(model, "position_ids"):
        inputs["position_ids"] = position_ids_from_mask(attention_mask)
    return inputs


# How torch's allocators word running out: CUDA and MPS ("... out of memory ..."), the CPU's
# DefaultCPUAllocator ("can't allocate memory: you tried to allocate N bytes"; older builds
# "not enough memory").
_OUT_OF_MEMORY = ("out of memory", "can't allocate memory", "not enough memory")


def is_out_of_memory(err: BaseException) -> bool:
    """An accelerator's or the CPU allocator's out-of-memory error, which a smaller batch may
    avoid (Python's own MemoryError is not one: it is not raised by torch's allocators)."""
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return True
    message = str(err).lower()
    return isinstance(err, RuntimeError) and any(words in message for words in _OUT_OF_MEMORY)


def free_accelerator_memory(device: torch.device) -> None:
    """Return cached blocks of `device`'s allocator (nothing on the CPU)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


def auto_batch_size(model: PreTrainedModel, layout: ModelLayout, longest: int) -> int:
    """A batch size that should fit: 16 on the CPU; on CUDA, half the free memory over a
    rough per-prompt activation footprint (one layer is live at a time under inference mode).

    Args:
        longest: the longest prompt, in tokens.

    The estimate need not be exact: an out-of-memory error halves the batch and retries
    (`run_batches`).
    """
    device = input_device(model)
    if device.type != "cuda":
        return 16
    free, _total = torch.cuda.mem_get_info(device)
    itemsize = next(model.parameters()).element_size()
    heads = int(getattr(model.config.get_text_config(), "num_attention_heads", 32) or 32)
    per_prompt = itemsize * longest * (8 * layout.d_model + 3 * layout.d_mlp + heads * longest)
    return int(max(1, min(256, free // 2 // max(per_prompt, 1))))


def run_batches(
    token_ids: Sequence[Sequence[int]],
    attempt: Callable[[Batch], T],
    finish: Callable[[Batch, T], None],
    *,
    batch_size: int,
    pad_id: int,
    device: torch.device,
    budgets: Sequence[int] | None = None,
    what: str = "running",
) -> int:
    """Run every prompt once in left-padded batches, longest first, halving on out-of-memory.

    Each batch goes to `attempt` (the model work, which may be tried again) and, once that
    returned, its result to `finish` (the bookkeeping, which runs once per batch and is never
    retried). When `attempt` raises an out-of-memory error, the accelerator's cache is freed and
    the same prompts are tried at half the batch size; nothing `finish` saw is lost or repeated.

    Args:
        token_ids: token ids per prompt.
        attempt, finish: as above; `Batch.index` gives each row's prompt index.
        batch_size: prompts per batch to start with (at least 1).
        pad_id: the id padding is filled with.
        device: where the batches run (its cache is freed on out-of-memory).
        budgets: new-token budget per prompt, for generation: a batch holds only prompts of
            one budget (see `prompts.batch_rows`).
        what: names the work in the warning logged when the batch is halved.

    Returns:
        The batch size in use at the end (smaller than asked if memory ran out).

    Raises:
        InputError: `batch_size` is below 1.
        Whatever `attempt` or `finish` raise; an out-of-memory error at batch size 1 too.
    """
    batches = iter_batches(token_ids, batch_size, pad_id, budgets)
    batch = next(batches, None)
    while batch is not None:
        try:
            result = attempt(batch)
        except Exception as err:
            if not is_out_of_memory(err) or batch_size == 1:
                raise
        else:
            finish(batch, result)
            batch = next(batches, None)
            continue
        # outside the except block, the error's traceback no longer holds the batch's tensors
        free_accelerator_memory(device)
        batch_size //= 2
        logger.warning("out of memory; %s with batch size %d", what, batch_size)
        batch = batches.send(batch_size)  # the same prompts again, in smaller batches
    return batch_size
