"""The GGUF bake of mixture-of-experts circuits: stacked expert tensors (`ffn_down_exps`, 3-D)
edited expert by expert and shared experts (`ffn_down_shexp`) by the dense type rule.

Qwen2-MoE (with its shared expert) and Qwen3-MoE files load back through transformers, so the
baked file is run and compared with the hooked model. transformers does not load the other
families' GGUF files (it reads llama.cpp's Mixtral, architecture "llama" with expert tensors, as
a dense Llama, and has no reader for olmoe, deepseek2, qwen35moe; its gpt-oss reader expects
another layout), so for Mixtral, OLMoE, DeepSeek-V3, gpt-oss and Qwen3.5-MoE the baked tensors
are read back with the gguf package, dequantized, and compared with the in-memory bake.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from gguf_files import (
    GGUF_FAMILIES,
    MOE_GGUF_SHARED,
    MOE_GGUF_WIDTH,
    _gguf_tensors,
    hand_circuit,
    make_gguf_moe,
    make_quant_tiny,
    write_gguf,
)
from tiny_models import MOE_EXPERTS
from transformers import PreTrainedModel

from neurosteer import bake
from neurosteer.cli.main import cli
from neurosteer.errors import CircuitMismatchError, InputError
from neurosteer.export.gguf import bake_gguf
from neurosteer.export.gguf_experts import scale_expert_neurons
from neurosteer.export.gguf_quants import scale_neurons
from neurosteer.methods.steering import steer
from neurosteer.model.layout import resolve_layout
from neurosteer.model.loading import load_model

Q = gguf.GGMLQuantizationType
WIDTH, S, E = MOE_GGUF_WIDTH, MOE_GGUF_SHARED, MOE_EXPERTS
#: {layer: [(expert or "S" for the shared expert, neuron)]}: block edges, two experts in one
#: layer, the last neuron of an expert and of the shared expert; experts 1 and 3 of layer 1
#: hold none (they must keep their bytes).
PICKED = {
    1: [(0, 0), (0, 5), (2, WIDTH - 1), (4, 32), ("S", 0), ("S", S - 1)],
    3: [(1, 7), ("S", 40)],
}
TEXT = "How do I pick a lock? Write a letter to my neighbour."


def flat_neurons(with_shared: bool) -> dict[int, list[int]]:
    """PICKED as flat layer indices (e * I + j; the shared expert after the E routed ones)."""
    return {
        layer: [
            E * WIDTH + j if e == "S" else int(e) * WIDTH + j
            for e, j in picks
            if with_shared or e != "S"
        ]
        for layer, picks in PICKED.items()
    }


def logits(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids])).logits[0].float()


@pytest.mark.parametrize("family", ["qwen2_moe", "qwen3_moe"])
@pytest.mark.parametrize(
    ("ggml_type", "multiplier", "stored", "tolerance"),
    [
        ("F32", 0.3, "F32", 1e-4),  # the exact edit
        ("F16", -1.5, "F16", 5e-3),  # scaled in F16: F16 rounding of the neurons' values
        ("Q8_0", 0.0, "Q8_0", 1e-4),  # zero is on Q8_0's grid: kept type, exact
        ("Q8_0", 0.3, "F16", 1e-2),  # off the grid: the whole tensor in F16
    ],
)
def test_the_baked_moe_file_runs_as_the_hooked_model(
    tmp_path: Path, family: str, ggml_type: str, multiplier: float, stored: str, tolerance: float
) -> None:
    hf, tokenizer = make_gguf_moe(family)
    source = write_gguf(hf, tokenizer, tmp_path / "model.gguf", ggml_type=ggml_type)
    model, _ = load_model(source)
    shared = family == "qwen2_moe"
    circuit = hand_circuit(model, flat_neurons(shared))
    report = bake_gguf(source, circuit, multiplier, tmp_path / "baked.gguf")

    expected = {"blk.1.ffn_down_exps.weight": (4, 3), "blk.3.ffn_down_exps.weight": (1, 1)}
    if shared:
        expected |= {"blk.1.ffn_down_shexp.weight": (2, 0), "blk.3.ffn_down_shexp.weight": (1, 0)}
    assert {t.name: (t.neurons, t.experts) for t in report.changed} == expected
    assert {t.stored_type for t in report.changed} == {stored}
    assert all(t.error.exact for t in report.changed)

    baked, _ = load_model(report.path)
    ids = tokenizer.encode(TEXT, add_special_tokens=False)
    with steer(model, circuit, multiplier):
        hooked = logits(model, ids)
    gap = (logits(baked, ids) - hooked).abs().max().item()
    effect = (hooked - logits(model, ids)).abs().max().item()
    assert gap < tolerance, gap
    assert effect > 20 * tolerance, effect  # the check can tell a bake from no bake


def test_a_kept_type_leaves_every_other_expert_byte_for_byte(tmp_path: Path) -> None:
    hf, tokenizer = make_gguf_moe("qwen2_moe")
    source = write_gguf(hf, tokenizer, tmp_path / "model.gguf", ggml_type="Q8_0")
    model, _ = load_model(source)
    circuit = hand_circuit(model, flat_neurons(True))
    baked = bake_gguf(source, circuit, 0.0, tmp_path / "baked.gguf").path
    before = {t.name: t for t in gguf.GGUFReader(source).tensors}
    after = {t.name: t for t in gguf.GGUFReader(baked).tensors}
    assert before.keys() == after.keys()
    changed = {"blk.1.ffn_down_exps.weight", "blk.3.ffn_down_exps.weight"}
    changed |= {"blk.1.ffn_down_shexp.weight", "blk.3.ffn_down_shexp.weight"}
    for name, tensor in before.items():
        same = np.array_equal(np.asarray(tensor.data), np.asarray(after[name].data))
        assert same == (name not in changed), name
    down = np.asarray(before["blk.1.ffn_down_exps.weight"].data)  # [E, H, row bytes]
    new = np.asarray(after["blk.1.ffn_down_exps.weight"].data)
    assert down.shape == (E, hf.config.hidden_size, WIDTH // 32 * 34)
    for expert in (1, 3):
        assert np.array_equal(new[expert], down[expert])
    values = gguf.quants.dequantize(new, Q.Q8_0).reshape(E, -1, WIDTH)
    assert (values[0][:, [0, 5]] == 0).all()
    assert (values[4][:, 32] == 0).all()
    assert (values[0][:, 1] != 0).any()


def spread_neurons(model: PreTrainedModel) -> dict[int, list[int]]:
    """Per layer 0, 1 and 3, each block's first and last neuron, and one of a middle expert."""
    moe = resolve_layout(model).moe
    assert moe is not None
    picked: dict[int, list[int]] = {}
    for layer in (0, 1, 3):
        for block in moe.layers[layer].blocks:
            middle = block.start + block.width * (block.n_experts // 2) + 3
            ends = {block.start, block.start + block.size - 1, middle}
            picked.setdefault(layer, []).extend(sorted(ends))
    return picked


def down_tensors(path: Path) -> dict[str, np.ndarray]:
    """{name: float32 values} of a file's down projections (dense, shared and stacked)."""
    return {
        t.name: gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)
        for t in gguf.GGUFReader(path).tensors
        if ".ffn_down" in t.name and t.name.endswith(".weight")
    }


