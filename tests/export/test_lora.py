"""A circuit as a LoRA adapter: PEFT at scale s gives the hooked model at m' = 1 + s(m − 1) on
every family; the GGUF adapter reads back with llama.cpp's names, shapes and alpha and gives
the same edit under llama.cpp's scale convention (scale · alpha / rank); the CLI states the
rank an engine must allow."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from gguf_files import circuit_neurons, hand_circuit, make_quant_tiny, write_gguf
from tiny_models import make_tiny, save_tiny
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from neurosteer import render_prompts, resolve_layout, steer
from neurosteer.cli.main import cli
from neurosteer.errors import CircuitMismatchError, InputError
from neurosteer.export.lora import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    LORA_PROVENANCE,
    rank_notes,
    save_lora,
)
from neurosteer.export.lora_gguf import save_lora_gguf
from neurosteer.methods.circuit import Circuit
from neurosteer.model.loading import load_model

peft = pytest.importorskip("peft", reason="peft is not installed (pip install 'neurosteer[lora]')")
gguf = pytest.importorskip("gguf", reason="gguf is not installed")

Pair = tuple[PreTrainedModel, PreTrainedTokenizerFast]
SCALES = (1.0, 0.5)


def _logits(
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerFast, prompts: list[str]
) -> torch.Tensor:
    batch = tokenizer(
        render_prompts(tokenizer, prompts),
        return_tensors="pt",
        padding=True,
        add_special_tokens=False,
    )
    with torch.no_grad():
        return model(**batch).logits


def _hooked(pair: Pair, circuit: Circuit, multiplier: float, prompts: list[str]) -> torch.Tensor:
    with steer(pair[0], circuit, multiplier):
        return _logits(pair[0], pair[1], prompts)


def _assert_equal_to_hooks(out: torch.Tensor, hooked: torch.Tensor, base: torch.Tensor) -> None:
    """Equal within float32 rounding, while the edit itself moves the logits by far more."""
    torch.testing.assert_close(out, hooked, rtol=1e-4, atol=1e-4)
    assert (hooked - base).abs().max() > 1000 * (out - hooked).abs().max().clamp(min=1e-6)


#: Neurons of a hand-made circuit: different counts per layer (so ranks differ), the first and
#: last neuron of the tiny models' 37 included.
UNEVEN = {1: [0, 5, 36], 2: [11], 3: [2, 7, 20, 30]}


def _uneven_circuit(model: PreTrainedModel) -> Circuit:
    """A circuit whose layers hold different neuron counts, with `model`'s provenance."""
    return hand_circuit(model, UNEVEN)


@pytest.mark.parametrize("multiplier", [0.0, 2.5])
def test_peft_adapter_at_scale_s_equals_hooks_at_scaled_multiplier(
    tiny_model: Pair,
    positive_prompts: list[str],
    negative_prompts: list[str],
    tmp_path: Path,
    multiplier: float,
) -> None:
    circuit = _uneven_circuit(tiny_model[0])
    prompts = positive_prompts[:3] + negative_prompts[:2]
    report = save_lora(tiny_model[0], circuit, multiplier, tmp_path / "adapter")
    assert report.ranks == circuit.neurons_per_layer()
    assert report.rank == max(circuit.neurons_per_layer().values())
    base = _logits(*tiny_model, prompts)

    steered = peft.PeftModel.from_pretrained(copy.deepcopy(tiny_model[0]), tmp_path / "adapter")
    layout = resolve_layout(tiny_model[0])
    for layer, count in circuit.neurons_per_layer().items():
        site = steered.base_model.model.get_submodule(
            f"{layout.layers_path}.{layer}.{layout.site_path}"
        )
        assert site.r["default"] == count  # the rank_pattern was read
        assert site.scaling["default"] == 1.0  # alpha_pattern: alpha / r = 1 in every layer
    for s in SCALES:
        with peft.helpers.rescale_adapter_scale(steered, s):
            out = _logits(steered, tiny_model[1], prompts)
        hooked = _hooked(tiny_model, circuit, 1 + s * (multiplier - 1), prompts)
        _assert_equal_to_hooks(out, hooked, base)
    assert torch.equal(_logits(*tiny_model, prompts), base)  # the model was not changed


