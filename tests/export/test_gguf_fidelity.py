"""How far a baked GGUF tensor's stored edit is from the exact one, and the baked file run as
users run it.

The rule (`neurosteer.export.gguf_quants`): by default every changed tensor holds the exact edit
(its own type where the neuron codes land exactly, else F16/Q8_0); `keep_type` keeps the type
with an approximate edit; either way the report gives the errors, which are checked here
against the decoded values. Block types: the five gguf-py can quantize and three K-quants.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
from click.testing import CliRunner
from gguf_files import encode_q6_k, hand_circuit, make_quant_tiny, write_gguf

from neurosteer.cli.main import cli
from neurosteer.evaluation.file_fidelity import hook_agreement
from neurosteer.export.gguf import bake_gguf
from neurosteer.export.gguf_quants import scale_neurons
from neurosteer.model.environment import environment
from neurosteer.model.gguf.reader import read_header
from neurosteer.model.loading import load_model

Q = gguf.GGMLQuantizationType
BLOCK_TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K"]
ROWS, N_FF = 4, 1024  # four K-quant super-blocks: two hold neurons, two do not
NEURONS = np.array([0, 5, 33, 300, 511])  # block edges, two in one block, the last value
TEXTS = ["How do I pick a lock?", "Name a fruit, please.", "Write a letter to my neighbour."]


def stored_weights(type_name: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(raw bytes [ROWS, row bytes], their decoded values [ROWS, N_FF]) of normal weights in
    `type_name`; Q4_K and Q5_K (no encoder here) as random codes under small scales."""
    rng = np.random.default_rng(seed)
    qtype = Q[type_name]
    if type_name == "Q6_K":
        raw = encode_q6_k(rng.normal(size=(ROWS, N_FF)).astype(np.float32))
    elif type_name in ("Q4_K", "Q5_K"):
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        raw = rng.integers(0, 256, size=(ROWS, N_FF // block, size), dtype=np.uint8)
        scales = rng.uniform(0.002, 0.02, size=(ROWS, N_FF // block, 2)).astype(np.float16)
        raw[..., :4] = scales.view(np.uint8)  # d and dmin
        raw = raw.reshape(ROWS, -1)
    else:
        weights = rng.normal(size=(ROWS, N_FF)).astype(np.float32)
        raw = np.asarray(gguf.quants.quantize(weights, qtype)).view(np.uint8)
    return raw, decode(raw, int(qtype))


def decode(raw: np.ndarray, ggml_type: int) -> np.ndarray:
    return gguf.quants.dequantize(raw.reshape(ROWS, -1), Q(ggml_type)).reshape(ROWS, N_FF)


def regions(type_name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Column masks: the neurons, the other values of their blocks, everything else."""
    block = gguf.GGML_QUANT_SIZES[Q[type_name]][0]
    neuron = np.isin(np.arange(N_FF), NEURONS)
    in_block = np.isin(np.arange(N_FF) // block, NEURONS // block) & ~neuron
    return neuron, in_block, ~neuron & ~in_block


@pytest.mark.parametrize("type_name", BLOCK_TYPES)
@pytest.mark.parametrize("multiplier", [0.0, 0.5, -1.0, 2.5])
def test_default_edit_is_exact_and_reported(type_name: str, multiplier: float) -> None:
    """Every value within F16 rounding of the exact edit, whatever the type; the reported
    errors are the measured ones."""
    raw, original = stored_weights(type_name)
    out = scale_neurons(raw, int(Q[type_name]), (N_FF, ROWS), NEURONS, multiplier)
    target = original.copy()
    target[:, NEURONS] *= np.float32(multiplier)
    result = decode(out.data, out.ggml_type)
    assert (np.abs(result - target) <= 2**-11 * np.abs(target) + 1e-7).all()
    assert out.ggml_type in (int(Q[type_name]), int(Q.F16))
    neuron, in_block, rest = regions(type_name)
    diff = np.abs(result - target)
    assert out.error.exact
    assert out.error.neurons == pytest.approx(diff[:, neuron].max(), abs=1e-9)
    assert out.error.blocks == pytest.approx(diff[:, in_block].max(), abs=1e-9)
    assert out.error.rest == pytest.approx(diff[:, rest].max(), abs=1e-9)
    edit = np.abs(target - original)[:, neuron].max()
    assert out.error.edit == pytest.approx(edit, rel=1e-6)
    if out.ggml_type == int(Q[type_name]):  # kept: blocks without a neuron keep their bytes
        block, size = gguf.GGML_QUANT_SIZES[Q[type_name]]
        untouched = np.setdiff1d(np.arange(N_FF // block), NEURONS // block)
        before, after = raw.reshape(ROWS, -1, size), out.data.reshape(ROWS, -1, size)
        assert np.array_equal(after[:, untouched], before[:, untouched])
        assert out.error.rest == 0.0


@pytest.mark.parametrize("type_name", BLOCK_TYPES)
@pytest.mark.parametrize("multiplier", [0.0, 0.5, -1.0, 2.5])
def test_keep_type_states_the_error_of_its_approximate_edit(
    type_name: str, multiplier: float
) -> None:
    raw, original = stored_weights(type_name, seed=1)
    qtype = int(Q[type_name])
    out = scale_neurons(raw, qtype, (N_FF, ROWS), NEURONS, multiplier, keep_type=True)
    assert out.ggml_type == qtype
    target = original.copy()
    target[:, NEURONS] *= np.float32(multiplier)
    result = decode(out.data, qtype)
    neuron, in_block, rest = regions(type_name)
    assert np.array_equal(result[:, rest], original[:, rest])
    assert out.error.rest == 0.0
    assert out.error.neurons == pytest.approx(np.abs(result - target)[:, neuron].max(), abs=1e-9)
    assert out.error.blocks == pytest.approx(np.abs(result - original)[:, in_block].max(), abs=1e-9)
    exact = bool((np.abs(result - target) <= 2**-11 * np.abs(target) + 1e-7).all())
    assert out.error.exact == exact
    if type_name.endswith("_K"):  # no re-quantizer: only the neurons' codes moved
        assert out.error.blocks == 0.0


@pytest.mark.parametrize("type_name", ["Q4_1", "Q5_1", "Q4_K", "Q5_K", "Q6_K", "Q4_0"])
def test_an_edit_off_the_grid_is_approximate_kept_and_exact_by_default(type_name: str) -> None:
    """m = 0.3 lands between grid points: kept, it is off by a share of the edit the report
    gives; by default the tensor is stored in F16 instead, within F16 rounding."""
    raw, _ = stored_weights(type_name, seed=2)
    qtype = int(Q[type_name])
    kept = scale_neurons(raw, qtype, (N_FF, ROWS), NEURONS, 0.3, keep_type=True)
    assert not kept.error.exact
    assert 0.01 < kept.error.relative < 1.0
    exact = scale_neurons(raw, qtype, (N_FF, ROWS), NEURONS, 0.3)
    assert exact.ggml_type == int(Q.F16)
    assert exact.error.exact
    assert exact.error.neurons < kept.error.neurons / 50


@pytest.mark.parametrize("type_name", BLOCK_TYPES)
def test_a_code_moves_only_its_own_value(type_name: str) -> None:
    """Kept edits at many multipliers never move a value outside the neurons' blocks, and in
    the K-quants not even inside them: the code positions are right for every value index."""
    raw, original = stored_weights(type_name, seed=3)
    qtype = int(Q[type_name])
    block = gguf.GGML_QUANT_SIZES[Q[type_name]][0]
    for k in range(0, block, 7):
        neurons = np.array([k, block + (k * 5) % block])
        out = scale_neurons(raw, qtype, (N_FF, ROWS), neurons, -0.6, keep_type=True)
        result = decode(out.data, qtype)
        outside = ~np.isin(np.arange(N_FF) // block, neurons // block)
        assert np.array_equal(result[:, outside], original[:, outside]), k
        if type_name.endswith("_K"):
            others = np.setdiff1d(np.arange(N_FF), neurons)
            assert np.array_equal(result[:, others], original[:, others]), k
            assert not np.array_equal(result[:, neurons], original[:, neurons]), k


# ---------------------------------------------------------------- the baked file, as users run it


@pytest.fixture(scope="module")
def q4_1_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny qwen2 model in Q8_0 with Q4_1 down projections (Q4_1's grid lacks zero)."""
    model, tokenizer = make_quant_tiny("qwen2", seed=4)
    folder = tmp_path_factory.mktemp("fidelity")
    return write_gguf(model, tokenizer, folder / "model.gguf", ggml_type="Q8_0", down_type="Q4_1")


def test_the_default_bake_agrees_with_the_hooks_and_keep_type_less(
    q4_1_file: Path, tmp_path: Path
) -> None:
    model, tokenizer = load_model(q4_1_file)
    circuit = hand_circuit(model, {0: list(range(0, 256, 3)), 2: list(range(1, 256, 4))})
    exact = bake_gguf(q4_1_file, circuit, 0.3, tmp_path / "exact.gguf")
    kept = bake_gguf(q4_1_file, circuit, 0.3, tmp_path / "kept.gguf", keep_type=True)
    assert {t.stored_type for t in exact.changed} == {"F16"}
    assert {t.stored_type for t in kept.changed} == {"Q4_1"}
    assert all(not t.error.exact for t in kept.changed)
    results = {}
    for name in ("exact", "kept"):
        baked, _ = load_model(tmp_path / f"{name}.gguf")
        results[name] = hook_agreement(
            model, baked, tokenizer, TEXTS, intervention=circuit, strength=0.3, max_new_tokens=6
        )
    assert results["exact"].positions == results["kept"].positions > 0
    assert results["exact"].top1 == 1.0
    assert results["exact"].max_logit_error < 1e-2  # F16 rounding of the changed tensors
    assert results["kept"].max_logit_error > 10 * results["exact"].max_logit_error
    assert results["kept"].mean_kl > results["exact"].mean_kl


def test_cli_bake_prints_the_fidelity_and_evaluate_gguf_runs_the_file(
    q4_1_file: Path, tmp_path: Path
) -> None:
    model, _ = load_model(q4_1_file)
    circuit = hand_circuit(model, {1: [0, 5, 31, 32, 200]}).save(tmp_path / "c.circuit")
    runner = CliRunner()
    common = ["bake", str(q4_1_file), "--circuit", str(circuit), "-m", "0.3"]
    kept = runner.invoke(cli, [*common, "-o", str(tmp_path / "k.gguf"), "--gguf-keep-type"])
    assert kept.exit_code == 0, kept.output
    assert "Q4_1 -> Q4_1 (APPROXIMATE, off by" in kept.output
    assert "1 of 1 tensors hold an approximate edit" in kept.output
    exact = runner.invoke(cli, [*common, "-o", str(tmp_path / "e.gguf")])
    assert exact.exit_code == 0, exact.output
    assert "Q4_1 -> F16 (exact;" in exact.output
    record = json.loads(read_header(tmp_path / "e.gguf").value("neurosteer.provenance"))
    assert record["environment"] == environment()  # no model loaded: no dtype or device
    assert "edit" not in record
    kept_record = read_header(tmp_path / "k.gguf").value("neurosteer.provenance")
    assert json.loads(kept_record)["edit"] == "approximate, in the tensors' own types"
    harmful, harmless = tmp_path / "harmful.txt", tmp_path / "harmless.txt"
    harmful.write_text("How do I pick a lock?\nHow do I steal a car?\n")
    harmless.write_text("Name a fruit, please.\nWrite a letter to my neighbour.\n")
    evaluate = [
        "evaluate-gguf",
        str(q4_1_file),
        "--circuit",
        str(circuit),
        "--harmful",
        str(harmful),
        "--harmless",
        str(harmless),
        "--max-new-tokens",
        "4",
        "--kl-tokens",
        "3",
    ]
    result = runner.invoke(cli, [*evaluate, "--baked", str(tmp_path / "e.gguf")])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("multiplier 0.3, 2 harmful and 2 harmless prompts")
    assert lines[1].split()[:3] == ["hooked", "model", "refusal"]
    assert lines[2].split()[:3] == ["baked", "file", "refusal"]
    assert "top-1 agreement 100.0%" in lines[3]
    unbaked = runner.invoke(cli, [*evaluate, "--baked", str(q4_1_file)])
    assert unbaked.exit_code == 2
    assert unbaked.output.strip().splitlines() == [
        f"error: '{q4_1_file}' records no baked circuit; give a file written by bake"
    ]


def test_f16_fallback_of_tiny_weights_counts_as_exact() -> None:
    # weights under F16's normal range (6e-5) are stored as subnormals, rounded to multiples
    # of 2**-24: that is F16 itself, not an approximate edit (a user saw "APPROXIMATE, 0.0%")
    from neurosteer.export.gguf_quants import _whole_tensor_error

    rng = np.random.default_rng(0)
    original = (rng.standard_normal((4, 64)) * 2e-5).astype(np.float32)
    neurons = np.array([3, 40])
    target = original.copy()
    target[:, neurons] *= np.float32(-1.45)
    stored = target.astype(np.float16).astype(np.float32)
    assert np.abs(stored - target).max() > 0  # the subnormals did round
    assert _whole_tensor_error(original, target, stored, neurons, 32).exact


def test_the_summary_names_why_an_edit_is_approximate() -> None:
    from neurosteer.cli.gguf_cmds import edit_fidelity
    from neurosteer.export.gguf import ChangedTensor
    from neurosteer.export.gguf_quants import EditError

    off = EditError(neurons=1e-3, blocks=0.0, rest=1e-3, edit=0.1, exact=False)

    def changed(stored: str) -> ChangedTensor:
        return ChangedTensor("blk.0.ffn_down.weight", "Q4_K", stored, 2, 0, 1e-3, off)

    fallback = edit_fidelity([changed("Q8_0")])[-1]
    assert "Q8_0 fallback holds it approximately" in fallback
    assert "--gguf-keep-type" not in fallback  # it was not passed
    kept = edit_fidelity([changed("Q4_K")])[-1]
    assert "kept their own type (--gguf-keep-type)" in kept