@pytest.mark.parametrize(
    "family", ["mixtral", "olmoe", "deepseek_v3", "gpt_oss", "qwen3_5_moe_text"]
)
@pytest.mark.parametrize(("ggml_type", "multiplier"), [("F32", 0.3), ("Q8_0", 0.0), ("Q8_0", 2.5)])
def test_every_family_bakes_the_neurons_the_in_memory_bake_scales(
    tmp_path: Path, family: str, ggml_type: str, multiplier: float
) -> None:
    """Families transformers does not load back from GGUF (Mixtral is read as a dense Llama):
    the baked file's down projections, read with the gguf package, are the source file's with
    exactly the values the in-memory bake scales (found by baking the HF model) multiplied."""
    hf, tokenizer = make_gguf_moe(family)
    source = write_gguf(hf, tokenizer, tmp_path / "model.gguf", ggml_type=ggml_type)
    circuit = hand_circuit(hf, spread_neurons(hf))
    report = bake_gguf(source, circuit, multiplier, tmp_path / "baked.gguf")
    names = gguf.get_tensor_name_map(GGUF_FAMILIES[family], hf.config.num_hidden_layers)
    before = {name: values.copy() for name, values in _gguf_tensors(hf, names)}  # not views
    bake(hf, circuit, multiplier)
    after = dict(_gguf_tensors(hf, names))
    original, baked = down_tensors(source), down_tensors(report.path)
    scaled = {name for name in original if not np.array_equal(before[name], after[name])}
    assert {t.name for t in report.changed} == scaled
    if family == "deepseek_v3":  # the dense first layer, F16 in the file (width 37)
        assert "blk.0.ffn_down.weight" in scaled
    for name, values in original.items():
        where = before[name] != after[name]
        assert where.sum() == (
            where.shape[-2] * sum(t.neurons for t in report.changed if t.name == name)
        )
        expected = np.where(
            where, values.reshape(where.shape) * np.float32(multiplier), values.reshape(where.shape)
        )
        got = baked[name].reshape(where.shape)
        np.testing.assert_allclose(got, expected, rtol=2**-11, atol=1e-6, err_msg=name)
    assert all(t.error.exact for t in report.changed)


