"""The discovery record in the circuit format (version 4): the prompts and each neuron's
activations on them round-trip, older files load without one, corrupt ones are refused, and
circuits made from a circuit keep the rows of the neurons they share with it."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import safetensors.torch
import torch
from support_circuits import make_circuit

from neurosteer import Circuit, CircuitFormatError
from neurosteer.methods.circuit import FORMAT_VERSION, METADATA_FILE, TENSORS_FILE
from neurosteer.methods.discovery_record import DiscoveryRecord

OLD_FILE = Path(__file__).parents[1] / "data" / "format_v1.circuit"
PAIRS = [(2, 3), (5, 0), (7, 9), (3, 3)]


def _with_record(n_pos: int = 5, n_neg: int = 3) -> Circuit:
    """A 4-neuron circuit with a full table and a record of n_pos + n_neg prompts whose
    activations are distinct made-up numbers."""
    delta = torch.linspace(-1, 1, 80).reshape(8, 10)
    circuit = make_circuit(PAIRS, delta=delta)
    gen = torch.Generator().manual_seed(0)
    record = DiscoveryRecord(
        {
            "positive": tuple(f"harmful request {i}" for i in range(n_pos)),
            "negative": tuple(f"benign request {i}" for i in range(n_neg)),
        },
        {
            "positive": torch.randn(len(PAIRS), n_pos, generator=gen),
            "negative": torch.randn(len(PAIRS), n_neg, generator=gen),
        },
        torch.tensor([0.5, -1.0, 2.0, 0.25]),
    )
    return replace(circuit, discovery=record)


def _same_record(a: DiscoveryRecord | None, b: DiscoveryRecord | None) -> None:
    assert a is not None
    assert b is not None
    assert dict(a.prompts) == dict(b.prompts)
    assert (a.activations is None) == (b.activations is None)
    if a.activations is not None and b.activations is not None:
        for name in ("positive", "negative"):
            assert torch.equal(a.activations[name], b.activations[name]), name
    assert (a.standardized is None) == (b.standardized is None)
    if a.standardized is not None and b.standardized is not None:
        assert torch.equal(a.standardized, b.standardized)


def test_the_record_round_trips_and_costs_four_bytes_per_neuron_and_prompt(
    tmp_path: Path,
) -> None:
    circuit = _with_record(n_pos=5, n_neg=3)
    loaded = Circuit.load(circuit.save(tmp_path / "c"))
    _same_record(circuit.discovery, loaded.discovery)
    meta = json.loads((tmp_path / "c" / METADATA_FILE).read_text())
    assert meta["format_version"] == FORMAT_VERSION >= 4
    assert meta["discovery"]["prompts"]["negative"] == ["benign request 0", "benign request 1",
                                                        "benign request 2"]  # fmt: skip
    tensors = safetensors.torch.load_file(str(tmp_path / "c" / TENSORS_FILE))
    kept = {name: t for name, t in tensors.items() if name.startswith("discovery.")}
    assert tensors["discovery.positive"].shape == (4, 5)
    assert tensors["discovery.negative"].shape == (4, 3)
    # 4 bytes per neuron per prompt, and 4 per neuron for the standardized score
    data_bytes = sum(t.numel() * t.element_size() for t in kept.values())
    assert data_bytes == 4 * 4 * (5 + 3) + 4 * 4


def test_saving_a_record_twice_is_byte_identical(tmp_path: Path) -> None:
    circuit = _with_record()
    a, b = circuit.save(tmp_path / "a"), Circuit.load(circuit.save(tmp_path / "b"))
    c = b.save(tmp_path / "c")
    for name in (METADATA_FILE, TENSORS_FILE):
        assert (a / name).read_bytes() == (c / name).read_bytes(), name


def test_older_files_and_circuits_without_a_record_load_without_one(tmp_path: Path) -> None:
    assert Circuit.load(OLD_FILE).discovery is None
    plain = make_circuit(PAIRS).save(tmp_path / "plain")
    assert "discovery" not in json.loads((plain / METADATA_FILE).read_text())
    assert Circuit.load(plain).discovery is None


def test_a_record_of_prompts_alone_round_trips(tmp_path: Path) -> None:
    circuit = _with_record()
    assert circuit.discovery is not None
    prompts_only = replace(circuit, discovery=DiscoveryRecord(circuit.discovery.prompts))
    loaded = Circuit.load(prompts_only.save(tmp_path / "c"))
    assert loaded.discovery is not None
    assert loaded.discovery.activations is None
    assert dict(loaded.discovery.prompts) == dict(circuit.discovery.prompts)


def _rewrite_tensors(folder: Path, change: dict[str, torch.Tensor]) -> None:
    tensors = safetensors.torch.load_file(str(folder / TENSORS_FILE))
    safetensors.torch.save_file({**tensors, **change}, str(folder / TENSORS_FILE))


@pytest.mark.parametrize(
    ("name", "shape", "says"),
    [
        ("discovery.positive", (3, 5), "3 neurons but the circuit has 4"),  # rows != k
        ("discovery.negative", (4, 7), "expected [k, 3]"),  # columns != prompts
        ("discovery.standardized", (2,), "expected [4]"),
    ],
)
def test_a_record_that_does_not_fit_is_refused_in_one_line(
    tmp_path: Path, name: str, shape: tuple[int, ...], says: str
) -> None:
    folder = _with_record().save(tmp_path / "c")
    if name == "discovery.positive":  # keep the two sets consistent, only k wrong
        fitting = {"discovery.negative": torch.zeros(3, 3), "discovery.standardized": torch.ones(3)}
        _rewrite_tensors(folder, fitting)
    _rewrite_tensors(folder, {name: torch.zeros(shape)})
    with pytest.raises(CircuitFormatError) as info:
        Circuit.load(folder)
    assert says in str(info.value)
    assert "\n" not in str(info.value)


def test_a_record_without_its_prompts_is_refused(tmp_path: Path) -> None:
    folder = _with_record().save(tmp_path / "c")
    meta = json.loads((folder / METADATA_FILE).read_text())
    del meta["discovery"]["prompts"]["negative"]
    (folder / METADATA_FILE).write_text(json.dumps(meta))
    with pytest.raises(CircuitFormatError, match="corrupt discovery record"):
        Circuit.load(folder)


def test_a_reselected_circuit_keeps_the_rows_of_the_neurons_it_shares() -> None:
    circuit = _with_record()
    assert circuit.discovery is not None
    assert circuit.discovery.activations is not None
    # δ rises with the flat index; the top |δ| outside layers 0 and 1 are (7, 9), then (7, 8)
    top1, top2 = circuit.reselect(top_k=1), circuit.reselect(top_k=2)
    assert top1.discovery is not None
    assert top1.discovery.activations is not None
    assert torch.equal(
        top1.discovery.activations["positive"], circuit.discovery.activations["positive"][[2]]
    )
    assert top1.discovery.standardized is not None  # recomputed from the table
    assert torch.equal(top1.discovery.standardized, circuit.scores("standardized")[[7], [9]])
    assert top2.discovery is not None
    assert top2.discovery.activations is None
    assert dict(top2.discovery.prompts) == dict(circuit.discovery.prompts)
    # a selection inside the circuit keeps exactly its rows, scores from the table
    inside = circuit.discovery.restricted(PAIRS, [PAIRS[2], PAIRS[0]])
    assert inside.activations is not None
    for name in ("positive", "negative"):
        assert torch.equal(inside.activations[name], circuit.discovery.activations[name][[2, 0]])
    assert inside.standardized is not None
    assert inside.standardized.tolist() == [2.0, 0.5]


def test_a_random_control_keeps_no_activations() -> None:
    control = _with_record().random_like(seed=1)
    assert control.discovery is not None
    assert control.discovery.activations is None


def test_a_copied_old_file_still_reads(tmp_path: Path) -> None:
    copy = tmp_path / "old.circuit"
    shutil.copytree(OLD_FILE, copy)
    circuit = Circuit.load(copy)
    assert len(circuit) > 0
    assert circuit.discovery is None