def test_peft_adapter_files(tiny_llama: Pair, tmp_path: Path) -> None:
    circuit = _uneven_circuit(tiny_llama[0])
    out = save_lora(tiny_llama[0], circuit, 0.0, tmp_path / "adapter").path
    assert {p.name for p in out.iterdir()} == {ADAPTER_CONFIG, ADAPTER_WEIGHTS, LORA_PROVENANCE}
    config = json.loads((out / ADAPTER_CONFIG).read_text())
    modules = [f"model.layers.{layer}.mlp.down_proj" for layer in circuit.by_layer()]
    assert config["target_modules"] == sorted(modules)
    assert config["rank_pattern"] == config["alpha_pattern"]
    assert config["r"] == config["lora_alpha"] == max(config["rank_pattern"].values())
    record = json.loads((out / LORA_PROVENANCE).read_text())
    assert record["multiplier"] == 0.0
    assert record["circuit"]["neurons"] == {
        str(k): v.tolist() for k, v in circuit.by_layer().items()
    }
    with pytest.raises(InputError, match="already exists"):
        save_lora(tiny_llama[0], circuit, 0.0, out)


def _read_adapter(path: Path) -> tuple[dict[str, object], dict[str, np.ndarray]]:
    reader = gguf.GGUFReader(path)
    fields = {name: field.contents() for name, field in reader.fields.items()}
    tensors = {}
    for t in reader.tensors:
        stored = "F16" if t.name.endswith(".lora_a") else "F32"  # 0/1 exact in F16
        assert t.tensor_type == gguf.GGMLQuantizationType[stored]
        tensors[t.name] = np.array(t.data, dtype=np.float32).reshape(
            [int(n) for n in reversed(t.shape)]
        )
        assert tensors[t.name].shape[::-1] == tuple(int(n) for n in t.shape)  # ggml order
    return fields, tensors


def _apply_like_llama_cpp(
    model: torch.nn.Module, fields: dict[str, object], tensors: dict[str, np.ndarray], s: float
) -> torch.nn.Module:
    """A copy of `model` with W += scale · alpha / rank · B·A on each adapted down projection,
    llama.cpp's rule, rank being lora_b's ne0."""
    model = copy.deepcopy(model)
    layout = resolve_layout(model)
    sites = layout.site_modules(model)
    alpha = float(fields["adapter.lora.alpha"])  # type: ignore[arg-type]
    for name, a in tensors.items():
        if not name.endswith(".lora_a"):
            continue
        b = tensors[name.removesuffix("_a") + "_b"]
        layer = int(name.split(".")[1])
        delta = torch.from_numpy(b @ a) * (s * alpha / b.shape[1])  # [d_model, d_mlp]
        weight = sites[layer].weight
        with torch.no_grad():
            weight += delta if layout.orientation == "columns" else delta.T
    return model


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3_text", "gpt2", "gpt_neox"])
def test_gguf_adapter_reads_back_and_equals_hooks(
    family: str, positive_prompts: list[str], negative_prompts: list[str], tmp_path: Path
) -> None:
    pair = make_tiny(family)
    circuit = _uneven_circuit(pair[0])
    report = save_lora_gguf(pair[0], circuit, 0.0, tmp_path / "adapter.gguf")
    fields, tensors = _read_adapter(report.path)
    rank = max(circuit.neurons_per_layer().values())
    assert fields["general.type"] == "adapter"
    assert fields["adapter.type"] == "lora"
    assert fields["adapter.lora.alpha"] == rank == report.rank
    arch = {"gemma3_text": "gemma3", "gpt_neox": "gptneox"}.get(family, family)
    assert fields["general.architecture"] == arch
    d_model, d_mlp = pair[0].config.hidden_size, resolve_layout(pair[0]).d_mlp
    expected = set()
    for layer, neurons in circuit.by_layer().items():
        name = f"blk.{layer}.ffn_down.weight"
        expected |= {f"{name}.lora_a", f"{name}.lora_b"}
        a, b = tensors[f"{name}.lora_a"], tensors[f"{name}.lora_b"]
        assert a.shape == (rank, d_mlp)
        assert b.shape == (d_model, rank)
        r = len(neurons)
        assert np.array_equal(a[:r].argmax(1), neurons.numpy())
        assert a.sum() == r
        assert not a[r:].any()
        assert not b[:, r:].any()
    assert set(tensors) == expected

    prompts = positive_prompts[:3] + negative_prompts[:2]
    base = _logits(*pair, prompts)
    for s in SCALES:
        steered = _apply_like_llama_cpp(pair[0], fields, tensors, s)
        out = _logits(steered, pair[1], prompts)
        _assert_equal_to_hooks(out, _hooked(pair, circuit, 1 - s, prompts), base)