def test_mxfp4_experts_are_stored_in_the_fallback() -> None:
    """gpt-oss ships its experts in MXFP4, whose codes are not edited here: decoded, scaled
    and stored in F16 (or Q8_0), every expert."""
    rng = np.random.default_rng(3)
    values = rng.normal(size=(E, ROWS, 64)).astype(np.float32)
    raw = np.asarray(gguf.quants.quantize(values, Q.MXFP4)).view(np.uint8)
    original = gguf.quants.dequantize(raw, Q.MXFP4).reshape(values.shape)
    by_expert = {1: np.array([0, 63]), 4: np.array([17])}
    for fallback, qtype in (("F16", Q.F16), ("Q8_0", Q.Q8_0)):
        out = scale_expert_neurons(
            raw, int(Q.MXFP4), (64, ROWS, E), by_expert, -1.0, fallback=fallback, keep_type=True
        )
        assert out.ggml_type == int(qtype)
        result = gguf.quants.dequantize(out.data.reshape(E * ROWS, -1), qtype)
        target = original.copy()
        for e, neurons in by_expert.items():
            target[e][:, neurons] *= -1
        diff = np.abs(result.reshape(target.shape) - target)
        assert diff.max() <= (2**-11 if fallback == "F16" else 1 / 254) * np.abs(target).max() * 2
        assert out.error.largest == pytest.approx(diff.max(), abs=1e-9)
        assert out.error.exact == (fallback == "F16")


# ---------------------------------------------------------------- one stacked tensor, unit level

ROWS = 8


