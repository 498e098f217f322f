"""The organism demo runs end to end, offline, and writes its report."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from neurosteer.circuit import Circuit
from neurosteer.cli.organism_cmds import demo_command
from neurosteer.demo import DEMO_TOP_K, DemoResult, run_demo
from neurosteer.loading import load_model
from neurosteer.organism import INSTRUCT_DIR, demo_prompt_sets, neutral_prompts
from neurosteer.organism.evaluate import ANSWER_BATCH, ANSWER_TOKENS
from neurosteer.sweep import CIRCUIT_DIR, SweepConfig, run_sweep


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoResult:
    out = tmp_path_factory.mktemp("demo")
    return run_demo(out, n_discover=16, n_eval=16, n_examples=2, sweep_ks=(3, DEMO_TOP_K))


def test_run_demo_writes_report(demo: DemoResult) -> None:
    result, tmp_path = demo, demo.report_path.parent
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


def test_demo_and_sweep_report_the_same_rates(demo: DemoResult, tmp_path: Path) -> None:
    # one generation, judge and rate path: a sweep with the organism's judge on the demo's
    # prompts finds the demo's circuit and measures each demo condition at its strength exactly
    model, tok = load_model(INSTRUCT_DIR)
    sets = demo_prompt_sets(demo.n_discover, demo.n_eval)
    config = SweepConfig(
        methods=("cna", "random"),
        strengths=(0.0, 1.0, 1.0 - demo.amplify),  # cna m = 1 - s: ablated and amplified
        random_seeds=(0,),
        judge="organism",
        max_new_tokens=ANSWER_TOKENS,
        batch_size=ANSWER_BATCH,
        top_k=DEMO_TOP_K,
        kl_limit=1,
        kl_max_new_tokens=1,
    )
    records = run_sweep(
        model,
        tok,
        config,
        sets.train_harmful,
        sets.train_benign,
        sets.heldout_harmful,
        sets.heldout_benign,
        tmp_path / "run",
        neutral=neutral_prompts(),
    )
    swept = Circuit.load(tmp_path / "run" / CIRCUIT_DIR)
    assert torch.equal(swept.layers, demo.circuit.layers)
    assert torch.equal(swept.neurons, demo.circuit.neurons)
    points = {(r["method"], r["strength"]): r for r in records}
    pairs = {
        "unchanged": points[("baseline", 0.0)],
        "ablated": points[("cna", 1.0)],
        "amplified": points[("cna", 1.0 - demo.amplify)],
        "random ablated": points[("random", 1.0)],
    }
    for row in demo.rows:
        record = pairs[row.condition]
        for demo_rates, name in ((row.harmful, "harmful"), (row.benign, "harmless")):
            measured = record[name]
            assert (demo_rates.n, demo_rates.refusal) == (measured["n"], measured["refusal"])
            assert demo_rates.compliant == measured["compliance"]
            assert demo_rates.fragment == measured["degenerate"]
    # the demo's ablation is a real effect on this sample, so equal numbers are not trivial
    assert demo.rows[1].harmful.refusal < demo.rows[0].harmful.refusal


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