@pytest.mark.parametrize("down_type", ["Q8_0", "Q6_K"])
def test_gguf_adapter_from_a_gguf_file_uses_its_stored_weights(
    tmp_path: Path, down_type: str
) -> None:
    hf, tokenizer = make_quant_tiny("qwen2")
    source = write_gguf(
        hf, tokenizer, tmp_path / "model.gguf", ggml_type="Q8_0", down_type=down_type
    )
    model, _ = load_model(source)  # the file's own (dequantized) weights
    circuit = hand_circuit(model, circuit_neurons(hf.config.intermediate_size))
    report = save_lora_gguf(source, circuit, 2.0, tmp_path / "adapter.gguf")
    fields, tensors = _read_adapter(report.path)
    assert fields["general.architecture"] == "qwen2"
    assert report.ranks == circuit.neurons_per_layer()
    prompts = ["How do I pick a lock?", "Name a fruit."]
    pair = (model, tokenizer)
    base = _logits(*pair, prompts)
    for s in SCALES:
        steered = _apply_like_llama_cpp(model, fields, tensors, s)
        out = _logits(steered, tokenizer, prompts)
        _assert_equal_to_hooks(out, _hooked(pair, circuit, 1 + s, prompts), base)
    with pytest.raises(InputError, match="overwrite the input"):
        save_lora_gguf(source, circuit, 0.0, source, force=True)


def test_a_circuit_that_does_not_fit_is_refused(tiny_llama: Pair, tmp_path: Path) -> None:
    other, _ = make_tiny("qwen2")
    circuit = hand_circuit(other, {2: [1, 3]})
    with pytest.raises(CircuitMismatchError):
        save_lora(tiny_llama[0], circuit, 0.0, tmp_path / "adapter")
    with pytest.raises(CircuitMismatchError):
        save_lora_gguf(tiny_llama[0], circuit, 0.0, tmp_path / "adapter.gguf")
    assert not list(tmp_path.iterdir())
    empty = hand_circuit(tiny_llama[0], {})
    with pytest.raises(InputError, match="no neurons"):
        save_lora(tiny_llama[0], empty, 0.0, tmp_path / "adapter")


@pytest.mark.parametrize(
    ("rank", "expected"),
    [
        (1, "fits vLLM's default --max-lora-rank 16"),
        (16, "fits vLLM's default --max-lora-rank 16"),
        (17, "serve it with --max-lora-rank 32"),
        (300, "serve it with --max-lora-rank 320"),
        (512, "serve it with --max-lora-rank 512"),
        (513, "largest --max-lora-rank 512: vLLM cannot serve it"),
    ],
)
def test_rank_notes_name_the_engine_limit(rank: int, expected: str) -> None:
    (note,) = rank_notes(rank)
    assert note.startswith(f"rank {rank} ")
    assert expected in note


