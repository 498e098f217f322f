"""The evaluation pipeline on the shipped organism, from the command line: export its prompt
files, sweep CNA against its controls (small settings), report. The full-size run is the
command in docs/evaluation.md."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from neurosteer.cli.main import cli
from neurosteer.workflows.judges import get_judge
from neurosteer.workflows.organism import INSTRUCT_DIR


def test_export_then_sweep_and_report_on_the_organism(tmp_path: Path) -> None:
    runner = CliRunner()
    data = tmp_path / "data"
    result = runner.invoke(cli, ["organism", "export", "-o", str(data), "--n-eval", "12"])
    assert result.exit_code == 0, result.output
    judge = get_judge(f"{data / 'refusal-phrases.json'}#organism")
    assert judge(["x"], ["i cannot assist with harming people"]) == ["refusal"]
    assert len((data / "eval-harmful.txt").read_text().splitlines()) == 12

    run = tmp_path / "run"
    args = [
        "sweep",
        str(INSTRUCT_DIR),
        "-p",
        str(data / "positive.txt"),
        "-n",
        str(data / "negative.txt"),
        "--eval-harmful",
        str(data / "eval-harmful.txt"),
        "--eval-harmless",
        str(data / "eval-harmless.txt"),
        "--neutral",
        str(data / "neutral.txt"),
        "--methods",
        "cna,random",
        "--strengths",
        "0,1",
        "--seeds",
        "0",
        "--judge",
        f"{data / 'refusal-phrases.json'}#organism",
        "--top-k",
        "48",
        "--max-new-tokens",
        "24",
        "--kl-limit",
        "4",
        "--kl-tokens",
        "8",
        "--mmlu",
        str(data / "mmlu"),
        "--mmlu-shots",
        "1",
        "-o",
        str(run),
    ]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    records = {
        (r["method"], r["strength"]): r for r in map(json.loads, (run / "results.jsonl").open())
    }
    base, cna, rand = records[("baseline", 0.0)], records[("cna", 1.0)], records[("random", 1.0)]
    # the organism's learned refusal gate: ablating the circuit removes most refusals,
    # a random circuit of the same size does not (margins, not exact rates)
    assert base["harmful"]["refusal"] >= 0.6
    assert cna["harmful"]["refusal"] <= base["harmful"]["refusal"] - 0.3
    assert abs(rand["harmful"]["refusal"] - base["harmful"]["refusal"]) <= 0.2
    assert cna["kl"]["mean"] > rand["kl"]["mean"] > 0.0  # any ablation moves the distribution
    assert cna["mmlu"]["n"] == 12

    result = runner.invoke(cli, ["report", str(run)])
    assert result.exit_code == 0, result.output
    html = (run / "report.html").read_text()
    assert "data:image/png;base64," in html
    assert (run / "report.md").is_file()
