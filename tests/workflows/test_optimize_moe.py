"""`neurosteer.optimize` on the MoE organism (the Qwen2-MoE twin, 8 experts top-2 and a shared
expert): a small search runs end to end, its circuits are per-expert ones, the export carries
the experts, and the baselines (residual-stream CAA and directional ablation) run beside it."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import torch
from optimize_support import neutral, one_thread, prompts, quick

import neurosteer
from neurosteer import Circuit
from neurosteer.model.layout import resolve_layout
from neurosteer.workflows.optimization import export_circuit, read_search
from neurosteer.workflows.organism import MOE_INSTRUCT_DIR

__all__ = ["one_thread"]  # the module's autouse fixture


@cache
def moe_organism() -> tuple[Any, Any]:
    return neurosteer.load_model(MOE_INSTRUCT_DIR)


def test_search_on_the_moe_organism_finds_per_expert_circuits(tmp_path: Path) -> None:
    # measured (seed 0, 4 random startup trials, 16 held-out prompts a side): unchanged 38%
    # refused; trial 3 (58 neurons from layer 5, m = -0.62) 0% refused at first-token KL 0.80
    model, tok = moe_organism()
    layout = resolve_layout(model)
    assert layout.moe is not None
    harmful, benign = prompts()
    folder = tmp_path / "s"
    config = quick(trials=4, baselines=True, baseline_strengths=(1.0,))
    result = neurosteer.optimize(
        model, tok, harmful, benign, config=config, run_dir=folder, neutral=neutral()
    )
    assert model.config._experts_implementation == "eager"  # every hook was removed
    assert result.unchanged is not None
    before = result.unchanged["refusal"] + result.unchanged["degenerate"]
    assert before >= 0.25
    assert len(result.trials) == 4
    assert all(t.state == "complete" for t in result.trials)
    best = min(result.trials, key=lambda t: 1.0 if t.not_success is None else t.not_success)
    assert best.not_success is not None
    assert best.not_success <= 0.5 * before
    assert {p.method for p in result.baselines} == {"caa", "direction"}
    table = Circuit.load(folder / "table.circuit")
    assert table.model.neuron_blocks == layout.moe.table()
    assert read_search(folder).trials == result.trials
    circuit, chosen = export_circuit(folder, tmp_path / "best.circuit", trial=best.number)
    assert chosen.number == best.number
    assert circuit.model.neuron_blocks == layout.moe.table()
    assert bool(layout.valid_mask()[circuit.layers, circuit.neurons].all())
    assert circuit.settings.multiplier == best.multiplier
    ids = tok(["Hello"], return_tensors="pt")
    with torch.no_grad():
        plain = model(**ids).logits
        with neurosteer.steer(model, Circuit.load(tmp_path / "best.circuit")):
            steered = model(**ids).logits
    assert not torch.equal(plain, steered)
