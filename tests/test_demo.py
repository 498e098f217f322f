"""The organism demo runs end to end, offline, and writes its report."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from neurosteer.cli.organism_cmds import demo_command
from neurosteer.demo import DEMO_TOP_K, run_demo


def test_run_demo_writes_report(tmp_path: Path) -> None:
    result = run_demo(tmp_path, n_discover=16, n_eval=16, n_examples=2, sweep_ks=(3, DEMO_TOP_K))
    assert result.n_neurons == DEMO_TOP_K
    assert sum(result.neurons_per_layer.values()) == DEMO_TOP_K
    assert min(result.neurons_per_layer) >= 2  # layers 0 and 1 are not candidates
    assert [r.condition for r in result.rows] == [
        "unchanged",
        "ablated",
        "amplified",
        "random ablated",
    ]
    assert len(result.examples) == 2
    assert [k for k, _ in result.k_sweep] == [3, DEMO_TOP_K]
    report = (tmp_path / "report.md").read_text()
    for png in ("circuit_layers.png", "refusal_rates.png", "k_sweep.png"):
        assert (tmp_path / png).stat().st_size > 1000
        assert f"]({png})" in report


def test_demo_command_refuses_a_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("x")
    result = CliRunner().invoke(demo_command, ["-o", str(tmp_path)])
    assert result.exit_code != 0
    assert "--force" in str(result.exception) + result.output


@pytest.mark.slow
def test_demo_command_end_to_end(tmp_path: Path) -> None:
    result = CliRunner().invoke(demo_command, ["-o", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.output
    assert "Neurons per layer" in result.output
    assert (tmp_path / "demo" / "report.md").exists()
