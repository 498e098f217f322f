"""What a circuit keeps from its discovery so that its neurons can be read one by one.

A `DiscoveryRecord` holds the discovery prompts as given (before any chat template) and each
circuit neuron's activation at the last prompt token on every one of them. The neuron browser
(`neurosteer inspect C --html`) shows from it the prompts that activate a neuron most and least
and a histogram of its activations on both sets, with nothing else than the circuit file.

In the circuit folder (format version 4 on; absent in older files and optional in new ones):

    circuit.json          "discovery": {"prompts": {"positive": [...], "negative": [...]}}
    tensors.safetensors   "discovery.positive" [k, n_positive] float32,
                          "discovery.negative" [k, n_negative] float32 (rows in the circuit's
                          neuron order), "discovery.standardized" [k] float32 (the
                          standardized score of each neuron, `selection.neuron_scores`)

The activations cost 4 bytes per circuit neuron per prompt (a 64-neuron circuit found on
128 + 128 prompts: 64 KiB), the standardized scores 4 bytes per neuron, the prompts their text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from neurosteer.errors import CircuitFormatError

SETS = ("positive", "negative")
_PREFIX = "discovery."


@dataclass(frozen=True, eq=False)
class DiscoveryRecord:
    """The discovery prompts and each circuit neuron's last-token activation on them.

    Attributes:
        prompts: {"positive": (...), "negative": (...)}, the prompts as given to discovery.
        activations: {"positive": [k, n_positive], "negative": [k, n_negative]} float32, row
            i the activation of the circuit's i-th neuron on each prompt (in `prompts` order);
            None when not known for these neurons (a circuit reselected to neurons that were
            not in the one discovered).
        standardized: [k] float32, each neuron's standardized score (δ over the pooled
            standard deviation of the two sets); None where `activations` is None.
    """

    prompts: Mapping[str, tuple[str, ...]]
    activations: Mapping[str, torch.Tensor] | None = None
    standardized: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if set(self.prompts) != set(SETS):
            raise ValueError(f"prompts must hold the sets {SETS}, got {sorted(self.prompts)}")
        if self.activations is None:
            return
        rows = {name: tuple(self.activations[name].shape) for name in SETS}
        k = rows["positive"][0]
        for name in SETS:
            if rows[name] != (k, len(self.prompts[name])):
                raise ValueError(
                    f"the {name} activations are {rows[name]}, expected "
                    f"[k, {len(self.prompts[name])}] (one column per prompt)"
                )
        if self.standardized is not None and tuple(self.standardized.shape) != (k,):
            raise ValueError(f"standardized is {tuple(self.standardized.shape)}, expected [{k}]")

    def n_rows(self) -> int | None:
        """The number of neurons the activations are kept for (None: not kept)."""
        return None if self.activations is None else int(self.activations["positive"].shape[0])

    def restricted(
        self,
        from_pairs: Sequence[tuple[int, int]],
        to_pairs: Sequence[tuple[int, int]],
        standardized: torch.Tensor | None = None,
    ) -> DiscoveryRecord:
        """This record for another choice of neurons: the rows of `to_pairs` taken from the
        rows of `from_pairs` (both (layer, neuron) per row). When a neuron of `to_pairs` has no
        row, the activations are dropped and only the prompts kept.

        Args:
            from_pairs: the (layer, neuron) of each of this record's rows.
            to_pairs: the (layer, neuron) of each row wanted, in order.
            standardized: [len(to_pairs)] scores to keep instead of the rows' own (e.g.
                recomputed from a full table); None: the rows' own.
        """
        where = {pair: row for row, pair in enumerate(from_pairs)}
        if self.activations is None or any(pair not in where for pair in to_pairs):
            return DiscoveryRecord(self.prompts)
        index = torch.tensor([where[pair] for pair in to_pairs], dtype=torch.long)
        if standardized is None and self.standardized is not None:
            standardized = self.standardized[index]
        return DiscoveryRecord(
            self.prompts,
            {name: self.activations[name][index] for name in SETS},
            standardized,
        )

    def to_files(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """(the "discovery" section of circuit.json, the tensors to store under "discovery.*")."""
        meta = {"prompts": {name: list(self.prompts[name]) for name in SETS}}
        tensors: dict[str, torch.Tensor] = {}
        if self.activations is not None:
            for name in SETS:
                tensors[_PREFIX + name] = self.activations[name].float().contiguous()
        if self.standardized is not None:
            tensors[_PREFIX + "standardized"] = self.standardized.float().contiguous()
        return meta, tensors


def record_from_files(
    section: dict[str, Any] | None, tensors: Mapping[str, torch.Tensor], k: int, where: str
) -> DiscoveryRecord | None:
    """The record a circuit file holds (None when it holds none: files before version 4).

    Args:
        section: the "discovery" section of circuit.json, or None.
        tensors: every tensor of the file (the "discovery.*" ones are read).
        k: the circuit's number of neurons (the rows the activations must have).
        where: the folder, named in errors.

    Raises:
        CircuitFormatError: the section or its tensors do not fit together or the circuit.
    """
    if section is None:
        return None
    try:
        prompts = {name: tuple(str(p) for p in section["prompts"][name]) for name in SETS}
        kept = [name for name in SETS if _PREFIX + name in tensors]
        activations = {name: tensors[_PREFIX + name] for name in SETS} if kept else None
        record = DiscoveryRecord(prompts, activations, tensors.get(_PREFIX + "standardized"))
    except (KeyError, TypeError, ValueError) as err:
        raise CircuitFormatError(
            f"'{where}' has a corrupt discovery record ({err}); discover the circuit again"
        ) from None
    if record.n_rows() not in (None, k):
        raise CircuitFormatError(
            f"'{where}' keeps discovery activations for {record.n_rows()} neurons but the "
            f"circuit has {k}; discover the circuit again"
        )
    return record
