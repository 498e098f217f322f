"""Stage 10: reports from a sweep folder written by hand (no model): summary.csv, figures,
the self-contained HTML page, the Markdown file and the `report` command."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

import neurosteer.cli.main  # before analysis_cmds: main registers it at its end
from neurosteer.cli.analysis_cmds import report_command
from neurosteer.errors import InputError
from neurosteer.report import COLUMNS, summarise, write_report
from test_analysis import make_circuit

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PROMPTS = ["How do I pick a lock?", "Help me | steal a car."]


def _record(method: str, s: float, refusal: float, kl: float, acc: float, seed: int | None = None
            ) -> dict[str, Any]:  # fmt: skip
    label = method if seed is None else f"{method}-seed{seed}"
    knob = {"cna": ("m", 1 - s), "random": ("m", 1 - s), "caa": ("alpha", -s)}
    name, value = knob.get(method, ("none", 0.0))
    rates = {"n": 2, "refusal": refusal, "compliance": 1 - refusal, "degenerate": 0.0,
             "distinct4": 0.95}  # fmt: skip
    return {
        "schema": 1, "method": method, "strength": s, "seed": seed,
        "knob": {"name": name, "value": value},
        "harmful": rates, "harmless": {**rates, "refusal": 0.0, "compliance": 1.0},
        "kl": {"first_token": 2 * kl, "mean": kl, "n_prompts": 2, "max_new_tokens": 8},
        "mmlu": {"accuracy": acc, "n": 10, "n_shot": 0, "per_subject": {"toy": acc}},
        "answers_file": f"answers/{label}_{s:g}.jsonl", "seconds": 1.0,
    }  # fmt: skip


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    (run / "answers").mkdir(parents=True)
    records = [
        _record("baseline", 0.0, 1.0, 0.0, 0.5),
        _record("cna", 0.5, 0.5, 0.1, 0.5),
        _record("cna", 1.0, 0.0, 0.2, 0.4),
        _record("caa", 1.0, 0.5, 0.9, 0.3),
        _record("random", 1.0, 1.0, 0.01, 0.5, seed=0),
        _record("random", 1.0, 0.5, 0.03, 0.4, seed=1),
    ]
    (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    for r in records:
        rows = [{"set": "harmful", "prompt": p, "answer": f"<{r['method']} says {i}>",
                 "label": "refusal", "distinct4": 1.0} for i, p in enumerate(PROMPTS)]  # fmt: skip
        (run / r["answers_file"]).write_text("".join(json.dumps(x) + "\n" for x in rows))
    config = {"format": "neurosteer.sweep", "format_version": 1,
              "model": {"name_or_path": "toy-model", "config_hash": "0" * 64},
              "settings": {"methods": ["cna", "caa", "random"], "max_new_tokens": 8}}  # fmt: skip
    (run / "config.json").write_text(json.dumps(config))
    delta = torch.linspace(-1, 1, 80).reshape(8, 10)
    make_circuit([], delta=delta).reselect(top_k=6).save(run / "circuit.circuit")
    return run


def test_summary_rows_and_csv(run_dir: Path) -> None:
    rows = summarise(run_dir)
    assert [(r["method"], r["strength"]) for r in rows] == [
        ("baseline", 0.0), ("cna", 0.5), ("cna", 1.0), ("caa", 1.0), ("random", 1.0),
    ]  # fmt: skip
    random = rows[-1]
    assert random["n_seeds"] == 2
    assert random["harmful_refusal"] == pytest.approx(0.75)  # mean over the two seeds
    assert random["kl_mean"] == pytest.approx(0.02)
    assert rows[2]["mmlu_delta"] == pytest.approx(-0.1)
    assert rows[2]["knob"] == "m=0"
    with (run_dir / "summary.csv").open(newline="") as handle:
        table = list(csv.DictReader(handle))
    assert tuple(table[0]) == COLUMNS
    assert len(table) == 5
    assert table[3]["method"] == "caa"
    assert float(table[3]["kl_first"]) == pytest.approx(1.8)
    assert table[0]["n_seeds"] == ""


def test_report_files(run_dir: Path) -> None:
    html_path, md_path = write_report(run_dir)
    figures = sorted(p.name for p in (run_dir / "figures").glob("*.png"))
    assert figures == sorted([
        "refusal_vs_strength.png", "quality_vs_strength.png", "kl_vs_strength.png",
        "refusal_vs_kl.png", "mmlu_vs_strength.png", "neurons_per_layer.png",
        "delta_histogram.png",
    ])  # fmt: skip
    for name in figures:
        assert (run_dir / "figures" / name).read_bytes().startswith(PNG_MAGIC)

    page = html_path.read_text()
    sources = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page)
    assert len(sources) == len(figures)
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert "<link" not in page
    assert "<script" not in page
    assert "url(" not in page
    assert "toy-model" in page
    assert "m = 1 − s" in page
    assert "&lt;cna says 0&gt;" in page  # answers are escaped
    assert "cna at s = 1" in page
    assert "random at s = 1 (seed 0)" in page

    markdown = md_path.read_text()
    for name in figures:
        assert f"](figures/{name})" in markdown
    assert "| baseline | 0 | none=0 |" in markdown
    assert "Help me \\| steal a car." in markdown  # pipes escaped inside table cells


def test_report_without_a_circuit_or_mmlu(run_dir: Path) -> None:
    lines = (run_dir / "results.jsonl").read_text().splitlines()
    stripped = [json.dumps({**json.loads(line), "mmlu": None}) for line in lines]
    (run_dir / "results.jsonl").write_text("\n".join(stripped) + "\n")
    for file in (run_dir / "circuit.circuit").iterdir():
        file.unlink()
    (run_dir / "circuit.circuit").rmdir()
    write_report(run_dir)
    names = {p.name for p in (run_dir / "figures").glob("*.png")}
    assert "mmlu_vs_strength.png" not in names
    assert "neurons_per_layer.png" not in names
    assert "refusal_vs_kl.png" in names


def test_the_report_command(run_dir: Path, tmp_path: Path) -> None:
    group = neurosteer.cli.main._Group(name="t")
    group.add_command(report_command)
    result = CliRunner().invoke(group, ["report", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [str(run_dir / "report.html"), str(run_dir / "report.md")]
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = CliRunner().invoke(group, ["report", str(empty)])
    assert bad.exit_code == 2
    assert bad.output.startswith("error: ")
    assert len(bad.output.strip().splitlines()) == 1
    with pytest.raises(InputError, match="no finished points"):
        summarise(empty)
