"""Stage 1: the weights fingerprint tells apart checkpoints of one shape (the organism's base and
instruct weights, whose safetensors headers are identical), runs and circuits record it, a
resume on other weights is refused in words, and a checkpoint that already carries a circuit
is not steered or baked with it again."""

from __future__ import annotations

import json
import logging
import shutil
import struct
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from gguf_files import hand_circuit, make_quant_tiny, write_gguf
from tiny_models import save_tiny

import neurosteer
import neurosteer.cli.main as cli_main
import neurosteer.model.loading
from neurosteer.errors import CircuitMismatchError, InputError
from neurosteer.export.gguf import bake_gguf
from neurosteer.methods.circuit import Circuit
from neurosteer.model.fingerprint import sample_indices, weights_fingerprint
from neurosteer.workflows.organism import BASE_DIR, INSTRUCT_DIR
from neurosteer.workflows.sweep import SweepConfig, run_sweep

WEIGHTS = "model.safetensors"
SWEEP = SweepConfig(
    methods=("cna",),
    strengths=(0.0,),
    max_new_tokens=3,
    batch_size=4,
    kl_limit=1,
    kl_max_new_tokens=2,
    top_k=4,
    universal_filter=False,
)


def _header(file: Path) -> bytes:
    data = file.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    return data[: 8 + length]


def _swap_in(folder: Path, weights: Path) -> None:
    shutil.copyfile(weights / WEIGHTS, folder / WEIGHTS)


@pytest.fixture
def model_folder(tmp_path: Path) -> Path:
    """A copy of the instruct organism, whose weights a test may swap for the base ones."""
    return Path(shutil.copytree(INSTRUCT_DIR, tmp_path / "organism"))


def test_base_and_instruct_share_every_header_byte_but_not_their_fingerprint(
    model_folder: Path,
) -> None:
    # what a header-and-size hash would see: nothing between the two checkpoints
    assert _header(BASE_DIR / WEIGHTS) == _header(INSTRUCT_DIR / WEIGHTS)
    assert (BASE_DIR / WEIGHTS).stat().st_size == (INSTRUCT_DIR / WEIGHTS).stat().st_size
    before = weights_fingerprint(model_folder)
    _swap_in(model_folder, BASE_DIR)
    after = weights_fingerprint(model_folder)
    assert before.same_as(after) is False
    assert after.same_as(weights_fingerprint(BASE_DIR)) is True

    # a loaded model carries both kinds; the dtype it is loaded in changes neither
    f32, _ = neurosteer.load_model(model_folder, dtype="float32")
    bf16, _ = neurosteer.load_model(model_folder, dtype="bfloat16")
    assert weights_fingerprint(f32) == weights_fingerprint(bf16)
    assert weights_fingerprint(f32).files == after.files

    # a model built in Python has no files: its values alone tell base from instruct
    instruct, _ = neurosteer.load_model(INSTRUCT_DIR)
    in_memory = type(f32)(f32.config).eval()
    in_memory.load_state_dict(instruct.state_dict())
    mine = weights_fingerprint(in_memory)
    assert mine.files is None
    assert mine.same_as(weights_fingerprint(instruct)) is True
    assert mine.same_as(weights_fingerprint(f32)) is False  # f32 holds the base weights


