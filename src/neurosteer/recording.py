"""Stage 3 of the pipeline: run prompts through the model and keep last-token neuron statistics.

One forward pass per batch (sorted by length, left-padded, `inference_mode`). A pre-hook on
every neuron site takes the activation at each prompt's last real token, [batch, d_mlp], and
folds it into per-layer running statistics; the forward pass is stopped right after the last
layer's site, so the LM head never runs. Nothing of shape [batch, seq, d_mlp] outlives its hook.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from neurosteer.hooks import HookSet, StopForward, add_last_token_recorders
from neurosteer.layout import ModelLayout
from neurosteer.prompts import Batch, iter_batches


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


def run_last_token_pass(
    model: PreTrainedModel,
    layout: ModelLayout,
    token_ids: Sequence[Sequence[int]],
    *,
    batch_size: int,
    pad_id: int,
    on_layer: Callable[[int, torch.Tensor], None],
    on_batch_end: Callable[[], None] | None = None,
    progress: bool = False,
    desc: str = "recording",
) -> None:
    """Run every prompt once and hand each layer's last-token site input to `on_layer`."""
    current: list[Batch] = []
    device = input_device(model)
    takes_positions = "position_ids" in inspect.signature(model.forward).parameters
    bar = tqdm(total=len(token_ids), desc=desc, unit="prompt", disable=not progress, leave=False)
    try:
        with HookSet() as hooks, torch.inference_mode():
            # Left padding puts every prompt's last real token at -1; taking the index from the
            # mask keeps this right for right-padded batches too.
            add_last_token_recorders(
                hooks,
                layout.site_modules(model),
                lambda: last_token_index(current[0].attention_mask),
                on_layer,
                stop_after_last=True,
            )
            for batch in iter_batches(token_ids, batch_size, pad_id):
                current[:] = [batch]
                inputs = {
                    "input_ids": batch.input_ids.to(device),
                    "attention_mask": batch.attention_mask.to(device),
                }
                if takes_positions:
                    inputs["position_ids"] = positions_from_mask(batch.attention_mask).to(device)
                with contextlib.suppress(StopForward):
                    model(**inputs, use_cache=False)
                if on_batch_end is not None:
                    on_batch_end()
                bar.update(batch.input_ids.shape[0])
    finally:
        bar.close()


def record_stats(
    model: PreTrainedModel,
    layout: ModelLayout,
    token_ids: Sequence[Sequence[int]],
    *,
    batch_size: int,
    pad_id: int,
    progress: bool = False,
    desc: str = "recording",
) -> ActivationStats:
    """Mean and variance of every neuron at the last prompt token over a prompt set."""
    stats = RunningStats(layout.n_layers)
    run_last_token_pass(
        model,
        layout,
        token_ids,
        batch_size=batch_size,
        pad_id=pad_id,
        on_layer=stats.update,
        progress=progress,
        desc=desc,
    )
    return stats.result()


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


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 on each row's first real token, as `generate` makes them."""
    return (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)


def input_device(model: PreTrainedModel) -> torch.device:
    """Where input ids must go: the embedding's device (CPU when it is offloaded)."""
    weight = model.get_input_embeddings().weight
    assert isinstance(weight, torch.Tensor)
    return torch.device("cpu") if weight.device.type == "meta" else weight.device


def default_batch_size(model: PreTrainedModel) -> int:
    """A conservative batch size: larger on accelerators, whose memory we do not probe yet."""
    return 32 if input_device(model).type == "cuda" else 16
