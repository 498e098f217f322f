"""Mean ablation: neurons set to their mean activation over a reference prompt set.

`mean_activations` records the means (at each prompt's last token, or over every real token);
`MeanAblation` is the intervention that sets chosen neurons to them, through the hooks package's
set-to-value edit (`neurosteer.hooks.add_neuron_setters`), at the positions `steer` is given.
Used by `neurosteer.evaluation.faithfulness`.

Mixture-of-experts models: the mean of neuron j of routed expert e is its activation averaged
over the reference tokens the router sent to e (at the last token, or at every real token);
the weighting by the routing weight is the model's own and happens after it, so setting the
neuron to this mean where e runs gives e's typical contribution at the weight the router gives
it there. An expert that no reference token reached has no mean: its neurons are given 0 (zero
ablation) and the count is logged. Shared experts and dense layers run at every token and are
averaged as a dense site. The edit acts where the expert runs; elsewhere the neuron does not
exist (`neurosteer.hooks.expert_means`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn
from transformers import PreTrainedModel

from neurosteer.hooks import EditState, HookSet, add_neuron_setters
from neurosteer.hooks.recorders import add_token_recorders
from neurosteer.interventions.protocol import HookedIntervention, Installer
from neurosteer.methods.moe_sites import add_moe_sums, moe_setter_installer
from neurosteer.methods.recording import RunningStats, record_stats
from neurosteer.model.calls import model_forward
from neurosteer.model.layout import ModelLayout, resolve_layout
from neurosteer.model.runtime import input_device, model_inputs, run_batches, runs_model
from neurosteer.prompts.render import Batch

AblationPositions = Literal["last", "all"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class MeanAblation(HookedIntervention):
    """Neurons set to fixed values (their means over a reference set); strength s moves each
    chosen neuron x to x + s·(v − x): 1 (default) sets it to v, 0 leaves the model unchanged.

    Attributes:
        ablated: [n_layers, d_mlp] bool, the neurons to set.
        values: [n_layers, d_mlp] float, the value of every neuron (read where `ablated`).
    """

    ablated: torch.Tensor
    values: torch.Tensor
    default_strength: ClassVar[float] = 1.0
    identity_strength: ClassVar[float] = 0.0
    no_bake_reason: ClassVar[str] = "setting a neuron to a constant is not a weight change"

    def installer(self, model: nn.Module, layout: ModelLayout | None) -> Installer:
        resolved = layout or resolve_layout(model)
        by_layer = {
            layer: (idx, self.values[layer, idx].float())
            for layer in range(self.ablated.shape[0])
            if (idx := self.ablated[layer].nonzero().flatten()).numel()
        }
        if resolved.moe is not None:
            return moe_setter_installer(model, resolved, by_layer)
        sites = resolved.site_modules(model)

        def install(hooks: HookSet, state: EditState) -> None:
            add_neuron_setters(hooks, sites, by_layer, state)

        return install


@runs_model
def mean_activations(
    model: PreTrainedModel,
    layout: ModelLayout,
    token_ids: list[list[int]],
    positions: AblationPositions,
    *,
    batch_size: int,
    pad: int,
) -> torch.Tensor:
    """[n_layers, d_mlp] mean activation over the negatives: at their last token ("last"), or
    over every real token ("all"); on an MoE model, per expert over the tokens routed to it
    (module docstring).

    Raises:
        UnsupportedModelError: an MoE model whose experts are separate modules.
    """
    if layout.moe is not None:
        return _moe_means(model, layout, token_ids, positions, batch_size=batch_size, pad=pad)
    if positions == "last":
        return record_stats(model, layout, token_ids, batch_size=batch_size, pad_id=pad).mean
    stats = RunningStats(layout.n_layers)
    pending: dict[int, torch.Tensor] = {}
    device = input_device(model)
    current: list[torch.Tensor] = []

    def attempt(batch: Batch) -> None:
        pending.clear()
        current[:] = [batch.attention_mask.bool()]
        ids, mask = batch.input_ids.to(device), batch.attention_mask.to(device)
        model_forward(model, **model_inputs(model, ids, mask), use_cache=False)

    def finish(_batch: Batch, _: None) -> None:
        for layer in sorted(pending):
            stats.update(layer, pending[layer])
        pending.clear()

    with torch.inference_mode(), HookSet() as hooks:
        add_token_recorders(
            hooks, layout.site_modules(model), lambda: current[0], pending.__setitem__
        )
        run_batches(token_ids, attempt, finish, batch_size=batch_size, pad_id=pad, device=device)
    return stats.result().mean


def _moe_means(
    model: PreTrainedModel,
    layout: ModelLayout,
    token_ids: list[list[int]],
    positions: AblationPositions,
    *,
    batch_size: int,
    pad: int,
) -> torch.Tensor:
    """[n_layers, d_mlp] float32 per-expert means over the routed chosen tokens (0 where none)."""
    sums = torch.zeros(layout.n_layers, layout.d_mlp, dtype=torch.float64)
    counts = torch.zeros_like(sums)
    pending = (torch.zeros_like(sums), torch.zeros_like(sums))
    chosen: list[torch.Tensor] = []
    device = input_device(model)

    def attempt(batch: Batch) -> None:
        pending[0].zero_()
        pending[1].zero_()
        mask = batch.attention_mask.bool()  # left padding: the last column is every last token
        chosen[:] = [mask if positions == "all" else _last_column(mask)]
        ids, attention = batch.input_ids.to(device), batch.attention_mask.to(device)
        model_forward(model, **model_inputs(model, ids, attention), use_cache=False)

    def finish(_batch: Batch, _: None) -> None:
        sums.add_(pending[0])
        counts.add_(pending[1])

    with torch.inference_mode(), HookSet() as hooks:
        add_moe_sums(hooks, model, layout, lambda: chosen[0], *pending)
        run_batches(token_ids, attempt, finish, batch_size=batch_size, pad_id=pad, device=device)
    unseen = layout.valid_mask() & (counts == 0)
    if bool(unseen.any()):
        logger.info(
            "mean ablation: %d neurons of experts no reference token reached are set to 0",
            int(unseen.sum()),
        )
    return (sums / counts.clamp(min=1)).float()


def _last_column(mask: torch.Tensor) -> torch.Tensor:
    """[batch, seq] bool: True at each row's last position only."""
    last = torch.zeros_like(mask)
    last[:, -1] = True
    return last
