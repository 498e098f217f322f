"""Circuit analyses on hand-made circuits with known answers: overlap, localisation, sparsity;
and the `compare` command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from support_circuits import make_circuit

import neurosteer.cli.main  # before analysis_cmds: main registers it at its end
from neurosteer.cli.analysis_cmds import compare_command
from neurosteer.errors import CircuitMismatchError, InputError
from neurosteer.evaluation.comparison import compare_circuits, localisation, sparsity_sweep


def test_overlap_shares_and_jaccard() -> None:
    a = make_circuit([(2, 1), (5, 3), (7, 0), (7, 9)])
    b = make_circuit([(5, 3), (7, 9), (6, 4)])
    result = compare_circuits(a, b)
    assert (result.n_a, result.n_b, result.overlap) == (4, 3, 2)
    assert result.share_a == pytest.approx(0.5)
    assert result.share_b == pytest.approx(2 / 3)
    assert result.jaccard == pytest.approx(2 / 5)
    assert result.per_layer == {2: (1, 0, 0), 5: (1, 1, 1), 6: (0, 1, 0), 7: (2, 1, 1)}
    same = compare_circuits(a, a)
    assert (same.overlap, same.jaccard) == (4, 1.0)


def test_circuits_of_different_shape_are_refused() -> None:
    with pytest.raises(CircuitMismatchError, match="different shape"):
        compare_circuits(make_circuit([(2, 1)]), make_circuit([(2, 1)], d_mlp=12))


def test_localisation() -> None:
    # 8 layers: last three = 5, 6, 7; last quarter = 6, 7
    circuit = make_circuit([(2, 0), (5, 0), (6, 0), (7, 0), (7, 1)])
    where = localisation(circuit)
    assert where["last_three"] == pytest.approx(4 / 5)
    assert where["last_quarter"] == pytest.approx(3 / 5)
    assert where["mean_depth"] == pytest.approx((2 + 5 + 6 + 7 + 7) / 5 / 7)
    # 10 layers: last quarter = ceil(2.5) = 3 layers (7, 8, 9)
    ten = make_circuit([(6, 0), (7, 0)], n_layers=10)
    assert localisation(ten)["last_quarter"] == pytest.approx(0.5)


def test_sparsity_sweep_is_monotonic_and_matches_the_table() -> None:
    gen = torch.Generator().manual_seed(0)
    delta = torch.randn(8, 10, generator=gen)
    delta[7] *= 5.0  # the last layer holds the largest scores
    full = make_circuit([], delta=delta).reselect(top_k=12)
    points = sparsity_sweep(full, [1, 5, 12, 30, 60])
    masses = [p.delta_mass for p in points]
    assert masses == sorted(masses)
    assert masses[-1] == pytest.approx(1.0)  # 60 = every candidate (layers 2..7)
    thresholds = [p.min_abs_delta for p in points]
    assert thresholds == sorted(thresholds, reverse=True)
    assert points[0].min_abs_delta == pytest.approx(float(delta[2:].abs().max()))
    assert points[0].neurons_per_layer == {7: 1}
    assert points[-1].neurons_per_layer == {layer: 10 for layer in range(2, 8)}
    assert points[1].last_three >= points[-1].last_three
    with pytest.raises(InputError, match="only 60 candidate"):
        sparsity_sweep(full, [61])
    with pytest.raises(InputError, match="keep_table"):
        sparsity_sweep(make_circuit([(7, 0)]), [1])


def test_the_compare_command(tmp_path: Path) -> None:
    delta = torch.arange(80, dtype=torch.float32).reshape(8, 10)
    a = make_circuit([], delta=delta).reselect(top_k=4)
    b = make_circuit([(7, 9), (7, 8), (2, 0)])
    a.save(tmp_path / "a.circuit")
    b.save(tmp_path / "b.circuit")
    group = neurosteer.cli.main._Group(name="t")
    group.add_command(compare_command)
    args = ["compare", str(tmp_path / "a.circuit"), str(tmp_path / "b.circuit"), "--ks", "2,4,8"]
    result = CliRunner().invoke(group, [*args, "--json", str(tmp_path / "cmp.json")])
    assert result.exit_code == 0, result.output
    assert "2 neurons in both" in result.output
    assert "circuit B has no kept table" in result.output
    data = json.loads((tmp_path / "cmp.json").read_text())
    assert data["comparison"]["overlap"] == 2
    assert [p["k"] for p in data["sparsity"]["A"]] == [2, 4, 8]

    other = make_circuit([(2, 0)], d_mlp=11)
    other.save(tmp_path / "c.circuit")
    bad = CliRunner().invoke(group, ["compare", str(tmp_path / "a.circuit"),
                                     str(tmp_path / "c.circuit")])  # fmt: skip
    assert bad.exit_code == 2
    assert len(bad.output.strip().splitlines()) == 1
    assert bad.output.startswith("error: the circuits come from models of different shape")
