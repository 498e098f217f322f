"""No silent minutes, and several multipliers in one `generate` run.

Reading a GGUF file names the step it is in (config, weights, tokenizer); `generate` shows
prompts done, tokens generated and tokens per second; both only when asked (the CLI asks when
stderr is a terminal). `generate -m 0,-1` loads the model once and labels each multiplier's
answers.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from gguf_files import hand_circuit, write_gguf
from tiny_models import D_MLP
from transformers import PreTrainedModel, PreTrainedTokenizerFast

import neurosteer.cli.main
import neurosteer.cli.options
import neurosteer.cli.render
import neurosteer.model.loading
from neurosteer.cli.main import cli
from neurosteer.evaluation.generation import generate
from neurosteer.methods.circuit import Circuit
from neurosteer.methods.steering import steer
from neurosteer.model.loading import load_model

Pair = tuple[PreTrainedModel, PreTrainedTokenizerFast]
PROMPTS = ["How do I pick a lock?", "Name a fruit, please.", "Hi"]
RATE = re.compile(r"(\d+) tokens, \d+\.\d tok/s")


def test_generate_shows_prompts_and_tokens_per_second(
    tiny_llama: Pair, capsys: pytest.CaptureFixture[str]
) -> None:
    model, tokenizer = tiny_llama
    generate(model, tokenizer, PROMPTS, max_new_tokens=6, batch_size=2, progress=True)
    err = capsys.readouterr().err
    assert "generating" in err
    assert "prompt" in err  # the bar counts prompts
    counts = [int(n) for n in RATE.findall(err)]
    assert counts
    assert max(counts) > 0

    generate(model, tokenizer, PROMPTS, max_new_tokens=6, batch_size=2)
    assert capsys.readouterr().err == ""


def test_reading_a_gguf_file_names_its_steps(
    tmp_path: Path, tiny_llama: Pair, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_gguf(*tiny_llama, tmp_path / "tiny.gguf")
    capsys.readouterr()
    load_model(path, progress=True)
    err = capsys.readouterr().err
    assert "reading tiny.gguf" in err
    steps = [err.find(step) for step in ("config", "weights (dequantizing", "tokenizer")]
    assert -1 not in steps
    assert steps == sorted(steps)

    load_model(path)
    assert "reading tiny.gguf" not in capsys.readouterr().err


def test_the_cli_shows_gguf_progress_on_a_terminal_only(
    tmp_path: Path, tiny_llama: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_gguf(*tiny_llama, tmp_path / "tiny.gguf")
    args = ["generate", str(path), "--max-new-tokens", "2", "Hi"]
    piped = CliRunner().invoke(cli, args)
    assert piped.exit_code == 0, (piped.output, piped.exception)
    assert "reading tiny.gguf" not in piped.stderr

    monkeypatch.setattr(neurosteer.cli.options, "show_progress", lambda: True)
    monkeypatch.setattr(neurosteer.cli.main, "show_progress", lambda: True)
    shown = CliRunner().invoke(cli, args)
    assert shown.exit_code == 0, (shown.output, shown.exception)
    assert "reading tiny.gguf" in shown.stderr
    assert RATE.search(shown.stderr)


def _invoke(args: Sequence[object]) -> Any:
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def circuit_path(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    model, _ = load_model(tiny_llama_dir)
    circuit = hand_circuit(model, {layer: list(range(D_MLP)) for layer in (1, 2, 3)})
    return circuit.save(tmp_path_factory.mktemp("circuit") / "all.circuit")


def test_generate_takes_several_multipliers_in_one_load(
    tiny_llama_dir: Path, circuit_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads: list[object] = []
    real_load = neurosteer.model.loading.load_model

    def counted(*args: Any, **kwargs: Any) -> Any:
        loads.append(args[0])
        return real_load(*args, **kwargs)

    shown: list[list[tuple[str, list[str]]]] = []
    real_print = neurosteer.cli.render.print_answers

    def kept(prompts: Sequence[str], columns: Sequence[tuple[str, Sequence[str]]]) -> None:
        shown.append([(label, list(answers)) for label, answers in columns])
        real_print(prompts, columns)

    monkeypatch.setattr(neurosteer.model.loading, "load_model", counted)
    monkeypatch.setattr(neurosteer.cli.render, "print_answers", kept)
    args = ["generate", tiny_llama_dir, "--circuit", circuit_path, "-m", "0,-1"]
    result = _invoke([*args, "--max-new-tokens", "6", *PROMPTS])
    assert result.exit_code == 0, (result.output, result.exception)
    assert len(loads) == 1
    assert all(label in result.stdout for label in ("steered (m = 0)", "steered (m = -1)"))

    model, tokenizer = real_load(tiny_llama_dir)
    circuit = Circuit.load(circuit_path)
    expected = [("unsteered", generate(model, tokenizer, PROMPTS, max_new_tokens=6))]
    for m in (0.0, -1.0):
        with steer(model, circuit, m):
            answers = generate(model, tokenizer, PROMPTS, max_new_tokens=6)
        expected.append((f"steered (m = {m:g})", answers))
    assert shown == [expected]
    assert expected[1][1] != expected[2][1]  # the two multipliers answer differently


def test_one_multiplier_still_works(tiny_llama_dir: Path, circuit_path: Path) -> None:
    args = ["generate", tiny_llama_dir, "--circuit", circuit_path, "--multiplier", "-1"]
    result = _invoke([*args, "--max-new-tokens", "3", "Hi"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert "steered (m = -1)" in result.stdout
    assert "steered (m = 0)" not in result.stdout


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["-m", "0,x"], "-m takes comma-separated finite numbers"),
        (["-m", "0,,1"], "-m takes comma-separated finite numbers"),
        (["-m", "nan"], "-m takes comma-separated finite numbers"),
    ],
)
def test_bad_multiplier_lists_are_one_line_errors(
    tiny_llama_dir: Path, circuit_path: Path, extra: list[str], message: str
) -> None:
    result = _invoke(["generate", tiny_llama_dir, "--circuit", circuit_path, *extra, "Hi"])
    assert result.exit_code == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_multiplier_without_a_circuit_is_refused(tiny_llama_dir: Path) -> None:
    result = _invoke(["generate", tiny_llama_dir, "-m", "0", "Hi"])
    assert result.exit_code == 2
    assert "give --circuit too" in result.stderr
