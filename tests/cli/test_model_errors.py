"""A model whose own forward pass fails is reported as the model's failure (one line, exit 2,
what to check), while a fault in neurosteer's code, inside the forward (a hook) or outside it,
is still an unexpected error to report (exit 1)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result
from tiny_models import make_tokenizer, tiny_config
from transformers import AutoModelForCausalLM
from transformers.models.llama import modeling_llama

from conftest import NEGATIVE_PROMPTS, POSITIVE_PROMPTS
from neurosteer.cli.main import cli
from neurosteer.errors import ModelRunError
from neurosteer.methods import recording

pytestmark = pytest.mark.usefixtures("restore_library_logging")


def _invoke(args: list[object]) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


def _one_line(result: Result, exit_code: int) -> str:
    """The one error line on stderr, which ends it (after any cleared progress bar)."""
    assert result.exit_code == exit_code, (result.output, result.exception)
    lines = [line.strip() for line in re.split(r"[\r\n]", result.stderr) if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert errors == lines[-1:], result.stderr
    assert "Traceback" not in result.output
    return errors[0]


def _discover(folder: Path, tmp_path: Path) -> list[object]:
    positive, negative = tmp_path / "pos.txt", tmp_path / "neg.txt"
    positive.write_text("\n".join(POSITIVE_PROMPTS) + "\n")
    negative.write_text("\n".join(NEGATIVE_PROMPTS) + "\n")
    return [
        *("discover", folder, "-p", positive, "-n", negative, "--no-universal-filter"),
        *("--top-k", "4", "-o", tmp_path / "out.circuit"),
    ]


@pytest.fixture(scope="module")
def short_embedding_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny llama whose embedding has 40 rows while its tokenizer has 104 tokens: a folder
    that loads, but whose own forward fails on most text (transformers raises IndexError)."""
    folder = tmp_path_factory.mktemp("short_embedding")
    config = tiny_config("llama")
    config.vocab_size = 40
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    return folder


def test_a_models_own_failure_is_one_line_saying_so(short_embedding_dir: Path) -> None:
    args = ["generate", short_embedding_dir, "--max-new-tokens", "2", "zzz"]
    line = _one_line(_invoke(args), 2)
    assert line.startswith("error: the model's own ")
    assert " failed (IndexError: index out of range in self), inside its transformers" in line
    assert f"check that '{short_embedding_dir}' loads and runs with transformers alone" in line
    assert line.endswith("--debug shows the traceback")
    assert "please report" not in line
    debug = _invoke(["--debug", *args])
    assert isinstance(debug.exception, ModelRunError)
    assert isinstance(debug.exception.__cause__, IndexError)


def test_a_failing_model_forward_is_quoted_by_its_first_line(
    tiny_llama_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("expected all tensors to be on the same device\n(details)")

    monkeypatch.setattr(modeling_llama.LlamaMLP, "forward", fail)
    line = _one_line(_invoke(_discover(tiny_llama_dir, tmp_path)), 2)
    assert line.startswith(
        "error: the model's own forward pass failed (RuntimeError: expected all tensors to be "
        "on the same device), inside its transformers/torch code, not neurosteer's"
    )
    assert "(details)" not in line
    assert not (tmp_path / "out.circuit").exists()


def _fault(*_args: object, **_kwargs: object) -> None:
    raise RuntimeError("a fault in neurosteer's code")


@pytest.mark.parametrize(
    "where",
    [
        "last_index",  # called by neurosteer's recording hook, inside the model's forward
        "last_token_index",  # called before the forward
    ],
)
def test_a_fault_in_neurosteers_code_is_still_to_be_reported(
    tiny_llama_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    owner = recording._PassState if where == "last_index" else recording
    monkeypatch.setattr(owner, where, _fault)
    line = _one_line(_invoke(_discover(tiny_llama_dir, tmp_path)), 1)
    assert line == (
        "error: unexpected RuntimeError: a fault in neurosteer's code (run with --debug for the "
        "traceback, and please report it)"
    )


def test_memory_that_runs_out_at_one_prompt_is_one_line_saying_what_to_try(
    tiny_llama_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows: list[int] = []

    def out_of_memory(self: object, hidden: torch.Tensor) -> torch.Tensor:
        rows.append(hidden.shape[0])
        try:  # the CPU allocator's own error, as torch raises it
            torch.empty(2**62, dtype=torch.uint8)
        except RuntimeError as err:
            raise err from None
        raise AssertionError("a 4 EiB tensor was allocated")

    monkeypatch.setattr(modeling_llama.LlamaMLP, "forward", out_of_memory)
    line = _one_line(_invoke(_discover(tiny_llama_dir, tmp_path)), 2)
    assert line.startswith("error: out of memory ([enforce fail at alloc_cpu.cpp")
    assert "can't allocate memory" in line
    assert "--dtype" in line
    assert "please report" not in line
    assert rows[0] > 1
    assert rows[-1] == 1
    assert rows == sorted(rows, reverse=True)
    assert not (tmp_path / "out.circuit").exists()
