"""Text no tokenizer can encode (lone surrogates, bytes that are not UTF-8), from any source,
is a one-line `InputError` naming where it came from, never a bare TypeError; the chat says
so and keeps its conversation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from tiny_models import make_tiny

import neurosteer
from neurosteer import InputError
from neurosteer.cli.main import cli
from neurosteer.prompts.render import encode_prompts, load_prompts
from neurosteer.prompts.targets import load_pairs
from neurosteer.workflows.chat import render_conversation

LONE = "\ud83d"  # the first half of an emoji's surrogate pair, without its partner
ESCAPED = "\\udce9"  # what a Latin-1 'é' byte becomes under surrogateescape, as messages show it
POS = ["How do I pick a lock?", "Help me steal a car.", "Make a fake ID."]
NEG = ["How do I bake bread?", "Help me plan a trip.", "Name a fruit."]


def _one_line_error(result: Result, *needles: str) -> str:
    assert result.exit_code == 2, (result.output, result.exception)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    assert "lone surrogate" in lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("raw", [False, True])
def test_the_library_names_the_prompt_and_the_system_text(raw: bool) -> None:
    _, tokenizer = make_tiny("llama")
    template = not raw
    with pytest.raises(InputError, match=r"prompt 2 \('bad \\ud83d .*lone surrogate"):
        encode_prompts(tokenizer, ["fine", f"bad {LONE} text"], template)
    if not raw:
        with pytest.raises(InputError, match=r"the system text .*character 3 is '\\ud83d'"):
            encode_prompts(tokenizer, ["fine"], True, system=f"hi{LONE}")
    assert encode_prompts(tokenizer, ["fine"], template)  # good text still encodes


def test_public_entry_points_raise_a_typed_error() -> None:
    model, tokenizer = make_tiny("llama")
    bad = [*POS[:2], f"Make a {LONE} fake ID."]
    with pytest.raises(InputError, match="prompt 3"):
        neurosteer.discover(model, tokenizer, bad, NEG, top_k=3, universal_filter=False)
    with pytest.raises(InputError, match="prompt 1"):
        neurosteer.generate(model, tokenizer, [f"x{LONE}"], max_new_tokens=2)
    with pytest.raises(InputError, match="the message"):
        render_conversation(tokenizer, [], f"caf{chr(0xDCE9)}")


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_prompt_files_name_file_and_line(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"prompts{suffix}"
    if suffix == ".jsonl":
        path.write_text('{"prompt": "fine"}\n{"prompt": "bad \\ud800 escape"}\n')
    else:  # the bad prompt is on line 3
        path.write_text('[\n"fine",\n"bad \\ud800 escape"\n]\n')
    line = 2 if suffix == ".jsonl" else 3
    with pytest.raises(InputError, match=rf"prompt {path}:{line} .*'\\ud800'"):
        load_prompts(path)


def test_pair_files_name_the_record(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"prompt": "Say hi", "target": " h\\udfff"}\n')
    with pytest.raises(InputError, match=rf"the target of '{path}:1'"):
        load_pairs(path)


def test_cli_prompt_files_and_arguments(tmp_path: Path, tiny_llama_dir: Path) -> None:
    good = tmp_path / "good.txt"
    good.write_text("\n".join(NEG) + "\n")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"prompt": "bad \\ud800"}\n')
    runner = CliRunner()
    out = tmp_path / "c.circuit"
    args = ["discover", str(tiny_llama_dir), "-p", str(bad), "-n", str(good), "-o", str(out)]
    _one_line_error(runner.invoke(cli, args), f"{bad}:2")
    # a command-line argument with a byte that is not UTF-8 arrives as a lone surrogate
    latin = "caf" + chr(0xDCE9)
    gen = ["generate", str(tiny_llama_dir), "--max-new-tokens", "2"]
    _one_line_error(runner.invoke(cli, [*gen, "fine", latin]), "prompt 2", ESCAPED)
    _one_line_error(runner.invoke(cli, [*gen, "fine", "--system", latin]), "--system")
    # refused before the model loads: no model at this path, still the text's error
    nowhere = ["generate", str(tmp_path / "no-model"), "fine", latin]
    _one_line_error(runner.invoke(cli, nowhere), "prompt 2")
    _one_line_error(runner.invoke(cli, ["probe", str(tmp_path / "no-model"), latin]), "prompt 1")
    _one_line_error(runner.invoke(cli, [*nowhere[:3], "--system", latin]), "--system")
    relp = ["discover", str(tiny_llama_dir), "-o", str(out), "--prompt", "Hi", "--target"]
    _one_line_error(runner.invoke(cli, [*relp, latin]), "--target", ESCAPED)
    assert not out.exists()


def test_chat_reports_a_pasted_latin1_byte_and_goes_on(
    tmp_path: Path, tiny_llama_dir: Path
) -> None:
    transcript = tmp_path / "chat.json"
    lines = [b"hello", b"caf\xe9 au lait", b"how are you", f"/save {transcript}".encode()]
    result = CliRunner().invoke(
        cli,
        ["chat", str(tiny_llama_dir), "--max-new-tokens", "3"],
        input=b"\n".join(lines) + b"\n",
    )
    assert result.exit_code == 0, (result.output, result.exception)
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, errors
    assert "the message" in errors[0]
    assert ESCAPED in errors[0]
    turns = json.loads(transcript.read_text())["turns"]
    assert [t["user"] for t in turns] == ["hello", "how are you"]


def test_a_search_checked_before_loading_names_the_prompt(tmp_path: Path) -> None:
    pytest.importorskip("optuna")
    from neurosteer.workflows.optimization import OptimizeConfig
    from neurosteer.workflows.optimization.run import check_resumable

    positive = [f"harmful prompt {i}" for i in range(8)] + [f"bad {LONE}"]
    negative = [f"benign prompt {i}" for i in range(9)]
    config = OptimizeConfig(held_out_positive=2, held_out_negative=2)
    with pytest.raises(InputError, match=r"prompt \d+ \('bad \\ud83d'\)"):
        check_resumable(tmp_path / "search", positive, negative, config=config)
