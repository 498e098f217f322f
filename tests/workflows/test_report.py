"""Stage 10: reports from a sweep folder written by hand (no model): summary.csv, figures,
the self-contained HTML page, the Markdown file and the `report` command."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from rich.console import Console
from rich.table import Table
from support_circuits import make_circuit

import neurosteer.cli.main  # before analysis_cmds: main registers it at its end
from neurosteer.cli.analysis_cmds import print_summary, report_command
from neurosteer.cli.render import print_table
from neurosteer.errors import InputError
from neurosteer.workflows.report import COLUMNS, at_matched_refusal, summarise, write_report

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
    assert not re.search(r"<script[^>]*\bsrc", page)  # inline only: the neuron browser's
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


def test_the_summary_table_is_printed_whole_when_piped(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    print_summary(summarise(run_dir))  # capsys: stdout is not a terminal, as in a pipe
    out = capsys.readouterr().out
    assert "…" not in out
    header = next(line for line in out.splitlines() if "method" in line)
    for title in ("harmful refused", "harmful degenerate", "harmless refused", "distinct-4",
                  "KL first", "KL mean", "MMLU Δ"):  # fmt: skip
        assert title in header
    assert "random (2 seeds)" in out
    assert max(map(len, out.splitlines())) > 80  # wider than rich's default for a pipe


def test_tables_fit_a_terminal_and_are_whole_in_a_file() -> None:
    table = Table(title="wide")
    for i in range(12):
        table.add_column(f"a rather long column title {i}")
    table.add_row(*[f"value number {i} of the row" for i in range(12)])
    piped = io.StringIO()
    print_table(table, to=Console(file=piped))
    assert "…" not in piped.getvalue()
    assert "a rather long column title 11" in piped.getvalue()
    terminal = io.StringIO()
    print_table(table, to=Console(file=terminal, force_terminal=True, color_system=None, width=100))
    assert max(map(len, terminal.getvalue().splitlines())) <= 100  # a terminal: it fits


def _row(method: str, s: float, refusal: float | None, kl: float | None) -> dict[str, Any]:
    return {"method": method, "strength": s, "harmful_refusal": refusal, "kl_mean": kl,
            "n_seeds": None}  # fmt: skip


def _picked(rows: list[dict[str, Any]]) -> tuple[float | None, list[tuple[str, float, bool]]]:
    matched = at_matched_refusal(rows)
    return matched.target, [(r["method"], r["strength"], ok) for r, ok in matched.points]


def test_methods_are_matched_at_the_refusal_cna_reaches() -> None:
    rows = [
        _row("baseline", 0.0, 0.9, 0.0),
        _row("cna", 0.5, 0.5, 0.05), _row("cna", 1.0, 0.2, 0.1),
        # caa gets below CNA's 20% twice: the cheaper of the two is shown, not the strongest
        _row("caa", 0.5, 0.6, 0.2), _row("caa", 1.0, 0.2, 0.3), _row("caa", 2.0, 0.0, 0.25),
        # direction never gets that low: its lowest refusal is shown, marked
        _row("direction", 0.5, 0.4, 0.02), _row("direction", 1.0, 0.3, 0.04),
    ]  # fmt: skip
    assert _picked(rows) == (
        0.2,
        [("cna", 1.0, True), ("caa", 2.0, True), ("direction", 1.0, False)],
    )
    assert at_matched_refusal(rows).baseline == rows[0]
    assert "CNA reaches (at s = 1)" in at_matched_refusal(rows).reference


def test_matched_refusal_variants() -> None:
    # no CNA: the lowest level every method reaches
    rows = [
        _row("caa", 1.0, 0.5, 0.2),
        _row("caa", 2.0, 0.3, 0.6),
        _row("direction", 1.0, 0.4, 0.1),
    ]
    assert _picked(rows) == (0.4, [("caa", 2.0, True), ("direction", 1.0, True)])
    # equal KL: the smaller strength; a missing KL counts as the largest
    rows = [_row("cna", 1.0, 0.0, 0.1), _row("caa", 1.0, 0.0, 0.2), _row("caa", 0.5, 0.0, 0.2),
            _row("direction", 0.5, 0.0, None), _row("direction", 1.0, 0.0, 0.9)]  # fmt: skip
    assert _picked(rows)[1] == [("cna", 1.0, True), ("caa", 0.5, True), ("direction", 1.0, True)]
    # CNA's lowest refusal reached at two strengths: the cheaper one; rates as float noise
    rows = [_row("cna", 0.5, 0.1, 0.01), _row("cna", 1.0, 0.1, 0.02),
            _row("random", 1.0, 0.1 + 1e-12, 0.0)]  # fmt: skip
    assert _picked(rows) == (0.1, [("cna", 0.5, True), ("random", 1.0, True)])
    # only the baseline
    assert at_matched_refusal([_row("baseline", 0.0, 0.9, 0.0)]).target is None


def test_the_page_leads_with_the_headline(run_dir: Path) -> None:
    config = json.loads((run_dir / "config.json").read_text())
    config["prompts"] = {
        name: {"count": n, "sha256": "0" * 64}
        for name, n in (("positive", 64), ("negative", 48), ("harmful", 2), ("harmless", 2))
    }
    config["settings"].update(
        judge="patterns",
        strengths=[0, 0.5, 1],
        random_seeds=[0, 1],
        kl_limit=32,
        caa_layer=None,
        layer_scan_prompts=16,
    )
    config["fitted"] = {"circuit_neurons": 6, "caa_layer": 0, "layer_scans": {"caa": {
        "chosen": 0, "n_prompts": 16, "rates": {"0": {}, "1": {}}}}}  # fmt: skip
    (run_dir / "config.json").write_text(json.dumps(config))
    html_path, md_path = write_report(run_dir)
    page = html_path.read_text()
    sections = re.findall(r"<h2>(.*?)</h2>", page)
    assert sections[:4] == ["At a glance", "Methods at matched refusal", "Figures", "Every point"]
    glance = page[page.index("At a glance") : page.index("Methods at matched refusal")]
    for fact in ("toy-model", "6 neurons (7.5% of 80 MLP neurons) in 1 layer: L7 (6)",
                 "CAA at layer 0 (scanned: most well-formed compliance among layers 0, 1 on 16",
                 "fitting: 64 positive, 48 negative; evaluation: 2 harmful, 2 harmless "
                 "(KL on 2 of the harmless)", "patterns", "up to 8 new tokens",
                 "cna, caa, random at s = 0, 0.5, 1; random = mean of 2 seeds"):  # fmt: skip
        assert fact in glance
    matched = page[page.index("Methods at matched refusal") : page.index("<h2>Figures")]
    assert "at or below 0%, the lowest harmful refusal CNA reaches (at s = 1)" in matched
    assert "caa (layer 0) *" in matched  # never gets to 0%: marked
    assert "random (2 seeds) *" in matched
    full = page[page.index("<h2>Every point") :]
    assert "<td>75%</td>" in full  # the random mean, as a percentage
    assert "<td>-10.0 pp</td>" in full  # MMLU Δ in percentage points
    assert not re.search(r"<td>0\.[0-9]{3}</td><td>0\.[0-9]{3}</td>", full.split("</table>")[0])
    markdown = md_path.read_text()
    assert markdown.index("## At a glance") < markdown.index("## Every point")
    assert "| method | s | knob | harmful refused | harmful complied |" in markdown


def test_the_full_table_shows_every_summary_column() -> None:
    from neurosteer.workflows.report.tables import FULL_COLUMNS

    # n_seeds is folded into the method cell ("random (3 seeds)")
    assert sorted(FULL_COLUMNS) == sorted(c for c in COLUMNS if c != "n_seeds")


def test_the_headline_states_the_judges_measured_accuracy(run_dir: Path) -> None:
    from neurosteer.evaluation.judge_accuracy import accuracy_table

    config = json.loads((run_dir / "config.json").read_text())
    entry = accuracy_table()["patterns"]
    for judge, wanted in (
        ("patterns", f"right on {entry['all']:.1%} of {entry['n']} real answers"),
        ("organism", "accuracy on real answers not measured"),
    ):
        config["settings"]["judge"] = judge
        (run_dir / "config.json").write_text(json.dumps(config))
        html_path, md_path = write_report(run_dir)
        page, markdown = html_path.read_text(), md_path.read_text()
        glance = page[page.index("At a glance") : page.index("Methods at matched refusal")]
        assert wanted in glance
        assert wanted in markdown[: markdown.index("## Every point")]
