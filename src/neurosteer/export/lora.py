"""A circuit as a LoRA adapter: the same edit as a bake, served beside the unchanged model.

Scaling neuron j of a layer by m is the rank-|C| update of the MLP output projection

    W' = W + (m − 1) · W[:, C] · E_Cᵀ      W [d_model, d_mlp], C the layer's circuit neurons,

where E_C [d_mlp, r] holds the one-hot columns of the r = |C| neurons. That is a LoRA pair

    A = E_Cᵀ                [r, d_mlp]    (lora_A: one 1 per row, at the neuron's index)
    B = (m − 1) · W[:, C]   [d_model, r]  (lora_B: the neurons' weight columns, times m − 1)

and the adapter is written so that its scaling factor is exactly 1 (see "Convention" below):
an engine that applies it at scale s computes W + s·B·A, which scales each circuit neuron by

    m' = 1 + s · (m − 1)

exactly (up to float rounding): s = 1 gives m, s = 0 the unchanged model, s = 0.5 half the edit,
s = 2 twice it. One adapter exported at m = 0 is therefore a whole strength dial.

Convention: PEFT and vLLM multiply B·A by `lora_alpha / r`. The adapter sets `r` and
`lora_alpha` to the largest per-layer rank and, through PEFT's `rank_pattern` and
`alpha_pattern`, each layer's rank and alpha to its own neuron count, so `alpha / r` is 1 for
every layer in PEFT (which reads the patterns) and in engines that read only the global pair.
The GGUF adapter (`neurosteer.export.lora_gguf`) pads every layer to one rank instead, because
llama.cpp has a single alpha per file.

GPT-2's Conv1D stores the projection transposed ([d_mlp, d_model]); A and B keep the shapes
above (PEFT's convention for `fan_in_fan_out` layers) and B is built from row j instead.

The factors are float32 whatever the model's dtype: A holds only 0 and 1, and B is the float32
product of the stored weights with float32(m − 1).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from neurosteer._io import atomic_directory
from neurosteer.errors import InputError
from neurosteer.hooks.edits import float32_strength
from neurosteer.interventions.handles import require_editable
from neurosteer.interventions.protocol import check_strength
from neurosteer.methods.baking import provenance
from neurosteer.methods.circuit import Circuit
from neurosteer.model.fingerprint import weights_fingerprint
from neurosteer.model.layout import ModelLayout

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
#: What the adapter was made from (circuit, multiplier, source weights), beside PEFT's files.
LORA_PROVENANCE = "neurosteer-lora.json"
#: PEFT's prefix of a saved adapter's tensor names (`PeftModel` wraps `LoraModel` wraps the model).
PEFT_PREFIX = "base_model.model."

#: vLLM's `--max-lora-rank`: default and allowed values (vLLM 0.14+ `LoRAConfig.MaxLoRARanks`).
VLLM_DEFAULT_MAX_RANK = 16
VLLM_MAX_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


@dataclass(frozen=True)
class LoraFactors:
    """The LoRA pair of one layer's down projection.

    Attributes:
        layer: the decoder layer.
        neurons: int64 [r] the circuit neurons of this layer, ascending.
        a: float32 [rank, d_mlp], row i one-hot at neuron i (rows past r are zero padding).
        b: float32 [d_model, rank], column i = (m − 1) · the neuron's weight column.
    """

    layer: int
    neurons: torch.Tensor
    a: torch.Tensor
    b: torch.Tensor

    @property
    def rank(self) -> int:
        return int(self.a.shape[0])


@dataclass(frozen=True)
class LoraReport:
    """What an export wrote.

    Attributes:
        path: the adapter folder (PEFT) or .gguf file.
        ranks: {layer: its circuit neurons}, the rank each layer needs.
        rank: the adapter's rank as engines count it (the largest per-layer rank; every layer
            of a GGUF adapter is padded to it).
        multiplier: the m the adapter gives at scale 1.
        nbytes: the size of the written files.
    """

    path: Path
    ranks: dict[int, int]
    rank: int
    multiplier: float
    nbytes: int


def lora_factors(
    layer: int,
    columns: torch.Tensor,
    neurons: torch.Tensor,
    d_mlp: int,
    multiplier: float,
    rank: int | None = None,
) -> LoraFactors:
    """The LoRA pair scaling `neurons` of one layer by `multiplier` at scale 1.

    Args:
        layer: the decoder layer (recorded only).
        columns: [d_model, r] the neurons' weight columns W[:, C] (any float dtype).
        neurons: int64 [r] their indices in [0, d_mlp).
        d_mlp: the projection's input width.
        multiplier: m (finite).
        rank: pad A and B with zeros to this rank (>= r); None: r.

    Returns:
        `LoraFactors` with B·A = (m − 1)·W[:, C]·E_Cᵀ, in float32.
    """
    r = int(neurons.numel())
    rank = r if rank is None else rank
    a = torch.zeros(rank, d_mlp, dtype=torch.float32)
    a[torch.arange(r), neurons.long()] = 1.0
    b = torch.zeros(columns.shape[0], rank, dtype=torch.float32)
    b[:, :r] = columns.detach().to("cpu", torch.float32) * float32_strength(multiplier - 1.0)
    return LoraFactors(layer, neurons.long().cpu(), a, b)


def layer_neurons(circuit: Circuit) -> dict[int, torch.Tensor]:
    """{layer: int64 [r] the circuit's distinct neurons there, ascending}: a neuron listed twice
    is scaled once by the hooks and the bake, so it is one rank of the adapter, not two."""
    return {layer: torch.unique(neurons) for layer, neurons in circuit.by_layer().items()}


def neuron_columns(
    model: nn.Module, circuit: Circuit, layout: ModelLayout | None = None
) -> tuple[ModelLayout, dict[int, torch.Tensor]]:
    """The circuit's weight columns in `model`: (layout, {layer: [d_model, r] W[:, C]}), C the
    layer's `layer_neurons`.

    Raises:
        CircuitMismatchError: the circuit does not fit the model (`Circuit.layout_on`).
        InputError: a down projection is offloaded (its values are not in memory).
    """
    layout = circuit.layout_on(model, layout)
    sites = layout.site_modules(model)
    by_layer = layer_neurons(circuit)
    require_editable(model, [sites[layer] for layer in by_layer], "export a LoRA adapter")
    columns = {}
    for layer, neurons in by_layer.items():
        weight = sites[layer].weight
        assert isinstance(weight, torch.Tensor)
        index = neurons.to(weight.device)
        if layout.orientation == "columns":  # nn.Linear [d_model, d_mlp]
            columns[layer] = weight.detach().index_select(1, index)
        else:  # Conv1D [d_mlp, d_model]
            columns[layer] = weight.detach().index_select(0, index).T
    return layout, columns


def save_lora(
    model: nn.Module,
    circuit: Circuit,
    multiplier: float | None,
    out_dir: str | Path,
    *,
    force: bool = False,
    layout: ModelLayout | None = None,
) -> LoraReport:
    """Write the circuit at `multiplier` as a PEFT LoRA adapter folder.

    The folder holds `adapter_config.json` and `adapter_model.safetensors` (what PEFT, vLLM
    and SGLang load) and `neurosteer-lora.json` (the circuit, m and the source weights). Target
    modules are the down projections of the circuit's layers, each of rank = its neurons.

    Args:
        model: the base model (its down projections in memory); it is not changed.
        circuit: the circuit to export.
        multiplier: m at adapter scale 1; None: the circuit's default strength.
        out_dir: the folder to write, atomically; refused if it exists unless `force`.
        layout: as for `bake` (default: the circuit's recorded paths).

    Raises:
        InputError: a non-finite multiplier, an empty circuit, offloaded weights, or an
            `out_dir` refused by `neurosteer._io.check_writable`.
        CircuitMismatchError: the circuit does not fit the model.

    Example:
        >>> save_lora(model, circuit, 0.0, "refusal-lora")  # then in PEFT:
        >>> steered = PeftModel.from_pretrained(model, "refusal-lora")
    """
    m = check_strength(multiplier, circuit.default_strength)
    _require_neurons(circuit)
    layout, columns = neuron_columns(model, circuit, layout)
    by_layer = layer_neurons(circuit)
    modules = {
        f"{layout.layers_path}.{layer}.{layout.site_path}": lora_factors(
            layer, columns[layer], by_layer[layer], layout.d_mlp, m
        )
        for layer in by_layer
    }
    tensors = {}
    for module, factors in modules.items():
        tensors[f"{PEFT_PREFIX}{module}.lora_A.weight"] = factors.a
        tensors[f"{PEFT_PREFIX}{module}.lora_B.weight"] = factors.b
    config = peft_config(modules, str(getattr(model, "name_or_path", "") or ""), layout)
    record = provenance(circuit, m) | {"source_weights": asdict(weights_fingerprint(model))}
    with atomic_directory(out_dir, force=force) as staging:
        save_file(tensors, staging / ADAPTER_WEIGHTS, metadata={"format": "pt"})
        (staging / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True))
        (staging / LORA_PROVENANCE).write_text(json.dumps(record, indent=2, sort_keys=True))
    path = Path(out_dir)
    ranks = {f.layer: f.rank for f in modules.values()}
    size = sum(p.stat().st_size for p in path.iterdir() if p.is_file())
    return LoraReport(path, ranks, max(ranks.values()), m, size)


def peft_config(
    modules: dict[str, LoraFactors], base_model: str, layout: ModelLayout
) -> dict[str, Any]:
    """The `adapter_config.json` of a circuit adapter: scaling alpha/r = 1 in every layer.

    `r` and `lora_alpha` are the largest rank; `rank_pattern` and `alpha_pattern` give each
    module its own (equal) pair, so PEFT scales every layer by exactly 1 and an engine that
    reads only the global pair does too.
    """
    ranks = {module: f.rank for module, f in modules.items()}
    top = max(ranks.values())
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "target_modules": sorted(ranks),
        "r": top,
        "lora_alpha": top,
        "rank_pattern": ranks,
        "alpha_pattern": dict(ranks),
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": layout.orientation == "rows",
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
    }


def rank_notes(rank: int) -> list[str]:
    """What serving an adapter of this rank needs, with the engine limits it meets.

    vLLM refuses an adapter whose `r` exceeds `--max-lora-rank` (default 16; allowed 1, 8, 16,
    32, 64, 128, 256, 320, 512). llama.cpp and PEFT document no rank limit.
    """
    if rank <= VLLM_DEFAULT_MAX_RANK:
        return [f"rank {rank} fits vLLM's default --max-lora-rank {VLLM_DEFAULT_MAX_RANK}"]
    fitting = [r for r in VLLM_MAX_RANKS if r >= rank]
    if fitting:
        return [
            f"rank {rank} exceeds vLLM's default --max-lora-rank {VLLM_DEFAULT_MAX_RANK}: serve "
            f"it with --max-lora-rank {fitting[0]} (and SGLang with --max-lora-rank >= {rank})"
        ]
    return [
        f"rank {rank} exceeds vLLM's largest --max-lora-rank {VLLM_MAX_RANKS[-1]}: vLLM cannot "
        "serve it; use PEFT or llama.cpp, select fewer neurons per layer, or bake the circuit "
        "(neurosteer bake)"
    ]


def _require_neurons(circuit: Circuit) -> None:
    """Raises InputError for a circuit without neurons (an adapter needs a target module)."""
    if not len(circuit):
        raise InputError("this circuit has no neurons, so there is nothing to export")
