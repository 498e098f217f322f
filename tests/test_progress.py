"""No silent minutes.

Reading a GGUF file names the step it is in (config, weights, tokenizer); `generate` shows
prompts done, tokens generated and tokens per second; both only when asked (the CLI asks when
stderr is a terminal).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from transformers import PreTrainedModel, PreTrainedTokenizerFast

import neurosteer.cli.options
from gguf_files import write_gguf
from neurosteer.cli.main import cli
from neurosteer.generation import generate
from neurosteer.loading import load_model

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
    shown = CliRunner().invoke(cli, args)
    assert shown.exit_code == 0, (shown.output, shown.exception)
    assert "reading tiny.gguf" in shown.stderr