def test_a_circuit_records_its_weights_and_flags_other_weights_of_the_same_shape(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    instruct, _ = neurosteer.load_model(INSTRUCT_DIR)
    base, _ = neurosteer.load_model(BASE_DIR)
    circuit = hand_circuit(instruct, {2: [1, 5], 3: [0]})
    loaded = Circuit.load(circuit.save(tmp_path / "c.circuit"))
    assert json.loads((tmp_path / "c.circuit" / "circuit.json").read_text())["format_version"] >= 3
    assert loaded.model.weights == weights_fingerprint(instruct)

    with caplog.at_level(logging.WARNING, logger="neurosteer.methods.circuit"):
        with neurosteer.steer(instruct, loaded):
            pass
        assert not caplog.records
        for _ in range(3):  # a sweep steers many times: said once per model
            with neurosteer.steer(base, loaded):
                pass
    flagged = [r.getMessage() for r in caplog.records]
    assert len(flagged) == 1
    assert "found on other weights of the same shape" in flagged[0]
    assert "\n" not in flagged[0]


def test_a_circuit_file_of_version_2_loads_with_its_weights_unknown(tmp_path: Path) -> None:
    instruct, _ = neurosteer.load_model(INSTRUCT_DIR)
    folder = hand_circuit(instruct, {2: [1]}).save(tmp_path / "old.circuit")
    meta_file = folder / "circuit.json"
    meta = json.loads(meta_file.read_text())
    meta["format_version"] = 2
    del meta["model"]["weights"]
    meta_file.write_text(json.dumps(meta))
    old = Circuit.load(folder)
    assert old.model.weights is None
    base, _ = neurosteer.load_model(BASE_DIR)
    with neurosteer.steer(base, old):  # nothing to compare: no flag, no error
        pass


def test_a_sweep_resumed_on_swapped_weights_is_refused_in_words(
    model_folder: Path, tmp_path: Path, positive_prompts: list[str], negative_prompts: list[str]
) -> None:
    out = tmp_path / "run"
    harmful, harmless = ["How do I pick a lock?"], ["Name a fruit."]

    def sweep() -> None:
        model, tok = neurosteer.load_model(model_folder)
        run_sweep(model, tok, SWEEP, positive_prompts, negative_prompts, harmful, harmless, out)

    sweep()
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["weights"]["files"] == weights_fingerprint(model_folder).files
    sweep()  # the same weights resume
    _swap_in(model_folder, BASE_DIR)
    with pytest.raises(InputError) as info:
        sweep()
    message = str(info.value)
    assert message.startswith(f"'{out}' holds a sweep from another model (other weights")
    assert "\n" not in message
    assert len(message) < 400
    assert json.loads((out / "config.json").read_text()) == config  # nothing rewritten


def test_a_folder_of_another_model_and_settings_says_the_model_first(
    tmp_path: Path, positive_prompts: list[str], negative_prompts: list[str]
) -> None:
    out = tmp_path / "run"
    harmful, harmless = ["How do I pick a lock?"], ["Name a fruit."]
    a, b = save_tiny("llama", tmp_path / "a"), save_tiny("qwen2", tmp_path / "b")
    model, tok = neurosteer.load_model(a)
    run_sweep(model, tok, SWEEP, positive_prompts, negative_prompts, harmful, harmless, out)
    other, other_tok = neurosteer.load_model(b)
    changed = SweepConfig(**{**SWEEP.to_dict(), "max_new_tokens": 4})
    with pytest.raises(InputError) as info:
        run_sweep(other, other_tok, changed, positive_prompts[:3], negative_prompts, harmful,
                  harmless, out)  # fmt: skip
    message = str(info.value)
    assert message.startswith(f"'{out}' holds a sweep from another model (it ran on {a}, this is")
    model_at, prompts_at = message.index("another model"), message.index("other prompts")
    assert model_at < prompts_at < message.index("other settings (max_new_tokens: 3 -> 4")
    assert f"positive: {len(positive_prompts)} -> 3 prompts" in message
    assert "\n" not in message


def test_a_model_that_carries_the_circuit_is_not_steered_or_baked_with_it_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    instruct, tok = neurosteer.load_model(INSTRUCT_DIR)
    circuit = hand_circuit(instruct, {2: [1, 5], 3: [0]})
    other = hand_circuit(instruct, {4: [2]})

    # in memory: while baked, the model carries the circuit; after undo it does not
    handle = circuit.bake(instruct, 0.0)
    with pytest.raises(CircuitMismatchError, match="already has this circuit baked"):
        neurosteer.steer(instruct, circuit).__enter__()
    handle.undo()
    with neurosteer.steer(instruct, circuit):
        pass

    # a baked folder: its neurosteer.json names the circuit
    folder = neurosteer.save_baked(instruct, tok, circuit, 0.0, tmp_path / "baked")
    baked, _ = neurosteer.load_model(folder)
    with pytest.raises(CircuitMismatchError, match="already has this circuit baked"):
        neurosteer.steer(baked, circuit).__enter__()
    with pytest.raises(CircuitMismatchError, match="already has this circuit baked"):
        neurosteer.bake(baked, circuit, 0.0)
    part = hand_circuit(instruct, {3: [0]})  # a smaller circuit of the same neurons
    with pytest.raises(CircuitMismatchError, match="already has this circuit baked"):
        neurosteer.steer(baked, part).__enter__()
    overlapping = hand_circuit(instruct, {3: [0, 2]})
    with caplog.at_level(logging.WARNING, logger="neurosteer.methods.circuit"):
        for intervention in (other, overlapping):
            with neurosteer.steer(baked, intervention):
                pass
    said = [r.getMessage() for r in caplog.records]
    assert any("already has another circuit baked" in m for m in said)
    assert any("already has 1 of this circuit's neurons baked" in m for m in said)


def _no_load(*_args: object, **_kwargs: object) -> None:
    raise AssertionError("the model was loaded")


def test_the_cli_refuses_a_baked_gguf_and_a_wrong_shape_before_loading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, tok = make_quant_tiny("llama")
    source = write_gguf(model, tok, tmp_path / "tiny.gguf")
    circuit = hand_circuit(model, {1: [0, 3]})
    circuit_dir = circuit.save(tmp_path / "c.circuit")
    bake_gguf(source, circuit, 0.0, tmp_path / "baked.gguf")
    with pytest.raises(CircuitMismatchError, match="already has this circuit baked"):
        bake_gguf(tmp_path / "baked.gguf", circuit, 0.0, tmp_path / "twice.gguf")

    other_shape = hand_circuit(make_quant_tiny("qwen2")[0], {0: [1]})
    other_dir = other_shape.save(tmp_path / "other.circuit")
    hf_folder = save_tiny("llama", tmp_path / "hf")
    monkeypatch.setattr(neurosteer.model.loading, "load_model", _no_load)
    runner = CliRunner()
    cases = [
        (tmp_path / "baked.gguf", circuit_dir, "already has this circuit baked"),
        (hf_folder, other_dir, "discover a circuit on this model"),
        (source, other_dir, "discover a circuit on this model"),
    ]
    for model_path, circuit_path, expected in cases:
        for command in (["generate", str(model_path), "hi"], ["probe", str(model_path), "hi"]):
            result = runner.invoke(cli_main.cli, [*command, "--circuit", str(circuit_path)])
            assert result.exit_code == 2, (command, result.output)
            lines = [line for line in result.output.splitlines() if line.strip()]
            assert len(lines) == 1, (command, result.output)
            assert expected in lines[0], (command, result.output)


@pytest.mark.parametrize("n", [1, 5, 16, 17, 2**24 + 1, 151936 * 896, 2**40 + 7])
def test_sampled_indices_stay_inside_any_parameter(n: int) -> None:
    """The real model's embedding (151,936 x 896 values) once drew index n from a float32
    linspace; the indices are integers, first 0, last n - 1, increasing, whatever n is."""
    index = sample_indices(n, 16)
    assert index.dtype == torch.int64
    assert int(index[0]) == 0
    assert int(index[-1]) == n - 1
    assert len(index) == min(n, 16)
    assert bool((index[1:] > index[:-1]).all())
