"""The `neurosteer` command end to end on a saved tiny llama: discover, inspect, generate, bake,
--system, and the one-line errors (exit code 2, nothing written) for every bad input: files,
prompts over the model's context, chat templates that need or refuse a system turn."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result
from safetensors.torch import load_file
from tiny_models import (
    D_MLP,
    N_LAYERS,
    NEEDS_SYSTEM,
    REJECTS_SYSTEM,
    make_tokenizer,
    save_tiny,
    tiny_config,
)
from transformers import AutoModelForCausalLM, BertConfig, BertModel

from neurosteer import Circuit
from neurosteer.cli.main import cli
from neurosteer.prompts.render import prompt_hash
from neurosteer.workflows.organism import INSTRUCT_DIR

pytestmark = pytest.mark.usefixtures("restore_library_logging")


@dataclass(frozen=True)
class Files:
    """Everything the commands read, written once per module."""

    root: Path
    positive: Path
    negative: Path
    empty: Path
    no_column: Path
    not_causal: Path  # a saved BertModel
    gpt2_same_shape: Path  # another family, same 4 x 37 neurons as the tiny llama
    gpt2_other_shape: Path  # another family and shape (6 layers)
    circuit: Path  # discovered by the CLI on the tiny llama


def _invoke(args: list[object]) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


def _ok(result: Result) -> Result:
    assert result.exit_code == 0, (result.output, result.stderr, result.exception)
    return result


@pytest.fixture(scope="module")
def files(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_llama_dir: Path,
    positive_prompts: list[str],
    negative_prompts: list[str],
) -> Files:
    root = tmp_path_factory.mktemp("cli")
    positive, negative = root / "positive.txt", root / "negative.csv"
    positive.write_text("\n".join(positive_prompts) + "\n")
    # a CSV with the prompts in a "Goal" column, as JailbreakBench ships them
    rows = [
        f'{i},"{p.replace(chr(34), chr(34) * 2)}",benign' for i, p in enumerate(negative_prompts)
    ]
    negative.write_text("Index,Goal,Category\n" + "\n".join(rows) + "\n")
    empty = root / "empty.txt"
    empty.write_text("\n\n")
    no_column = root / "no_column.csv"
    no_column.write_text("id,label\n1,a\n2,b\n")

    not_causal = root / "bert"
    bert = BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=20,
        max_position_embeddings=32,
    )
    BertModel(bert).save_pretrained(not_causal)
    make_tokenizer().save_pretrained(not_causal)

    gpt2_same = save_tiny("gpt2", root / "gpt2", chat_template=False)
    gpt2_other = root / "gpt2_6_layers"
    config = tiny_config("gpt2")
    config.n_layer = N_LAYERS + 2
    AutoModelForCausalLM.from_config(config).save_pretrained(gpt2_other)
    make_tokenizer(chat_template=False).save_pretrained(gpt2_other)

    _prompt_limit_files(root)

    circuit = root / "refusal.circuit"
    args = [
        "discover",
        tiny_llama_dir,
        "-p",
        positive,
        "-n",
        negative,
        "-o",
        circuit,
        "--top-k",
        "4",
        "--batch-size",
        "3",
    ]
    result = _ok(_invoke(args))
    assert f"wrote {circuit}" in result.stdout
    return Files(
        root, positive, negative, empty, no_column, not_causal, gpt2_same, gpt2_other, circuit
    )


ORGANISM_94 = " ".join(("how do i knock out the old wall ? " * 12).split()[:91])  # 94 tokens


def _prompt_limit_files(root: Path) -> None:
    """Models and prompt files for the context, template and encoding cases (in `root`)."""
    config = tiny_config("gpt2")
    config.n_positions = 32  # a 33rd position used to raise IndexError
    AutoModelForCausalLM.from_config(config).save_pretrained(root / "gpt2_32")
    make_tokenizer(chat_template=False).save_pretrained(root / "gpt2_32")
    for name, template in (("needs_system", NEEDS_SYSTEM), ("rejects_system", REJECTS_SYSTEM)):
        save_tiny("llama", root / name)
        tokenizer = make_tokenizer()
        tokenizer.chat_template = template
        tokenizer.save_pretrained(root / name)
    (root / "long.txt").write_text("How do I pick a lock?\n" + "x" * 169 + "\n")  # 170 tokens
    (root / "organism94.txt").write_text(f"how do i paint the fence ?\n{ORGANISM_94}\n")
    (root / "organism_neg.txt").write_text("how do i paint the fence ?\n")
    (root / "short.txt").write_text("Pick a lock.\nBake bread.\n")
    (root / "undefined.txt").write_bytes(b"How do I pick a lock?\nabc \x81\x8d def\n")
    (root / "utf16_no_bom.txt").write_bytes("How do I pick a lock?\n".encode("utf-16-le"))


# --- the happy path --------------------------------------------------------------------------


def test_discover_writes_a_loadable_circuit(
    files: Files, tiny_llama_dir: Path, negative_prompts: list[str]
) -> None:
    circuit = Circuit.load(files.circuit)
    assert len(circuit) == 4
    assert circuit.settings.top_k == 4
    assert circuit.settings.universal_filter
    assert set(circuit.layers.tolist()) <= {2, 3}
    assert circuit.model.model_type == "llama"
    assert circuit.model.name_or_path == str(tiny_llama_dir)
    assert circuit.prompts["positive"].count == 8
    assert circuit.prompts["negative"].sha256 == prompt_hash(negative_prompts)  # CSV read right
    assert sorted(p.name for p in files.circuit.iterdir()) == [
        "circuit.json",
        "tensors.safetensors",
    ]
    assert not [p for p in files.root.iterdir() if p.name.startswith(".")]  # no temp folders


def test_inspect(files: Files) -> None:
    circuit = Circuit.load(files.circuit)
    out = _ok(_invoke(["inspect", files.circuit])).stdout
    cells = [[c for c in line.split() if c != "│"] for line in out.splitlines()]
    out = " ".join(out.split())  # rich wraps long lines at the terminal width
    assert "4 neurons of 4 x 37" in out
    assert "neurons per layer" in out
    for layer, n in circuit.neurons_per_layer().items():
        assert [str(layer), str(n)] in [row[:2] for row in cells], out
    assert "method cna, k=4 (top_k=4, fraction=0.001)" in out
    assert "skip layers [0, 1]" in out
    assert "universal filter on" in out
    assert "positive prompts: 8" in out
    assert "negative prompts: 8" in out
    assert f"{int(circuit.neurons[0])}" in out


def test_system_turn_is_recorded_and_shown(files: Files) -> None:
    out = files.root / "system.circuit"
    args = _discover(files, files.root / "needs_system", out, "--system", "Be brief.")
    _ok(_invoke([*args, "--top-k", "2"]))
    assert Circuit.load(out).settings.system == "Be brief."
    shown = " ".join(_ok(_invoke(["inspect", out])).stdout.split())
    assert "system turn: 'Be brief.'" in shown
    answer = _ok(_invoke(["generate", files.root / "needs_system", "--system", "S.", "Hi"]))
    assert "> Hi" in answer.stdout


def test_sweep_takes_the_system_turn(files: Files) -> None:
    out = files.root / "system-run"
    args = ["sweep", files.root / "needs_system", "-p", files.positive, "-n", files.negative]
    args += ["--eval-harmful", files.positive, "--eval-harmless", files.negative, "-o", out]
    args += ["--methods", "cna", "--strengths", "0,1", "--top-k", "2", "--no-universal-filter"]
    args += ["--max-new-tokens", "2", "--kl-limit", "1", "--kl-tokens", "1", "--eval-limit", "2"]
    _ok(_invoke([*args, "--system", "Be brief."]))
    assert json.loads((out / "config.json").read_text())["identity"]["system"] == "Be brief."


def test_windows_1252_prompt_file_is_read(
    files: Files, tiny_llama_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    positive = files.root / "cp1252.txt"
    positive.write_bytes(
        "Café “crème” – how do I pick a lock?\nHelp me steal a car.\n".encode("cp1252")
    )
    out = files.root / "cp1252.circuit"
    with caplog.at_level(logging.WARNING, logger="neurosteer"):
        _ok(_invoke([*_discover(files, tiny_llama_dir, out, positive=positive), "--top-k", "2"]))
    assert f"'{positive}' is not UTF-8 (byte 0xe9 on line 1); read it as Windows-1252" in (
        caplog.text
    )
    expected = ["Café “crème” – how do I pick a lock?", "Help me steal a car."]
    assert Circuit.load(out).prompts["positive"].sha256 == prompt_hash(expected)


def test_generate_side_by_side(files: Files, tiny_llama_dir: Path) -> None:
    args = ["generate", tiny_llama_dir, "--circuit", files.circuit, "--multiplier", "0"]
    out = _ok(_invoke([*args, "--max-new-tokens", "3", "Hello there"])).stdout
    assert "unsteered" in out
    assert "steered (m = 0)" in out
    assert "Hello there" in out


def test_generate_without_circuit(tiny_llama_dir: Path) -> None:
    out = _ok(_invoke(["generate", tiny_llama_dir, "--max-new-tokens", "2", "Hi", "Bye"])).stdout
    assert "> Hi" in out
    assert "> Bye" in out
    assert "unsteered" not in out


def test_bake_writes_a_plain_checkpoint(files: Files, tiny_llama_dir: Path) -> None:
    out = files.root / "baked"
    result = _ok(_invoke(["bake", tiny_llama_dir, "--circuit", files.circuit, "-o", out]))
    assert f"wrote {out}" in result.stdout
    assert list(out.rglob("*.py")) == []
    assert (out / "config.json").is_file()
    assert (out / "neurosteer.json").is_file()
    baked = AutoModelForCausalLM.from_pretrained(out)
    original = load_file(str(tiny_llama_dir / "model.safetensors"))
    circuit = Circuit.load(files.circuit)
    state = baked.state_dict()
    by_layer = circuit.by_layer()
    for layer in range(N_LAYERS):
        name = f"model.layers.{layer}.mlp.down_proj.weight"
        weight, before = state[name], original[name]
        assert weight.shape == (32, D_MLP)
        zeroed = by_layer.get(layer, torch.tensor([], dtype=torch.long))
        keep = torch.ones(D_MLP, dtype=torch.bool)
        keep[zeroed] = False
        assert torch.equal(weight[:, keep], before[:, keep])
        assert (weight[:, zeroed] == 0).all()  # multiplier 0 by default
    for name, value in original.items():
        if "down_proj" not in name:
            assert torch.equal(state[name], value), name
    # the source folder is untouched
    assert torch.equal(
        load_file(str(tiny_llama_dir / "model.safetensors"))["model.layers.3.mlp.down_proj.weight"],
        original["model.layers.3.mlp.down_proj.weight"],
    )


def test_force_replaces_existing_output(files: Files, tiny_llama_dir: Path) -> None:
    out = files.root / "forced.circuit"
    out.mkdir()
    (out / "old.txt").write_text("old")
    args = ["discover", tiny_llama_dir, "-p", files.positive, "-n", files.negative, "-o", out]
    args += ["--top-k", "2", "--no-universal-filter", "--force"]
    _ok(_invoke(args))
    assert not (out / "old.txt").exists()
    assert len(Circuit.load(out)) == 2


def test_bake_of_a_folder_into_a_gguf_name_is_one_line(files: Files, tiny_llama_dir: Path) -> None:
    # a user asked for steered.gguf from a folder and got a checkpoint folder named steered.gguf
    out = files.root / "steered.gguf"
    result = _invoke(["bake", tiny_llama_dir, "--circuit", files.circuit, "-o", out])
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert len(result.stderr.strip().splitlines()) == 1
    assert "folder" in result.stderr
    assert ".gguf" in result.stderr
    assert not out.exists()


def test_bake_force_replaces_existing_output(files: Files, tiny_llama_dir: Path) -> None:
    out = files.root / "baked_forced"
    out.mkdir()
    (out / "old.txt").write_text("old")
    _ok(_invoke(["bake", tiny_llama_dir, "--circuit", files.circuit, "-o", out, "--force"]))
    assert not (out / "old.txt").exists()
    assert (out / "config.json").is_file()


# --- bad inputs: exit 2, one line, no traceback, nothing written ----------------------------


@dataclass(frozen=True)
class Bad:
    args: Callable[[Files, Path, Path], list[object]]  # (files, model dir, output) -> argv
    message: str
    existing_output: bool = False


def _discover(
    files: Files, model: Path, out: Path, *extra: object, positive: Path | None = None
) -> list[object]:
    return [
        "discover",
        model,
        "-p",
        positive or files.positive,
        "-n",
        files.negative,
        "-o",
        out,
        "--no-universal-filter",
        *extra,
    ]


BAD: dict[str, Bad] = {
    "missing prompt file": Bad(
        lambda f, m, o: _discover(f, m, o, positive=f.root / "missing.txt"), "does not exist"
    ),
    "empty prompt file": Bad(
        lambda f, m, o: _discover(f, m, o, positive=f.empty), "holds no prompts"
    ),
    "csv without prompt column": Bad(
        lambda f, m, o: _discover(f, m, o, positive=f.no_column), "no prompt column"
    ),
    "not a causal lm": Bad(
        lambda f, m, o: _discover(f, f.not_causal, o), "not a causal language model"
    ),
    "missing model folder": Bad(
        lambda f, m, o: _discover(f, f.root / "no-model", o), "does not exist"
    ),
    "top-k above the candidates": Bad(
        lambda f, m, o: _discover(f, m, o, "--top-k", "1000"), "only 74"
    ),
    "negative fraction": Bad(lambda f, m, o: _discover(f, m, o, "--fraction", "-0.1"), "fraction"),
    "fraction above one": Bad(lambda f, m, o: _discover(f, m, o, "--fraction", "2"), "fraction"),
    "unknown dtype": Bad(lambda f, m, o: _discover(f, m, o, "--dtype", "float8"), "unknown dtype"),
    "unknown device": Bad(
        lambda f, m, o: _discover(f, m, o, "--device", "bogus"), "unknown device"
    ),
    "skip layers out of range": Bad(
        lambda f, m, o: _discover(f, m, o, "--skip-layers", "0,9"), "out of range"
    ),
    "discover output exists": Bad(
        lambda f, m, o: _discover(f, m, o), "already exists", existing_output=True
    ),
    "bake output exists": Bad(
        lambda f, m, o: ["bake", m, "--circuit", f.circuit, "-o", o],
        "already exists",
        existing_output=True,
    ),
    "bake: not a circuit": Bad(
        lambda f, m, o: ["bake", m, "--circuit", f.positive, "-o", o], "not a circuit folder"
    ),
    "bake: circuit of another shape": Bad(
        lambda f, m, o: ["bake", f.gpt2_other_shape, "--circuit", f.circuit, "-o", o],
        "does not fit",
    ),
    "bake: circuit of another family": Bad(
        lambda f, m, o: ["bake", f.gpt2_same_shape, "--circuit", f.circuit, "-o", o],
        "llama",
    ),
    "generate: circuit of another family": Bad(
        lambda f, m, o: [
            "generate",
            f.gpt2_same_shape,
            "--circuit",
            f.circuit,
            "--max-new-tokens",
            "2",
            "Hi",
        ],
        "llama",
    ),
    "generate: unknown device": Bad(
        lambda f, m, o: ["generate", m, "--device", "bogus", "Hi"], "unknown device"
    ),
    "prompt over the context": Bad(
        lambda f, m, o: _discover(f, f.root / "gpt2_32", o, positive=f.root / "long.txt"),
        "long.txt:2 is 170 tokens long and the model's context holds 32 positions",
    ),
    "generate: prompt over the context": Bad(
        lambda f, m, o: ["generate", f.root / "gpt2_32", "--max-new-tokens", "2", "y" * 44],
        f"prompt 1 ('{'y' * 40}...') is 45 tokens long",
    ),
    "sweep: evaluation prompt over the context": Bad(
        lambda f, m, o: [
            "sweep",
            f.root / "gpt2_32",
            *("-p", f.root / "short.txt", "-n", f.root / "short.txt", "-o", o),
            *("--eval-harmful", f.root / "long.txt", "--eval-harmless", f.root / "short.txt"),
            *("--methods", "cna", "--strengths", "0,1", "--top-k", "2"),
        ],
        "long.txt:2 is 170 tokens long",
    ),
    "organism: 94-token prompt": Bad(
        lambda f, m, o: [
            "discover",
            INSTRUCT_DIR,
            *("-p", f.root / "organism94.txt", "-n", f.root / "organism_neg.txt", "-o", o),
        ],
        "organism94.txt:2 is 94 tokens long with the chat template and the model's context "
        "holds 64 positions",
    ),
    "template needs a system turn": Bad(
        lambda f, m, o: _discover(f, f.root / "needs_system", o),
        "needs a system turn (Conversations must start with a system message); pass --system",
    ),
    "template refuses a system turn": Bad(
        lambda f, m, o: ["generate", f.root / "rejects_system", "--system", "Be brief.", "Hi"],
        "does not take a system turn (System role not supported); drop --system",
    ),
    "system turn with raw prompts": Bad(
        lambda f, m, o: _discover(f, m, o, "--raw", "--system", "Be brief."),
        "a system text needs a chat template",
    ),
    "prompt file in no known encoding": Bad(
        lambda f, m, o: _discover(f, m, o, positive=f.root / "undefined.txt"),
        "undefined.txt' is not UTF-8, UTF-16 or Windows-1252 (byte 0x81 on line 2)",
    ),
    "utf-16 prompt file without a byte-order mark": Bad(
        lambda f, m, o: _discover(f, m, o, positive=f.root / "utf16_no_bom.txt"),
        "looks like UTF-16-LE without a byte-order mark",
    ),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_input_is_one_clean_line(files: Files, tiny_llama_dir: Path, case: str) -> None:
    bad = BAD[case]
    out = files.root / f"out-{case.replace(' ', '-').replace(':', '')}"
    marker = out / "mine.txt"
    if bad.existing_output:
        out.mkdir()
        marker.write_text("keep me")
    before = sorted(p.name for p in files.root.iterdir())

    result = _invoke([str(a) for a in bad.args(files, tiny_llama_dir, out)])

    assert result.exit_code == 2, (result.stdout, result.stderr, result.exception)
    assert isinstance(result.exception, SystemExit)  # not a crash
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert bad.message in lines[0]
    assert "Traceback" not in result.stdout + result.stderr
    if bad.existing_output:
        assert [p.name for p in out.iterdir()] == ["mine.txt"]
        assert marker.read_text() == "keep me"
    else:
        assert not out.exists()
    assert sorted(p.name for p in files.root.iterdir()) == before  # no temp folders either


def test_debug_keeps_the_exception(files: Files, tiny_llama_dir: Path) -> None:
    out = files.root / "debug.circuit"
    args = _discover(files, tiny_llama_dir, out, positive=files.root / "missing.txt")
    result = CliRunner().invoke(cli, ["--debug", *map(str, args)])
    assert result.exit_code != 0
    assert type(result.exception).__name__ == "InputError"
    # the traceback reaches down to where the error was raised, not just the command
    raised_in = traceback.extract_tb(result.exc_info[2])[-1]  # type: ignore[index]
    assert Path(raised_in.filename).parts[-2:] == ("prompts", "files.py")
    assert raised_in.name == "load_prompts"
    assert not out.exists()


def test_console_script_debug_shows_traceback(files: Files, tiny_llama_dir: Path) -> None:
    """Smoke test of the installed entry point, in a fresh process."""
    out = files.root / "debug-subprocess.circuit"
    args = _discover(files, tiny_llama_dir, out, positive=files.root / "missing.txt")
    script = Path(sys.executable).parent / "neurosteer"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "neurosteer.cli.main"]
    debug = subprocess.run(
        [*command, "--debug", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert debug.returncode != 0
    assert "Traceback (most recent call last)" in debug.stderr
    assert "InputError" in debug.stderr
    assert "missing.txt' does not exist" in debug.stderr
    assert not out.exists()