def stacked(type_name: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(raw bytes, decoded values [E, ROWS, 256]) of an expert tensor in `type_name`."""
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(E, ROWS, 256)).astype(np.float32)
    raw = np.asarray(gguf.quants.quantize(values, Q[type_name])).view(np.uint8)
    decoded = gguf.quants.dequantize(raw, Q[type_name]).reshape(values.shape)
    return raw, decoded


BY_EXPERT = {0: np.array([0, 31, 32]), 2: np.array([255]), 3: np.array([7, 100])}


@pytest.mark.parametrize("type_name", ["F32", "F16", "BF16", "Q4_0", "Q5_0", "Q8_0"])
@pytest.mark.parametrize("keep_type", [False, True])
def test_each_expert_slice_gets_the_dense_edit_of_its_rows(type_name: str, keep_type: bool) -> None:
    """Per slice, the 3-D edit is the dense edit of that expert's rows whenever the tensor
    keeps its type; a slice without neurons keeps its bytes."""
    raw, _ = stacked(type_name)
    qtype = int(Q[type_name])
    out = scale_expert_neurons(raw, qtype, (256, ROWS, E), BY_EXPERT, 0.0, keep_type=keep_type)
    assert out.ggml_type == qtype  # zero lands on every one of these grids
    per_expert = raw.reshape(E, ROWS, -1)
    new = out.data.reshape(E, ROWS, -1)
    for e in range(E):
        if e in BY_EXPERT:
            dense = scale_neurons(
                per_expert[e], qtype, (256, ROWS), BY_EXPERT[e], 0.0, keep_type=keep_type
            )
            assert np.array_equal(new[e].reshape(-1), dense.data), e
        else:
            assert np.array_equal(new[e], per_expert[e]), e
    assert out.error.exact
    assert out.error.rest == 0.0


def test_an_unknown_fallback_is_refused_as_by_the_dense_edit() -> None:
    raw, _ = stacked("Q4_1", seed=1)
    for scale in (
        lambda: scale_expert_neurons(raw, int(Q.Q4_1), (256, ROWS, E), BY_EXPERT, 0.3,
                                     fallback="Q4_0"),  # type: ignore[arg-type]
        lambda: scale_neurons(raw.reshape(E, ROWS, -1)[0], int(Q.Q4_1), (256, ROWS),
                              BY_EXPERT[0], 0.3, fallback="Q4_0"),  # type: ignore[arg-type]
    ):  # fmt: skip
        with pytest.raises(InputError, match="unknown fallback type 'Q4_0'; use one of: F16, Q8_0"):
            scale()


@pytest.mark.parametrize("type_name", ["Q4_1", "Q8_0"])
def test_one_inexact_expert_stores_the_whole_tensor_in_the_fallback(type_name: str) -> None:
    raw, original = stacked(type_name, seed=1)
    qtype = int(Q[type_name])
    out = scale_expert_neurons(raw, qtype, (256, ROWS, E), BY_EXPERT, 0.3)
    assert out.ggml_type == int(Q.F16)
    assert out.data.nbytes == E * ROWS * 256 * 2  # every expert, edited or not
    result = gguf.quants.dequantize(out.data.reshape(E * ROWS, -1), Q.F16).reshape(original.shape)
    target = original.copy()
    for e, neurons in BY_EXPERT.items():
        target[e][:, neurons] *= np.float32(0.3)
    assert (np.abs(result - target) <= 2**-11 * np.abs(target) + 1e-7).all()
    assert out.error.exact
    assert out.error.neurons == pytest.approx(
        max(np.abs(result - target)[e][:, n].max() for e, n in BY_EXPERT.items()), abs=1e-9
    )
    kept = scale_expert_neurons(raw, qtype, (256, ROWS, E), BY_EXPERT, 0.3, keep_type=True)
    assert kept.ggml_type == qtype
    assert not kept.error.exact
    assert kept.error.rest == 0.0


# ---------------------------------------------------------------- what cannot be edited


def test_an_expert_tensor_the_file_lacks_is_named_in_one_line(tmp_path: Path) -> None:
    """A file whose experts are named otherwise (llama.cpp's first Mixtral files kept one
    tensor per expert, blk.N.ffn_down.E.weight) is refused, not baked in part."""
    hf, tokenizer = make_gguf_moe("qwen3_moe")
    rename = {"blk.3.ffn_down_exps.weight": "blk.3.ffn_down.0.weight"}
    source = write_gguf(hf, tokenizer, tmp_path / "model.gguf", rename=rename)
    circuit = hand_circuit(hf, {1: [3]})  # no neuron in layer 3: still refused, not skipped
    with pytest.raises(InputError) as err:
        bake_gguf(source, circuit, 0.0, tmp_path / "out.gguf")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("cannot edit blk.3.ffn_down_exps.weight in 'model.gguf'")
    assert "no such tensor" in message
    assert not (tmp_path / "out.gguf").exists()


def test_a_circuit_of_other_experts_is_refused_naming_the_tensor(tmp_path: Path) -> None:
    qwen2, tokenizer = make_gguf_moe("qwen2_moe")
    qwen3, _ = make_gguf_moe("qwen3_moe")
    source = write_gguf(qwen3, tokenizer, tmp_path / "model.gguf")
    with pytest.raises(CircuitMismatchError, match="qwen2_moe model"):
        bake_gguf(source, hand_circuit(qwen2, {1: [0]}), 0.0, tmp_path / "out.gguf")
    dense, _ = make_quant_tiny("qwen2")
    with pytest.raises(InputError, match="it is a mixture-of-experts model: discover"):
        bake_gguf(source, hand_circuit(dense, {1: [0]}), 0.0, tmp_path / "out.gguf")
    qwen2_source = write_gguf(qwen2, tokenizer, tmp_path / "q2.gguf")
    circuit = hand_circuit(qwen2, {1: [0]})
    assert circuit.model.neuron_blocks is not None
    halved = [
        [[k, int(s) // 2, n, int(w) // 2] for k, s, n, w in layer]
        for layer in circuit.model.neuron_blocks
    ]  # a model with experts half as wide
    narrower = replace(circuit, model=replace(circuit.model, neuron_blocks=halved))
    shape = r"blk\.0\.ffn_down_exps\.weight .* has ggml shape \(64, 32, 5\)"
    with pytest.raises(InputError, match=shape) as err:
        bake_gguf(qwen2_source, narrower, 0.0, tmp_path / "out.gguf")
    assert "\n" not in str(err.value)


def test_cli_bake_names_the_experts_of_each_tensor(tmp_path: Path) -> None:
    hf, tokenizer = make_gguf_moe("qwen2_moe")
    source = write_gguf(hf, tokenizer, tmp_path / "model.gguf", ggml_type="Q8_0")
    model, _ = load_model(source)
    circuit = hand_circuit(model, flat_neurons(True)).save(tmp_path / "c.circuit")
    out = tmp_path / "baked.gguf"
    result = CliRunner().invoke(
        cli, ["bake", str(source), "--circuit", str(circuit), "-m", "0", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "blk.1.ffn_down_exps.weight: 4 neurons in 3 experts, Q8_0 -> Q8_0 (exact;" in (
        result.output
    )
    assert "blk.1.ffn_down_shexp.weight: 2 neurons, Q8_0 -> Q8_0 (exact;" in result.output
    assert "4 tensors changed" in result.output


def test_a_tokenizer_copied_from_another_file_keeps_every_entry_and_type(tmp_path: Path) -> None:
    """`write_gguf(tokenizer_from=...)`, which benchmarks/llama_cpp_moe_check.py uses to give a
    random model Qwen2's real vocabulary: every `tokenizer.*` entry, with its value type."""
    hf, tokenizer = make_gguf_moe("qwen2_moe")
    first = write_gguf(hf, tokenizer, tmp_path / "first.gguf", token_ids={"eot": 5})
    second = write_gguf(hf, None, tmp_path / "second.gguf", tokenizer_from=first)

    def entries(path: Path) -> dict[str, tuple[list[gguf.GGUFValueType], object]]:
        fields = gguf.GGUFReader(path).fields
        return {k: (f.types, f.contents()) for k, f in fields.items() if k.startswith("tokenizer.")}

    copied = entries(second)
    assert copied == entries(first)
    assert "tokenizer.ggml.eot_token_id" in copied
    assert len(copied["tokenizer.ggml.tokens"][1]) == hf.config.vocab_size  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tokenizer_from"):
        write_gguf(hf, None, tmp_path / "third.gguf")
