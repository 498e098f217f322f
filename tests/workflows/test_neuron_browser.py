"""The neuron browser's page and data (`workflows.report.neurons`), without a browser: each
neuron's extreme prompts, histogram and scores come from the circuit's discovery record, the
page is self-contained and escapes what it shows, older circuits get a page that says what
is missing, the sweep report carries the section, and `neurosteer inspect --html` writes it
(with the logit lens when given the model)."""

from __future__ import annotations

import html
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result
from support_circuits import make_circuit
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from neurosteer import Circuit, discover
from neurosteer.cli.main import cli
from neurosteer.methods.discovery import neutral_prompts
from neurosteer.methods.discovery_record import DiscoveryRecord
from neurosteer.methods.logit_lens import NeuronLens
from neurosteer.workflows.report import write_report
from neurosteer.workflows.report.neuron_html import visible
from neurosteer.workflows.report.neuron_page import neuron_page, write_neuron_page
from neurosteer.workflows.report.neurons import N_EXAMPLES, neuron_entries

Model = tuple[PreTrainedModel, PreTrainedTokenizerFast]
OLD_FILE = Path(__file__).parents[1] / "data" / "format_v1.circuit"
HOSTILE = '<script>alert("x")</script> & "quoted"'


def _circuit(n_pos: int = 7, n_neg: int = 5, seed: int = 0) -> Circuit:
    """Four neurons with made-up activations; one positive prompt is markup."""
    delta = torch.linspace(-1, 1, 80).reshape(8, 10)
    circuit = make_circuit([(2, 3), (5, 0), (7, 9), (3, 3)], delta=delta)
    gen = torch.Generator().manual_seed(seed)
    positive = [f"harmful {i}" for i in range(n_pos - 1)] + [HOSTILE]
    record = DiscoveryRecord(
        {"positive": tuple(positive), "negative": tuple(f"benign {i}" for i in range(n_neg))},
        {"positive": torch.randn(4, n_pos, generator=gen) + 1,
         "negative": torch.randn(4, n_neg, generator=gen) - 1},
        torch.tensor([3.0, -2.0, 1.0, 0.5]),
    )  # fmt: skip
    universal = torch.zeros(8, 10, dtype=torch.bool)
    universal[5, 0] = True
    return replace(circuit, discovery=record, universal=universal)


def test_each_entry_shows_the_prompts_at_its_extremes_and_every_activation() -> None:
    circuit = _circuit()
    record = circuit.discovery
    assert record is not None
    assert record.activations is not None
    entries = neuron_entries(circuit)
    assert [e.rank for e in entries] == [1, 2, 3, 4]
    assert [(e.layer, e.neuron) for e in entries] == [(2, 3), (5, 0), (7, 9), (3, 3)]
    for i, entry in enumerate(entries):
        pooled = [
            (float(v), name, record.prompts[name][j])
            for name in ("positive", "negative")
            for j, v in enumerate(record.activations[name][i].tolist())
        ]
        highest = max(pooled)
        lowest = min(pooled)
        assert len(entry.most) == len(entry.least) == N_EXAMPLES
        assert entry.most[0] == (highest[1], highest[0], highest[2])
        assert entry.least[0] == (lowest[1], lowest[0], lowest[2])
        assert [v for _, v, _ in entry.most] == sorted((v for _, v, _ in entry.most), reverse=True)
        assert entry.most[-1][1] > entry.least[-1][1]
        assert entry.histogram is not None
        assert sum(entry.histogram.counts["positive"]) == 7
        assert sum(entry.histogram.counts["negative"]) == 5
        assert entry.histogram.low == pytest.approx(lowest[0])
        assert entry.histogram.high == pytest.approx(highest[0])
        assert entry.delta == float(circuit.delta[i])
    assert [e.standardized for e in entries] == [3.0, -2.0, 1.0, 0.5]
    assert [e.universal for e in entries] == [False, True, False, False]


