"""Streaming bake: shard by shard, equal to the in-memory bake, untouched bytes untouched."""

from __future__ import annotations

import copy
import filecmp
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file
from tiny_models import make_tiny
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

from neurosteer import Circuit, InputError, discover, save_baked
from neurosteer.cli.main import cli
from neurosteer.export.streaming import INDEX_FILE, bake_streaming


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(shard))
    return tensors


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def sharded(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, PreTrainedModel, PreTrainedTokenizerFast]:
    """A tiny model saved in bf16 as many small shards, with the model that wrote it."""
    model, tokenizer = make_tiny(request.param, dtype=torch.bfloat16)
    folder = tmp_path_factory.mktemp(f"sharded_{request.param}")
    model.save_pretrained(folder, max_shard_size="20KB")
    tokenizer.save_pretrained(folder)
    assert (folder / INDEX_FILE).is_file()
    assert len(list(folder.glob("*.safetensors"))) >= 4
    return folder, model, tokenizer


def _circuit(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, prompts: list[str]
) -> Circuit:
    return discover(model, tokenizer, prompts[:4], prompts[4:], top_k=7, universal_filter=False)


def test_streaming_bake_equals_the_in_memory_bake(
    sharded: tuple[Path, PreTrainedModel, PreTrainedTokenizerFast],
    positive_prompts: list[str],
    tmp_path: Path,
) -> None:
    folder, model, tokenizer = sharded
    circuit = _circuit(model, tokenizer, positive_prompts)
    report = bake_streaming(folder, circuit, 2.5, tmp_path / "streamed")
    save_baked(copy.deepcopy(model), tokenizer, circuit, 2.5, tmp_path / "memory")

    original, streamed = _weights(folder), _weights(tmp_path / "streamed")
    in_memory = _weights(tmp_path / "memory")
    assert set(streamed) == set(original)
    assert set(report.tensors) == {
        name for name in original if not torch.equal(original[name], streamed[name])
    }
    assert len(report.tensors) == len(circuit.neurons_per_layer())
    for name, tensor in streamed.items():
        assert tensor.dtype == torch.bfloat16
        key = name if name in in_memory else next(k for k in in_memory if k.endswith(name))
        assert torch.equal(tensor, in_memory[key]), name  # bit for bit, bf16 included

    # untouched shards and every non-weight file are byte-identical copies
    for item in folder.iterdir():
        if item.suffix == ".safetensors" and item.name in report.rewritten:
            continue
        assert filecmp.cmp(item, tmp_path / "streamed" / item.name, shallow=False), item.name
    # one shard's worth of tensors in memory at most, far less than the whole model
    largest_shard = max(p.stat().st_size for p in folder.glob("*.safetensors"))
    total = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    assert 0 < report.peak_bytes <= largest_shard
    assert report.peak_bytes < total / 2
    # a plain checkpoint: transformers loads every weight from it (none initialised afresh)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "streamed", dtype=torch.bfloat16)
    baked = AutoModelForCausalLM.from_pretrained(tmp_path / "memory", dtype=torch.bfloat16)
    expected = baked.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in loaded.state_dict().items())
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_streaming_bake_refuses_bad_inputs(
    sharded: tuple[Path, PreTrainedModel, PreTrainedTokenizerFast],
    positive_prompts: list[str],
    tmp_path: Path,
) -> None:
    folder, model, tokenizer = sharded
    circuit = _circuit(model, tokenizer, positive_prompts)
    (tmp_path / "exists").mkdir()
    with pytest.raises(InputError, match="already exists"):
        bake_streaming(folder, circuit, 0.0, tmp_path / "exists")
    empty = tmp_path / "no-weights"
    empty.mkdir()
    (empty / "config.json").write_text((folder / "config.json").read_text())
    with pytest.raises(InputError, match="no safetensors weights"):
        bake_streaming(empty, circuit, 0.0, tmp_path / "out")
    with pytest.raises(InputError, match="not a local checkpoint"):
        bake_streaming(tmp_path, circuit, 0.0, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_streaming_bake(
    sharded: tuple[Path, PreTrainedModel, PreTrainedTokenizerFast],
    positive_prompts: list[str],
    tmp_path: Path,
) -> None:
    folder, model, tokenizer = sharded
    _circuit(model, tokenizer, positive_prompts).save(tmp_path / "c.circuit")
    result = CliRunner().invoke(
        cli,
        [
            "bake",
            str(folder),
            "--circuit",
            str(tmp_path / "c.circuit"),
            "--streaming",
            "-m",
            "0",
            "-o",
            str(tmp_path / "out"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "shards" in result.output
    assert (tmp_path / "out" / INDEX_FILE).is_file()


def test_streaming_bake_takes_several_circuits_like_the_in_memory_bake(
    sharded: tuple[Path, PreTrainedModel, PreTrainedTokenizerFast],
    positive_prompts: list[str],
    negative_prompts: list[str],
    tmp_path: Path,
) -> None:
    folder, model, tokenizer = sharded
    first = _circuit(model, tokenizer, positive_prompts)
    second = _circuit(model, tokenizer, negative_prompts)
    report = bake_streaming(folder, [first, second], 0.5, tmp_path / "streamed")
    save_baked(copy.deepcopy(model), tokenizer, [first, second], 0.5, tmp_path / "memory")
    streamed, in_memory = _weights(tmp_path / "streamed"), _weights(tmp_path / "memory")
    layers = set(first.neurons_per_layer()) | set(second.neurons_per_layer())
    assert len(report.tensors) == len(layers)
    for name, tensor in streamed.items():
        key = name if name in in_memory else next(k for k in in_memory if k.endswith(name))
        assert torch.equal(tensor, in_memory[key]), name


def test_streaming_bake_refuses_an_output_over_its_checkpoint(
    sharded: tuple[Path, PreTrainedModel, PreTrainedTokenizerFast],
    positive_prompts: list[str],
) -> None:
    folder, model, tokenizer = sharded
    circuit = _circuit(model, tokenizer, positive_prompts)
    files = sorted(p.name for p in folder.iterdir())
    for out in (folder, folder / "baked", folder.parent):
        with pytest.raises(InputError, match="would overwrite the input"):
            bake_streaming(folder, circuit, 0.0, out, force=True)
    assert sorted(p.name for p in folder.iterdir()) == files
