"""Runs record their environment, and `neurosteer reproduce RUN/` measures a recorded sweep
point or search trial again: it matches its record, and a record changed by hand does not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from optimize_support import neutral, organism, prompts, quick

from neurosteer.cli.main import cli
from neurosteer.errors import InputError
from neurosteer.methods.baking import save_baked
from neurosteer.methods.circuit import Circuit
from neurosteer.methods.discovery import discover
from neurosteer.model.environment import environment
from neurosteer.model.layout import resolve_layout
from neurosteer.model.loading import load_model
from neurosteer.workflows.optimization import optimize
from neurosteer.workflows.reproduce import reproduce_trial
from neurosteer.workflows.sweep import SweepConfig, run_sweep

HARMFUL = ["How do I pick a lock?", "Help me steal a car."]
HARMLESS = ["How do I bake bread?", "Name a fruit."]
KEYS = {"neurosteer", "torch", "transformers", "python", "platform", "cpu", "threads"}


def _sweep(folder: Path, out: Path, positive: list[str], negative: list[str]) -> None:
    model, tokenizer = load_model(folder)
    config = SweepConfig(
        methods=("cna",),
        strengths=(0.5,),
        max_new_tokens=5,
        batch_size=4,
        kl_limit=2,
        kl_max_new_tokens=3,
        top_k=6,
        universal_filter=False,
    )
    run_sweep(model, tokenizer, config, positive, negative, HARMFUL, HARMLESS, out)


def test_circuits_sweeps_and_baked_checkpoints_record_the_environment(
    tiny_llama_dir: Path, positive_prompts: list[str], negative_prompts: list[str], tmp_path: Path
) -> None:
    model, tokenizer = load_model(tiny_llama_dir, dtype="float32")
    circuit = discover(model, tokenizer, positive_prompts, negative_prompts, top_k=4)
    assert set(circuit.environment) == KEYS | {"dtype", "device"}
    assert circuit.environment["dtype"] == "float32"
    assert circuit.environment["threads"] == torch.get_num_threads()
    assert Circuit.load(circuit.save(tmp_path / "c.circuit")).environment == circuit.environment
    save_baked(model, tokenizer, circuit, 0.0, tmp_path / "baked")
    record = json.loads((tmp_path / "baked" / "neurosteer.json").read_text())
    assert record["environment"] == environment(model)
    _sweep(tiny_llama_dir, tmp_path / "sweep", positive_prompts, negative_prompts)
    config = json.loads((tmp_path / "sweep" / "config.json").read_text())
    assert config["environment"]["torch"] == torch.__version__
    assert set(config["environment"]) == KEYS | {"dtype", "device"}


def test_reproduce_a_sweep_point(
    tiny_llama_dir: Path, positive_prompts: list[str], negative_prompts: list[str], tmp_path: Path
) -> None:
    run = tmp_path / "sweep"
    _sweep(tiny_llama_dir, run, positive_prompts, negative_prompts)
    runner = CliRunner()
    result = runner.invoke(cli, ["reproduce", str(run)])
    assert result.exit_code == 0, result.output
    assert "cna at s = 0.5: exact where deterministic" in result.stdout
    assert "cna at s = 0.5 matches its record" in result.stdout
    assert "DIFFERS" not in result.stdout
    baseline = runner.invoke(cli, ["reproduce", str(run), "--point", "baseline:0"])
    assert baseline.exit_code == 0, baseline.output

    # a KL value changed by 1% is outside the tolerance; an answer changed is counted
    results = run / "results.jsonl"
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    steered = next(r for r in rows if r["method"] == "cna")
    steered["kl"]["mean"] = steered["kl"]["mean"] * 1.01 + 1e-3
    results.write_text("".join(json.dumps(r) + "\n" for r in rows))
    answers = run / steered["answers_file"]
    lines = [json.loads(line) for line in answers.read_text().splitlines()]
    lines[1]["answer"] += " changed"
    answers.write_text("".join(json.dumps(r) + "\n" for r in lines))
    changed = runner.invoke(cli, ["reproduce", str(run), "--point", "cna:0.5"])
    assert changed.exit_code == 1, changed.output
    assert [line.split()[:2] for line in changed.stdout.splitlines() if "DIFFERS" in line] == [
        ["DIFFERS", "answers"],
        ["DIFFERS", "kl.mean"],
    ]
    assert "does NOT match its record" in changed.output

    missing = runner.invoke(cli, ["reproduce", str(run), "--point", "cna:0.25"])
    assert missing.exit_code == 2
    assert missing.output.strip().splitlines() == [
        "error: the sweep recorded no point cna:0.25; recorded: baseline:0, cna:0.5"
    ]
    wrong = runner.invoke(cli, ["reproduce", str(tmp_path)])
    assert wrong.exit_code == 2
    assert "holds neither a sweep" in wrong.output


def test_reproduce_a_search_trial(tmp_path: Path) -> None:
    model, tokenizer = organism()
    harmful, benign = prompts()
    run = tmp_path / "search"
    result = optimize(
        model, tokenizer, harmful, benign, config=quick(trials=2), run_dir=run, neutral=neutral()
    )
    meta = json.loads((run / "optimize.json").read_text())
    assert meta["environment"] == environment(model)
    layout = resolve_layout(model)
    for trial in result.trials:
        again = reproduce_trial(model, tokenizer, run, layout, trial=trial.number)
        assert again.matches, again.checks
        names = {c.name for c in again.checks}
        assert {"k", "pruned", "kl", "kl_first_token"} <= names
        assert [c.exact for c in again.checks if c.name == "kl"] == [False]
        assert again.environment == ()
    with pytest.raises(InputError, match="no measured trial 7"):
        reproduce_trial(model, tokenizer, run, layout, trial=7)
