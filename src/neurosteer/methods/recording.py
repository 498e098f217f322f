"""Run prompts through the model and keep last-token neuron statistics.

One forward pass per batch (sorted by length, left-padded, `inference_mode`). A pre-hook on
every neuron site takes the activation at each prompt's last real token, [batch, d_mlp], and
folds it into per-layer running statistics; the forward pass is stopped right after the last
layer's site, so the LM head never runs. Nothing of shape [batch, seq, d_mlp] outlives its hook.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from neurosteer.hooks import HookSet, StopForward, add_last_token_recorders
from neurosteer.methods.moe_sites import add_moe_recorders
from neurosteer.model.calls import model_forward
from neurosteer.model.layout import ModelLayout
from neurosteer.model.runtime import input_device, model_inputs, run_batches, runs_model
from neurosteer.prompts.render import Batch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ActivationStats:
    """Last-token activation statistics of one prompt set, per layer and neuron.

    Attributes:
        count: number of prompts.
        mean: [n_layers, d_mlp] float32 mean activation.
        var: [n_layers, d_mlp] float32 unbiased variance (zeros when count < 2).
    """

    count: int
    mean: torch.Tensor
    var: torch.Tensor


class RunningStats:
    """Per-layer running mean and sum of squared deviations, merged batch by batch (Chan et al.).

    Kept in float32 on each layer's own device; merging batch moments instead of summing raw
    squares keeps the variance accurate even when activations are large.
    """

    def __init__(self, n_layers: int) -> None:
        self.count = [0] * n_layers
        self.mean: list[torch.Tensor | None] = [None] * n_layers
        self.m2: list[torch.Tensor | None] = [None] * n_layers

    def update(self, layer: int, acts: torch.Tensor) -> None:
        x = acts.detach().float()  # [batch, d_mlp]
        n_b = x.shape[0]
        mean_b = x.mean(dim=0)
        m2_b = ((x - mean_b) ** 2).sum(dim=0)
        n_a, mean_a, m2_a = self.count[layer], self.mean[layer], self.m2[layer]
        if mean_a is None or m2_a is None:
            self.count[layer], self.mean[layer], self.m2[layer] = n_b, mean_b, m2_b
            return
        n = n_a + n_b
        delta = mean_b - mean_a
        self.mean[layer] = mean_a + delta * (n_b / n)
        self.m2[layer] = m2_a + m2_b + delta**2 * (n_a * n_b / n)
        self.count[layer] = n

    def result(self) -> ActivationStats:
        if any(m is None for m in self.mean) or len(set(self.count)) != 1:
            raise RuntimeError("not every layer was recorded the same number of times")
        count = self.count[0]
        mean = torch.stack([m.cpu() for m in self.mean if m is not None])
        m2 = torch.stack([m.cpu() for m in self.m2 if m is not None])
        var = m2 / (count - 1) if count > 1 else torch.zeros_like(m2)
        return ActivationStats(count=count, mean=mean, var=var)


class PromptActivations:
    """Each prompt's last-token activation of chosen neurons, in the prompts' own order.

    Batches arrive sorted by length; `rows` (called before a batch's layers) says which
    prompts it holds, so the values land in the columns of their prompts.

    Args:
        n_prompts: the prompts that will be run.
        layers, neurons: [k] int64, the neurons to keep (row i: neuron `neurons[i]` of layer
            `layers[i]`).
    """

    def __init__(self, n_prompts: int, layers: torch.Tensor, neurons: torch.Tensor) -> None:
        self.layers, self.neurons = layers.long().cpu(), neurons.long().cpu()
        self.values = torch.full((len(self.layers), n_prompts), float("nan"))  # [k, n_prompts]
        self._index: torch.Tensor | None = None

    def rows(self, index: torch.Tensor) -> None:
        """The prompt index of each row of the batch whose layers come next ([batch])."""
        self._index = index.cpu()

    def update(self, layer: int, acts: torch.Tensor) -> None:
        """Keep the chosen neurons of `layer` from its [batch, d_mlp] activations."""
        assert self._index is not None  # rows() runs before every batch's layers
        mine = (self.layers == layer).nonzero().flatten()
        if mine.numel():
            taken = acts.detach()[:, self.neurons[mine].to(acts.device)].float().cpu()
            self.values[mine.unsqueeze(1), self._index.unsqueeze(0)] = taken.T

    def result(self) -> torch.Tensor:
        """[k, n_prompts] float32.

        Raises:
            RuntimeError: a prompt was not recorded (a pass that did not run them all).
        """
        if bool(self.values.isnan().any()):
            raise RuntimeError("not every prompt was recorded at every kept neuron")
        return self.values


class EveryActivation:
    """Each prompt's last-token activation of every neuron, in the prompts' own order: what
    `PromptActivations` keeps for the full [n_layers × d_mlp] grid, with one copy per layer
    and batch instead of a selection.

    Args:
        n_prompts: the prompts that will be run.
        n_layers, d_mlp: the grid (an MoE layer narrower than d_mlp has zeros past its width).

    Memory: n_prompts × n_layers × d_mlp float32 (discovery keeps one per set while it fits
    `KEEP_IN_PASS_BYTES`).
    """

    def __init__(self, n_prompts: int, n_layers: int, d_mlp: int) -> None:
        self.values = torch.full((n_prompts, n_layers, d_mlp), float("nan"))
        self._index: torch.Tensor | None = None

    def rows(self, index: torch.Tensor) -> None:
        """The prompt index of each row of the batch whose layers come next ([batch])."""
        self._index = index.cpu()

    def update(self, layer: int, acts: torch.Tensor) -> None:
        """Keep `layer`'s [batch, d_mlp] activations in the columns of their prompts."""
        assert self._index is not None  # rows() runs before every batch's layers
        self.values[self._index, layer] = acts.detach().float().cpu()

    def take(self, layers: torch.Tensor, neurons: torch.Tensor) -> torch.Tensor:
        """[k, n_prompts] float32 of the k neurons ([k] `layers` and `neurons`), a copy.

        Raises:
            RuntimeError: a prompt was not recorded (a pass that did not run them all).
        """
        if bool(self.values.isnan().any()):
            raise RuntimeError("not every prompt was recorded at every kept neuron")
        return self.values[:, layers.long(), neurons.long()].T.contiguous()


class TopActivationCounter:
    """Counts, per neuron, how many prompts put it among their top-k by |activation|.

    The ranking is global over all layers of one prompt: each layer hands over its own top-k
    (the global top-k can take at most k from one layer), and at the end of a batch these are
    merged into each prompt's global top-k.
    """

    def __init__(self, layout: ModelLayout, k: int) -> None:
        self.layout = layout
        self.k = k
        self.counts = torch.zeros(layout.n_layers * layout.d_mlp, dtype=torch.long)
        self.n_prompts = 0
        self._values: dict[int, torch.Tensor] = {}
        self._flat: dict[int, torch.Tensor] = {}

    def update(self, layer: int, acts: torch.Tensor) -> None:
        k_layer = min(self.k, acts.shape[-1])
        values, index = acts.detach().float().abs().topk(k_layer, dim=-1)  # [batch, k_layer]
        self._values[layer] = values.cpu()
        self._flat[layer] = index.cpu() + layer * self.layout.d_mlp

    def end_batch(self) -> None:
        layers = sorted(self._values)
        values = torch.cat([self._values[i] for i in layers], dim=-1)  # [batch, L * k_layer]
        flat = torch.cat([self._flat[i] for i in layers], dim=-1)
        top = values.topk(self.k, dim=-1).indices
        chosen = flat.gather(-1, top).flatten()
        self.counts += torch.bincount(chosen, minlength=self.counts.numel())
        self.n_prompts += values.shape[0]
        self._values.clear()
        self._flat.clear()

    def frequency(self) -> torch.Tensor:
        """[n_layers, d_mlp] share of prompts in whose top-k each neuron is."""
        share = self.counts.float() / max(self.n_prompts, 1)
        return share.view(self.layout.n_layers, self.layout.d_mlp)


@runs_model
def run_last_token_pass(
    model: PreTrainedModel,
    layout: ModelLayout,
    token_ids: Sequence[Sequence[int]],
    *,
    batch_size: int,
    pad_id: int,
    on_layer: Callable[[int, torch.Tensor], None],
    on_batch_end: Callable[[], None] | None = None,
    on_rows: Callable[[torch.Tensor], None] | None = None,
    progress: bool = False,
    desc: str = "recording",
    points: Sequence[nn.Module] | None = None,
    capture: Literal["input", "output"] = "input",
) -> int:
    """Run every prompt once and hand each layer's last-token site input to `on_layer`
    (as (layer, [batch, width]) in layer order, then `on_batch_end()`, per batch).
    `on_rows`, when given, first gets the batch's [batch] prompt indices (batches run longest
    first, not in the prompts' order).

    `points` and `capture` record elsewhere instead: e.g. the decoder layers' outputs (the
    residual stream) or the sites' outputs (what each MLP adds to it).

    A batch's activations are handed over only once its forward pass has finished, so when
    the accelerator runs out of memory the batch is retried at half the size and nothing
    already counted is lost or counted twice (`runtime.run_batches`).

    Returns:
        The batch size in use at the end (smaller than asked if memory ran out).

    Raises:
        InputError: `batch_size` is below 1.
    """
    device = input_device(model)
    bar = tqdm(total=len(token_ids), desc=desc, unit="prompt", disable=not progress, leave=False)
    with bar, HookSet() as hooks, torch.inference_mode():
        state = _PassState(model, device, on_layer, on_batch_end, bar, on_rows)
        # Left padding puts every prompt's last real token at -1; taking the index from the
        # mask keeps this right for right-padded batches too.
        if layout.moe is not None and points is None:
            add_moe_recorders(hooks, model, layout, state.last_index, state.pending.__setitem__)
        else:
            add_last_token_recorders(
                hooks,
                layout.site_modules(model) if points is None else points,
                state.last_index,
                state.pending.__setitem__,
                capture=capture,
                stop_after_last=True,
            )
        return run_batches(
            token_ids,
            state.attempt,
            state.finish,
            batch_size=batch_size,
            pad_id=pad_id,
            device=device,
            what="recording",
        )


class _PassState:
    """The batch in flight in `run_last_token_pass` and the activations its hooks took."""

    def __init__(
        self,
        model: PreTrainedModel,
        device: torch.device,
        on_layer: Callable[[int, torch.Tensor], None],
        on_batch_end: Callable[[], None] | None,
        bar: tqdm,
        on_rows: Callable[[torch.Tensor], None] | None = None,
    ) -> None:
        self.model, self.device, self.bar = model, device, bar
        self.on_rows = on_rows
        self.on_layer, self.on_batch_end = on_layer, on_batch_end
        self.pending: dict[int, torch.Tensor] = {}  # {layer: [batch, width]}
        self.last: torch.Tensor | None = None  # [batch] last real tokens of the batch in flight

    def last_index(self) -> torch.Tensor:
        """The batch's [batch] last-token positions: one tensor for every layer's hooks (found
        once per batch, so hooks may cache what they derive from it by identity)."""
        assert self.last is not None  # the hooks run only inside attempt()
        return self.last

    def attempt(self, batch: Batch) -> None:
        """One forward pass, stopped after the last recorded layer (may be retried)."""
        self.last = last_token_index(batch.attention_mask)
        self.pending.clear()  # a retried batch starts over
        ids, mask = batch.input_ids.to(self.device), batch.attention_mask.to(self.device)
        with contextlib.suppress(StopForward):
            model_forward(self.model, **model_inputs(self.model, ids, mask), use_cache=False)

    def finish(self, batch: Batch, _: None) -> None:
        """Hand the finished batch's activations over, once."""
        if self.on_rows is not None:
            self.on_rows(batch.index)
        for layer in sorted(self.pending):
            self.on_layer(layer, self.pending[layer])
        self.pending.clear()
        if self.on_batch_end is not None:
            self.on_batch_end()
        self.bar.update(batch.input_ids.shape[0])


@runs_model
def record_stats(
    model: PreTrainedModel,
    layout: ModelLayout,
    token_ids: Sequence[Sequence[int]],
    *,
    batch_size: int,
    pad_id: int,
    progress: bool = False,
    desc: str = "recording",
    keep: PromptActivations | EveryActivation | None = None,
) -> ActivationStats:
    """Mean and variance of every neuron at the last prompt token over a prompt set; with
    `keep`, also each prompt's activation of the neurons it names, in the same pass."""
    stats = RunningStats(layout.n_layers)

    def on_layer(layer: int, acts: torch.Tensor) -> None:
        stats.update(layer, acts)
        if keep is not None:
            keep.update(layer, acts)

    run_last_token_pass(
        model,
        layout,
        token_ids,
        batch_size=batch_size,
        pad_id=pad_id,
        on_layer=on_layer,
        on_rows=None if keep is None else keep.rows,
        progress=progress,
        desc=desc,
    )
    return stats.result()


@runs_model
def record_prompt_activations(
    model: PreTrainedModel,
    layout: ModelLayout,
    token_ids: Sequence[Sequence[int]],
    layers: torch.Tensor,
    neurons: torch.Tensor,
    *,
    batch_size: int,
    pad_id: int,
    progress: bool = False,
    desc: str = "recording",
) -> torch.Tensor:
    """[k, n_prompts] float32: each prompt's last-token activation of the k neurons given
    ([k] `layers` and `neurons`), in the prompts' order."""
    keep = PromptActivations(len(token_ids), layers, neurons)
    run_last_token_pass(
        model,
        layout,
        token_ids,
        batch_size=batch_size,
        pad_id=pad_id,
        on_layer=keep.update,
        on_rows=keep.rows,
        progress=progress,
        desc=desc,
    )
    return keep.result()


@runs_model
def top_activation_frequency(
    model: PreTrainedModel,
    layout: ModelLayout,
    token_ids: Sequence[Sequence[int]],
    *,
    k: int,
    batch_size: int,
    pad_id: int,
    progress: bool = False,
) -> torch.Tensor:
    """[n_layers, d_mlp] share of prompts that put each neuron among their top k by |act|."""
    counter = TopActivationCounter(layout, k)
    run_last_token_pass(
        model,
        layout,
        token_ids,
        batch_size=batch_size,
        pad_id=pad_id,
        on_layer=counter.update,
        on_batch_end=counter.end_batch,
        progress=progress,
        desc="neutral prompts",
    )
    return counter.frequency()


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """[batch] index of each row's last real token (works for left and right padding)."""
    width = attention_mask.shape[-1]
    positions = torch.arange(width, device=attention_mask.device)
    return (attention_mask.bool() * (positions + 1)).argmax(dim=-1)
