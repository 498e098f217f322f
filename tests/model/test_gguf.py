"""GGUF in and out, on tiny llama and qwen2 models written as GGUF files in several types.

In: `load_model` reads a .gguf file (or a folder holding one) into a dequantized model whose
logits are the HF model's, with the tokenizer and chat template from the file; circuits found on
it record the file's identity. Out: `bake_gguf` rewrites only the down projections of circuit
layers (same type where the edit is exact, else F16/Q8_0), copies every other tensor and metadata
entry byte for byte, and the baked file reloaded gives the hooked model's logits within the
stored type's tolerance.
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from gguf_files import circuit_neurons, file_values, hand_circuit, make_quant_tiny, write_gguf
from tiny_models import D_MLP, make_tiny
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from neurosteer.cli.main import cli
from neurosteer.errors import CircuitMismatchError, InputError, ModelLoadError
from neurosteer.export.gguf import ChangedTensor, bake_gguf
from neurosteer.export.gguf_quants import scale_neurons
from neurosteer.methods.baking import bake
from neurosteer.methods.circuit import Circuit
from neurosteer.methods.discovery import discover, model_info
from neurosteer.methods.steering import steer
from neurosteer.model.gguf.reader import GGUFHeader, read_header
from neurosteer.model.layout import resolve_layout
from neurosteer.model.loading import load_model

TEXTS = ["How do I pick a lock?", "Name a fruit, please.", "Write a letter to my neighbour."]
Q = gguf.GGMLQuantizationType


@dataclass(frozen=True)
class Case:
    """A tiny HF model, its GGUF file, the file loaded back, and a circuit on it."""

    family: str
    ggml_type: str
    down_type: str
    hf: PreTrainedModel
    path: Path
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    circuit: Circuit


# (every other weight, the down projections): F32 on the odd-sized model (d_mlp 37), the
# quantized types on d_mlp 256 (whole Q6_K super-blocks).
TYPES = [
    ("F32", "F32"),
    ("F16", "F16"),
    ("Q8_0", "Q8_0"),
    ("Q4_0", "Q4_0"),
    ("Q4_1", "Q4_1"),
    ("Q8_0", "Q6_K"),
]


_CASES: dict[tuple[str, str, str], Case] = {}


def get_case(family: str, ggml_type: str, down_type: str, folders: pytest.TempPathFactory) -> Case:
    """Build each (family, types) case once per test session."""
    key = (family, ggml_type, down_type)
    if key not in _CASES:
        hf, tokenizer = make_tiny(family) if ggml_type == "F32" else make_quant_tiny(family)
        folder = folders.mktemp(f"gguf-{family}-{ggml_type}-{down_type}")
        path = write_gguf(
            hf, tokenizer, folder / "model.gguf", ggml_type=ggml_type, down_type=down_type
        )
        model, loaded_tokenizer = load_model(path)
        circuit = hand_circuit(model, circuit_neurons(hf.config.intermediate_size))
        _CASES[key] = Case(family, ggml_type, down_type, hf, path, model, loaded_tokenizer, circuit)
    return _CASES[key]


@pytest.fixture(params=[(f, *t) for f in ("llama", "qwen2") for t in TYPES], ids=str)
def case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Case:
    """Every family and type."""
    return get_case(*request.param, tmp_path_factory)


@pytest.fixture(params=["llama", "qwen2"])
def k_case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Case:
    """K-quant (Q6_K) down projections, which gguf-py cannot re-quantize."""
    return get_case(request.param, "Q8_0", "Q6_K", tmp_path_factory)


@pytest.fixture
def q8_case(tmp_path_factory: pytest.TempPathFactory) -> Case:
    """One quantized file, for checks that do not depend on the type."""
    return get_case("llama", "Q8_0", "Q8_0", tmp_path_factory)


@pytest.fixture
def f16_case(tmp_path_factory: pytest.TempPathFactory) -> Case:
    return get_case("qwen2", "F16", "F16", tmp_path_factory)


def token_ids(tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    """[3, T] equal-length rows of real text (cut to the shortest), no padding."""
    rows = [tokenizer.encode(text, add_special_tokens=False) for text in TEXTS]
    length = min(map(len, rows))
    return torch.tensor([row[:length] for row in rows])


def logits(model: PreTrainedModel, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=ids).logits.float()


def raw_tensor(header: GGUFHeader, name: str) -> bytes:
    info = header.tensor(name)
    assert info is not None
    start = header.data_offset + info.offset
    with header.path.open("rb") as f:
        f.seek(start)
        return f.read(info.nbytes())


def raw_entry(header: GGUFHeader, key: str) -> bytes:
    entry = header.metadata[key]
    with header.path.open("rb") as f:
        f.seek(entry.start)
        return f.read(entry.end - entry.start)


# ---------------------------------------------------------------- reading the header


def test_header_matches_gguf_py(case: Case) -> None:
    header = read_header(case.path)
    reader = gguf.GGUFReader(case.path)
    assert header.data_offset == reader.data_offset
    assert header.architecture == case.family
    assert [t.name for t in header.tensors] == [t.name for t in reader.tensors]
    for ours, theirs in zip(header.tensors, reader.tensors, strict=True):
        assert ours.shape == tuple(int(n) for n in theirs.shape)
        assert ours.ggml_type == int(theirs.tensor_type)
        assert header.data_offset + ours.offset == int(theirs.data_offset)
        assert ours.nbytes() == int(theirs.n_bytes)
    assert list(header.metadata) == [k for k in reader.fields if not k.startswith("GGUF.")]


def test_not_a_gguf_file(tmp_path: Path) -> None:
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04" + bytes(40))
    with pytest.raises(InputError, match="not a GGUF file"):
        read_header(bad)
    with pytest.raises(InputError, match="not a GGUF file"):
        load_model(bad)


def test_truncated_gguf_file(tmp_path: Path) -> None:
    model, tokenizer = make_tiny("qwen2")
    whole = write_gguf(model, tokenizer, tmp_path / "whole.gguf").read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(whole[:2000])
    with pytest.raises(InputError, match="truncated"):
        read_header(cut)


def test_identity_names_header_and_index(tmp_path: Path) -> None:
    model, tokenizer = make_tiny("llama")
    one = write_gguf(model, tokenizer, tmp_path / "a.gguf")
    same = write_gguf(model, tokenizer, tmp_path / "b.gguf")
    renamed = write_gguf(model, tokenizer, tmp_path / "c.gguf", name="another name")
    f16 = write_gguf(model, tokenizer, tmp_path / "d.gguf", ggml_type="F16")
    ids = [read_header(p).identity() for p in (one, same, renamed, f16)]
    assert ids[0].name == "a.gguf"
    assert ids[0].size == one.stat().st_size
    assert ids[0].header_sha256 == ids[1].header_sha256  # same content, another file name
    assert len({i.header_sha256 for i in (ids[0], ids[2], ids[3])}) == 3


# ---------------------------------------------------------------- GGUF in


def test_load_gives_the_files_values(case: Case) -> None:
    """Names, orientation and llama's Q/K permutation all undone: the logits are those of the
    HF model holding the file's (dequantized) values, and F32 files give the HF model's own."""
    ids = token_ids(case.tokenizer)
    reference = copy.deepcopy(case.hf)
    file_values(reference, case.ggml_type, case.down_type)
    assert torch.allclose(logits(case.model, ids), logits(reference, ids), atol=1e-4, rtol=0)
    if case.ggml_type == "F32":
        assert torch.allclose(logits(case.model, ids), logits(case.hf, ids), atol=1e-4, rtol=0)
    assert case.model.dtype == torch.float32
    assert not case.model.training


def test_loaded_tokenizer_comes_from_the_file(case: Case) -> None:
    tokenizer = case.tokenizer
    assert "<|assistant|>" in str(tokenizer.chat_template)
    assert tokenizer.padding_side == "left"
    assert (tokenizer.pad_token, tokenizer.eos_token, tokenizer.bos_token) == (
        "<pad>",
        "<eos>",
        "<bos>",
    )
    reference = make_tiny("llama")[1]
    text = "Write a letter to my neighbour."
    assert tokenizer.encode(text, add_special_tokens=False) == reference.encode(
        text, add_special_tokens=False
    )


def test_layout_resolves_as_for_the_hf_model(case: Case) -> None:
    ours, theirs = resolve_layout(case.model), resolve_layout(case.hf)
    assert ours == theirs
    hf_circuit = hand_circuit(case.hf, circuit_neurons(theirs.d_mlp))
    hf_circuit.check_fits(ours)  # a circuit found on the HF model fits the GGUF one
    case.circuit.check_fits(theirs)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_load_in_requested_dtype(tmp_path: Path, dtype: str) -> None:
    model, tokenizer = make_tiny("qwen2")
    path = write_gguf(model, tokenizer, tmp_path / "m.gguf")
    loaded, _ = load_model(path, dtype=dtype)
    assert loaded.dtype == getattr(torch, dtype)


def test_folder_holding_one_gguf(tmp_path: Path) -> None:
    model, tokenizer = make_tiny("llama")
    write_gguf(model, tokenizer, tmp_path / "only.gguf")
    loaded, _ = load_model(tmp_path)
    assert loaded.config.model_type == "llama"
    assert loaded.config._name_or_path == str(tmp_path / "only.gguf")


def test_folder_holding_two_ggufs(tmp_path: Path) -> None:
    model, tokenizer = make_tiny("llama")
    write_gguf(model, tokenizer, tmp_path / "a.gguf")
    write_gguf(model, tokenizer, tmp_path / "b.gguf")
    with pytest.raises(InputError, match=r"several GGUF files \(a\.gguf, b\.gguf\)"):
        load_model(tmp_path)


def test_split_gguf_is_refused(tmp_path: Path) -> None:
    part = tmp_path / "model-00001-of-00002.gguf"
    part.write_bytes(b"GGUF")
    with pytest.raises(InputError, match="split GGUF"):
        load_model(part)


def test_gguf_cannot_be_offloaded(tmp_path: Path) -> None:
    model, tokenizer = make_tiny("llama")
    path = write_gguf(model, tokenizer, tmp_path / "m.gguf")
    with pytest.raises(InputError, match="offloaded to disk"):
        load_model(path, device_map="auto", offload_folder=tmp_path / "off")


def test_missing_gguf_package_gives_install_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, tokenizer = make_tiny("llama")
    path = write_gguf(model, tokenizer, tmp_path / "m.gguf")
    monkeypatch.setitem(sys.modules, "gguf", None)  # `import gguf` now raises ImportError
    with pytest.raises(ModelLoadError, match=r"^GGUF support needs the gguf package: pip install"):
        load_model(path)


def test_unsupported_architecture(tmp_path: Path) -> None:
    model, tokenizer = make_tiny("llama")
    path = write_gguf(model, tokenizer, tmp_path / "m.gguf")
    data = path.read_bytes()
    # same length as "llama", so the rest of the file stays valid
    path.write_bytes(
        data.replace(b"\x05\x00\x00\x00\x00\x00\x00\x00llama", b"\x05" + bytes(7) + b"zzzzz", 1)
    )
    with pytest.raises(ModelLoadError, match="architecture 'zzzzz'"):
        load_model(path)


def test_discovered_circuit_records_the_file(
    k_case: Case, tmp_path: Path, positive_prompts: list[str], negative_prompts: list[str]
) -> None:
    case = k_case
    circuit = discover(case.model, case.tokenizer, positive_prompts, negative_prompts, top_k=5)
    identity = read_header(case.path).identity()
    assert circuit.model.file == identity
    assert circuit.model.name_or_path == str(case.path)
    loaded = Circuit.load(circuit.save(tmp_path / "c.circuit"))
    assert loaded.model == circuit.model
    loaded.check_fits(resolve_layout(case.model))


def test_hf_circuits_have_no_file(
    tiny_llama: tuple[PreTrainedModel, PreTrainedTokenizerBase],
) -> None:
    model, _ = tiny_llama
    assert model_info(model, resolve_layout(model)).file is None


# ---------------------------------------------------------------- GGUF out


@pytest.mark.parametrize("multiplier", [0.0, -1.0, 2.0])
def test_bake_matches_hooks_and_copies_the_rest(
    case: Case, tmp_path: Path, multiplier: float
) -> None:
    out = tmp_path / "steered.gguf"
    report = bake_gguf(case.path, case.circuit, multiplier, out)
    source, baked = read_header(case.path), read_header(out)

    changed = {f"blk.{layer}.ffn_down.weight" for layer in case.circuit.neurons_per_layer()}
    assert {t.name for t in report.changed} == changed
    assert report.copied == len(source.tensors) - len(changed)
    for tensor in source.tensors:
        if tensor.name not in changed:
            assert raw_tensor(baked, tensor.name) == raw_tensor(source, tensor.name), tensor.name
    for key in source.metadata:
        assert raw_entry(baked, key) == raw_entry(source, key), key
    assert baked.value("neurosteer.multiplier") == multiplier
    assert '"multiplier"' in baked.value("neurosteer.provenance")
    assert [t.name for t in baked.tensors] == [t.name for t in source.tensors]

    # Weights: all but the changed tensors bit-identical after reloading; the changed ones hold
    # the steered values to within the error the report gives.
    reloaded, _ = load_model(out)
    target = copy.deepcopy(case.model)
    bake(target, case.circuit, multiplier)
    errors = {
        f"model.layers.{t.name.split('.')[1]}.mlp.down_proj.weight": t.max_error
        for t in report.changed
    }
    for (name, got), expected in zip(reloaded.named_parameters(), target.parameters(), strict=True):
        if name in errors:
            assert (got - expected).abs().max().item() <= errors[name] + 1e-6, name
        else:
            assert torch.equal(got, expected), name

    # Logits: those of the hooked model, within what storing the steered weights in the stored
    # types does to them (float rounding only when every change was exact).
    ids = token_ids(case.tokenizer)
    with steer(case.model, case.circuit, multiplier):
        hooked = logits(case.model, ids)
    fresh = _stored_afresh(target, report.changed)
    allowed = max(1e-4, 2 * (logits(fresh, ids) - hooked).abs().max().item())
    error = (logits(reloaded, ids) - hooked).abs().max().item()
    assert error <= allowed, (error, allowed, [(t.name, t.stored_type) for t in report.changed])


def _stored_afresh(model: PreTrainedModel, changed: tuple[ChangedTensor, ...]) -> PreTrainedModel:
    """A copy whose changed down projections are quantized anew, whole, in their stored type
    (an exact edit kept in its own type holds the steered values themselves)."""
    fresh = copy.deepcopy(model)
    sites = resolve_layout(fresh).site_modules(fresh)
    with torch.no_grad():
        for tensor in changed:
            if tensor.error.exact and tensor.stored_type == tensor.source_type:
                continue
            weight = sites[int(tensor.name.split(".")[1])].weight
            stored = Q[tensor.stored_type]
            data = np.asarray(gguf.quants.quantize(weight.numpy(), stored))
            values = gguf.quants.dequantize(data, stored).reshape(weight.shape)
            weight.copy_(torch.from_numpy(np.ascontiguousarray(values)))
    return fresh


def _halves(circuit: Circuit) -> tuple[Circuit, Circuit]:
    half = len(circuit) // 2
    parts = (slice(None, half), slice(half, None))
    fields = ("layers", "neurons", "delta", "positive_mean", "negative_mean")
    return tuple(  # type: ignore[return-value]
        replace(circuit, **{f: getattr(circuit, f)[part] for f in fields}) for part in parts
    )


def test_bake_takes_several_circuits_like_steer(f16_case: Case, tmp_path: Path) -> None:
    """Two circuits baked at once write what the one circuit they split from writes."""
    case = f16_case
    first, second = _halves(case.circuit)
    assert len(first) > 0
    assert len(second) > 0
    whole = bake_gguf(case.path, case.circuit, 0.0, tmp_path / "whole.gguf")
    split = bake_gguf(case.path, [first, second], 0.0, tmp_path / "split.gguf")
    assert [t.name for t in split.changed] == [t.name for t in whole.changed]
    for tensor in whole.changed:
        assert raw_tensor(read_header(split.path), tensor.name) == raw_tensor(
            read_header(whole.path), tensor.name
        )
    # None takes the circuit's default strength (m = 0 for a circuit).
    default = bake_gguf(case.path, case.circuit, None, tmp_path / "default.gguf")
    assert read_header(default.path).value("neurosteer.multiplier") == 0.0
    with pytest.raises(InputError, match="share neurons"):
        bake_gguf(case.path, [case.circuit, first], 0.0, tmp_path / "overlap.gguf")
    assert not (tmp_path / "overlap.gguf").exists()


def test_bake_keeps_the_type_where_the_edit_is_exact(case: Case, tmp_path: Path) -> None:
    """m = 0: floats scale exactly, and so do the block types whose grid holds zero (the
    neuron's code set to it: Q8_0, Q4_0, Q6_K); Q4_1's grid (q·d + min) holds zero only by
    chance, so its tensors are kept only where every neuron landed exactly, else F16."""
    report = bake_gguf(case.path, case.circuit, 0.0, tmp_path / "zero.gguf")
    stored = {t.stored_type for t in report.changed}
    assert all(t.error.exact for t in report.changed)
    if case.down_type in ("F32", "F16", "Q8_0", "Q4_0", "Q6_K"):
        assert stored == {case.down_type}
        assert all(t.max_error == 0.0 for t in report.changed)
    else:
        assert stored <= {case.down_type, "F16"}
    if case.down_type in ("Q8_0", "Q4_0", "Q6_K"):
        assert all(t.requantized_blocks > 0 for t in report.changed)


def test_bake_multiplier_one_changes_no_tensor(q8_case: Case, tmp_path: Path) -> None:
    case = q8_case
    out = tmp_path / "same.gguf"
    report = bake_gguf(case.path, case.circuit, 1.0, out)
    assert report.changed == ()
    source, baked = read_header(case.path), read_header(out)
    for tensor in source.tensors:
        assert raw_tensor(baked, tensor.name) == raw_tensor(source, tensor.name)


def test_bake_q8_0_fallback(k_case: Case, tmp_path: Path) -> None:
    case = k_case
    # m = 0.5 halves Q6_K codes, which its grid holds only for even codes: not exact
    report = bake_gguf(case.path, case.circuit, 0.5, tmp_path / "q8.gguf", fallback="Q8_0")
    assert {t.stored_type for t in report.changed} == {"Q8_0"}
    assert load_model(tmp_path / "q8.gguf")[0].config.model_type == case.family


def test_baking_a_baked_file_replaces_the_provenance(f16_case: Case, tmp_path: Path) -> None:
    case = f16_case
    first = tmp_path / "once.gguf"
    bake_gguf(case.path, case.circuit, 0.0, first)
    second = tmp_path / "twice.gguf"
    with pytest.raises(CircuitMismatchError, match="already has this circuit baked"):
        bake_gguf(first, case.circuit, 0.5, second)  # its neurons would be scaled twice
    another = hand_circuit(case.model, {2: [1, 4]})
    bake_gguf(first, another, 0.5, second)
    header = read_header(second)
    assert len(header.metadata) == len(read_header(first).metadata)
    assert header.value("neurosteer.multiplier") == 0.5


def test_bake_peak_memory_is_about_one_tensor(k_case: Case, tmp_path: Path) -> None:
    """The F16 fallback holds the most: the raw tensor, its float32 values and the result."""
    case = k_case
    report = bake_gguf(case.path, case.circuit, 0.0, tmp_path / "p.gguf")
    header = read_header(case.path)
    down = header.tensor("blk.1.ffn_down.weight")
    assert down is not None
    values = down.shape[0] * down.shape[1]
    assert 0 < report.peak_bytes <= down.nbytes() + 4 * values + 2 * values
    assert report.peak_bytes < sum(t.nbytes() for t in header.tensors) / 2


def test_bake_refuses_circuits_that_do_not_fit(q8_case: Case, tmp_path: Path) -> None:
    case = q8_case
    other = "qwen2" if case.family == "llama" else "llama"
    wrong_family = replace(case.circuit, model=replace(case.circuit.model, model_type=other))
    with pytest.raises(CircuitMismatchError, match="neuron indices do not carry over"):
        bake_gguf(case.path, wrong_family, 0.0, tmp_path / "a.gguf")
    wrong_shape = replace(case.circuit, model=replace(case.circuit.model, d_mlp=D_MLP))
    with pytest.raises(CircuitMismatchError, match="does not fit"):
        bake_gguf(case.path, wrong_shape, 0.0, tmp_path / "b.gguf")
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_bake_refuses_bad_outputs(f16_case: Case, tmp_path: Path) -> None:
    case = f16_case
    existing = tmp_path / "exists.gguf"
    existing.write_bytes(b"keep")
    with pytest.raises(InputError, match="already exists"):
        bake_gguf(case.path, case.circuit, 0.0, existing)
    assert existing.read_bytes() == b"keep"
    with pytest.raises(InputError, match="overwrite the input"):
        bake_gguf(case.path, case.circuit, 0.0, case.path, force=True)
    with pytest.raises(InputError, match="finite"):
        bake_gguf(case.path, case.circuit, float("nan"), tmp_path / "n.gguf")
    with pytest.raises(InputError, match="overflow F16"):
        bake_gguf(case.path, case.circuit, 1e9, tmp_path / "big.gguf")
    with pytest.raises(InputError, match="unknown fallback type 'Q4_K'"):
        bake_gguf(case.path, case.circuit, 0.0, tmp_path / "q.gguf", fallback="Q4_K")  # type: ignore[arg-type]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists.gguf"]


# ---------------------------------------------------------------- the re-quantization rule


def quantized(values: np.ndarray, type_name: str) -> np.ndarray:
    return np.asarray(gguf.quants.quantize(values, Q[type_name])).view(np.uint8).reshape(-1)


def decoded(data: np.ndarray, ggml_type: int, rows: int) -> np.ndarray:
    return gguf.quants.dequantize(data.reshape(rows, -1), Q(ggml_type)).reshape(rows, -1)


# the rule for every block type, exact and kept: tests/export/test_gguf_fidelity.py


@pytest.mark.parametrize(
    ("type_name", "multiplier"),
    [("Q8_0", 0.0), ("Q4_0", 0.0), ("Q5_0", 0.0), ("Q4_1", 0.5), ("Q5_1", 0.5), ("Q8_0", -0.7)],
)
def test_setting_a_code_keeps_the_rest_of_the_block(type_name: str, multiplier: float) -> None:
    """Within a block, only the neuron's code changes: its other 31 values stay exactly as they
    were, and the neuron lands on the nearest point of the block's grid (exactly 0 for m = 0 on
    the symmetric types; with keep_type where that is not the exact edit)."""
    weights = np.random.default_rng(11).normal(size=(9, 64)).astype(np.float32)
    raw = quantized(weights, type_name)
    before = decoded(raw, int(Q[type_name]), 9)
    neurons = np.array([4, 17, 40])
    out = scale_neurons(raw, int(Q[type_name]), (64, 9), neurons, multiplier, keep_type=True)
    assert out.ggml_type == int(Q[type_name])
    after = decoded(out.data, out.ggml_type, 9)
    others = np.setdiff1d(np.arange(64), neurons)
    assert np.array_equal(after[:, others], before[:, others])
    step = np.abs(raw.reshape(9, 2, -1)[..., :2].copy().view(np.float16).astype(np.float32))
    nearest = 0.5 * step[:, neurons // 32, 0] + 1e-6
    assert (np.abs(after[:, neurons] - before[:, neurons] * multiplier) <= nearest).all()
    if multiplier == 0.0:
        assert (after[:, neurons] == 0).all()


def test_amplifying_a_blocks_largest_value_falls_back() -> None:
    weights = np.full((2, 32), 0.1, dtype=np.float32)
    weights[:, 3] = 1.0  # the largest value of its block: m = 3 triples the block's step
    raw = quantized(weights, "Q8_0")
    out = scale_neurons(raw, int(Q.Q8_0), (32, 2), np.array([3]), 3.0)
    assert out.ggml_type == int(Q.F16)
    kept = scale_neurons(raw, int(Q.Q8_0), (32, 2), np.array([3]), 0.0)
    assert kept.ggml_type == int(Q.Q8_0)
    assert kept.max_error == 0.0


@pytest.mark.parametrize("type_name", ["F32", "F16", "BF16"])
def test_float_types_scale_only_the_neurons(type_name: str) -> None:
    weights = np.random.default_rng(3).normal(size=(5, 37)).astype(np.float32)
    raw = quantized(weights, type_name)
    out = scale_neurons(raw, int(Q[type_name]), (37, 5), np.array([0, 36]), -0.5)
    assert out.ggml_type == int(Q[type_name])
    before, after = decoded(raw, out.ggml_type, 5), decoded(out.data, out.ggml_type, 5)
    assert np.array_equal(after[:, 1:36], before[:, 1:36])
    assert np.array_equal(after[:, [0, 36]], before[:, [0, 36]] * -0.5)


def test_unknown_fallback() -> None:
    raw = quantized(np.zeros((1, 32), dtype=np.float32), "Q8_0")
    with pytest.raises(InputError, match="unknown fallback"):
        scale_neurons(raw, int(Q.Q8_0), (32, 1), np.array([0]), 0.0, fallback="Q4_K")  # type: ignore[arg-type]


# ---------------------------------------------------------------- the command line


def test_cli_bake_and_generate_with_a_gguf(q8_case: Case, tmp_path: Path) -> None:
    case = q8_case
    circuit = case.circuit.save(tmp_path / "c.circuit")
    out = tmp_path / "steered.gguf"
    runner = CliRunner()
    result = runner.invoke(
        cli, ["bake", str(case.path), "--circuit", str(circuit), "-m", "0", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "blk.1.ffn_down.weight" in result.output
    assert out.is_file()
    result = runner.invoke(cli, ["generate", str(out), "Hello", "--max-new-tokens", "3"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        cli, ["bake", str(case.path), "--circuit", str(circuit), "-o", str(tmp_path / "plain")]
    )
    assert result.exit_code == 2
    expected = (
        f"a GGUF model is baked into a .gguf file; name the output e.g. {tmp_path}/plain.gguf"
    )
    assert result.output.strip().splitlines() == [f"error: {expected}"]