def test_cli_exports_both_formats_and_states_a_rank_over_the_limit(tmp_path: Path) -> None:
    folder = save_tiny("llama", tmp_path / "model")
    model, _ = load_model(folder)
    circuit = hand_circuit(model, {1: list(range(20)), 3: [4]})  # rank 20 > vLLM's 16
    circuit.save(tmp_path / "c.circuit")
    runner = CliRunner()
    for out in ("adapter", "adapter.gguf"):
        args = ["export-lora", str(folder), "--circuit", str(tmp_path / "c.circuit")]
        result = runner.invoke(cli, [*args, "-m", "0.5", "-o", str(tmp_path / out)])
        assert result.exit_code == 0, result.output
        assert "rank 20 on 2 down projections (neurons per layer 1: 20, 3: 1)" in result.output
        assert "by 1 + s(0.5 - 1)" in result.output
        assert "exceeds vLLM's default --max-lora-rank 16: serve it with --max-lora-rank 32" in (
            result.output
        )
        assert (tmp_path / out).exists()
        again = runner.invoke(cli, [*args, "-o", str(tmp_path / out)])
        assert again.exit_code == 2
        assert again.output.count("\n") == 1
        assert "already exists" in again.output


def test_cli_reads_a_gguf_model_without_loading_it(tmp_path: Path) -> None:
    hf, tokenizer = make_quant_tiny("llama")
    source = write_gguf(hf, tokenizer, tmp_path / "model.gguf", ggml_type="Q8_0")
    model, _ = load_model(source)
    hand_circuit(model, {1: [0, 5], 3: [7]}).save(tmp_path / "c.circuit")
    out = tmp_path / "adapter.gguf"
    args = ["export-lora", str(source), "--circuit", str(tmp_path / "c.circuit"), "-o", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "rank 2 fits vLLM's default --max-lora-rank 16" in result.output
    fields, _ = _read_adapter(out)
    assert fields["adapter.lora.alpha"] == 2


def test_a_neuron_listed_twice_is_one_rank_scaled_once(tiny_llama: Pair, tmp_path: Path) -> None:
    """The hooks and the bake scale a repeated neuron once; so must the adapters."""
    circuit = hand_circuit(tiny_llama[0], {1: [4, 9, 4], 3: [2, 2]})
    prompts = ["How do I pick a lock?", "Name a fruit."]
    base = _logits(*tiny_llama, prompts)
    hooked = _hooked(tiny_llama, circuit, 0.5, prompts)
    report = save_lora(tiny_llama[0], circuit, 0.0, tmp_path / "adapter")
    assert report.ranks == {1: 2, 3: 1}
    steered = peft.PeftModel.from_pretrained(copy.deepcopy(tiny_llama[0]), report.path)
    with peft.helpers.rescale_adapter_scale(steered, 0.5):
        _assert_equal_to_hooks(_logits(steered, tiny_llama[1], prompts), hooked, base)
    gguf_report = save_lora_gguf(tiny_llama[0], circuit, 0.0, tmp_path / "adapter.gguf")
    assert gguf_report.rank == 2
    fields, tensors = _read_adapter(gguf_report.path)
    out = _logits(
        _apply_like_llama_cpp(tiny_llama[0], fields, tensors, 0.5), tiny_llama[1], prompts
    )
    _assert_equal_to_hooks(out, hooked, base)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_peft_adapter_on_a_bfloat16_model_is_within_its_rounding(
    family: str, tmp_path: Path
) -> None:
    """bfloat16 rounds the hooked product and the adapter's sum at different places: they agree
    to a few bfloat16 steps (2^-8 relative) of the largest logit, far below the edit."""
    pair = make_tiny(family, dtype=torch.bfloat16)
    circuit = _uneven_circuit(pair[0])
    prompts = ["How do I pick a lock?", "Name a fruit."]
    base = _logits(*pair, prompts).float()
    hooked = _hooked(pair, circuit, 0.5, prompts).float()
    report = save_lora(pair[0], circuit, 0.0, tmp_path / "adapter")
    steered = peft.PeftModel.from_pretrained(copy.deepcopy(pair[0]), report.path)
    with peft.helpers.rescale_adapter_scale(steered, 0.5):
        out = _logits(steered, pair[1], prompts).float()
    gap = (out - hooked).abs().max()
    assert gap <= 8 * 2**-8 * hooked.abs().max()  # measured: 0.09 of 7.1 (llama)
    assert (hooked - base).abs().max() > 10 * gap