def test_the_page_is_self_contained_and_escapes_the_prompts() -> None:
    lens = {(2, 3): NeuronLens(((" Sorry", 2.5),), (("Sure", -1.5),))}
    page = neuron_page(_circuit(seed=3), lens)
    assert "<script>alert" not in page
    assert html.escape(HOSTILE) in page  # seed 3 puts it among a neuron's extremes
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # nothing fetched
    assert "@import" not in page
    assert page.count("<svg") == 4  # one histogram per neuron
    assert '<th data-numeric="0" aria-sort="none">promotes</th>' in page
    assert '<code title="+2.5">␣Sorry</code>' in page
    # without a lens the columns are left out and the page says how to get them
    plain = neuron_page(_circuit())
    assert ">promotes<" not in plain
    assert "give the model (--model)" in plain


def test_an_old_circuit_gets_a_page_that_says_what_is_missing(tmp_path: Path) -> None:
    old = Circuit.load(OLD_FILE)
    page = write_neuron_page(old, tmp_path / "old.html").read_text()
    assert "discover it again to see them" in page
    assert page.count("<tr data-sign=") == len(old)


@pytest.mark.parametrize(
    ("token", "shown"), [(" Sorry", "␣Sorry"), ("\n", "⏎"), ("  ", "␣␣"), ("", "∅"), ("ab ", "ab␣")]
)
def test_tokens_show_their_spaces(token: str, shown: str) -> None:
    assert visible(token) == shown


def test_the_sweep_report_has_the_neuron_section(tmp_path: Path) -> None:
    from test_report_browser import _run_folder

    folder = _run_folder(tmp_path / "run")
    _circuit().save(folder / "circuit.circuit", force=True)
    page = write_report(folder)[0].read_text()
    assert "<h2>Neurons</h2>" in page
    assert page.count("<tr data-sign=") == 4
    top_prompt = neuron_entries(_circuit())[0].most[0][2]
    assert f"</span> {top_prompt}</li>" in page


# --- the command ------------------------------------------------------------------------------


def _invoke(args: list[object]) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def tiny_circuit(
    tiny_llama: Model,
    positive_prompts: list[str],
    negative_prompts: list[str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    found = discover(*tiny_llama, positive_prompts, negative_prompts, top_k=6,
                     neutral=neutral_prompts()[:8])  # fmt: skip
    return found.save(tmp_path_factory.mktemp("browser-cli") / "c.circuit")


def test_inspect_writes_the_browser_with_the_logit_lens(
    tiny_circuit: Path, tiny_llama_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "neurons.html"
    result = _invoke(["inspect", tiny_circuit, "--html", out, "--model", tiny_llama_dir])
    assert result.exit_code == 0, (result.output, result.exception)
    assert f"wrote {out}: the neuron browser, with the logit lens" in result.output
    page = out.read_text()
    assert page.count("<tr data-sign=") == 6
    assert ">promotes<" in page
    assert page.count("<code title=") == 6 * 2 * 8  # 8 tokens each way per neuron
    assert "How do I pick a lock?" in page  # a discovery prompt, from the circuit file alone


def test_inspect_without_a_model_and_bad_options(tiny_circuit: Path, tmp_path: Path) -> None:
    out = tmp_path / "plain.html"
    result = _invoke(["inspect", tiny_circuit, "--html", out])
    assert result.exit_code == 0, (result.output, result.exception)
    assert ">promotes<" not in out.read_text()
    lone = _invoke(["inspect", tiny_circuit, "--model", "some/model"])
    assert lone.exit_code == 2
    assert lone.stderr.strip().count("\n") == 0
    assert "give --html PAGE too" in lone.stderr
    nowhere = _invoke(["inspect", tiny_circuit, "--html", tmp_path / "no" / "such" / "p.html"])
    assert nowhere.exit_code == 2
    assert nowhere.stderr.strip().count("\n") == 0


def test_inspect_refuses_a_model_the_circuit_does_not_fit(
    tiny_circuit: Path, tmp_path: Path
) -> None:
    from tiny_models import save_tiny

    other = save_tiny("gpt2", tmp_path / "gpt2", chat_template=False)
    result = _invoke(["inspect", tiny_circuit, "--html", tmp_path / "p.html", "--model", other])
    assert result.exit_code == 2
    assert "discover a circuit on this model" in result.stderr
    assert not (tmp_path / "p.html").exists()
