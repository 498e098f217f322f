"""Mean ablation: neurons set to their mean activation over a reference prompt set.

`mean_activations` records the means (at each prompt's last token, or over every real token);
`MeanAblation` is the intervention that sets chosen neurons to them, through the hooks package's
set-to-value edit (`neurosteer.hooks.add_neuron_setters`), at the positions `steer` is given.
Used by `neurosteer.evaluation.faithfulness`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn
from transformers import PreTrainedModel

from neurosteer.hooks import EditState, HookSet, add_neuron_setters
from neurosteer.hooks.recorders import add_token_recorders
from neurosteer.interventions.protocol import HookedIntervention, Installer
from neurosteer.methods.recording import RunningStats, record_stats
from neurosteer.model.layout import ModelLayout, resolve_layout
from neurosteer.model.runtime import input_device, model_inputs, run_batches, runs_model
from neurosteer.prompts.render import Batch

AblationPositions = Literal["last", "all"]


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
        resolved.require_dense("mean ablation")
        sites = resolved.site_modules(model)
        by_layer = {
            layer: (idx, self.values[layer, idx].float())
            for layer in range(self.ablated.shape[0])
            if (idx := self.ablated[layer].nonzero().flatten()).numel()
        }

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
    over every real token ("all")."""
    layout.require_dense("mean ablation")
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
        model(**model_inputs(model, ids, mask), use_cache=False)

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
