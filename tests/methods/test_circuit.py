"""The circuit artifact: file format round trip, atomic writes, format errors, shape checks,
per-layer views, re-selection from the kept table and random controls."""

from __future__ import annotations

import json
import os
import stat
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch
from tiny_models import D_MLP, N_LAYERS
from transformers import PreTrainedModel, PreTrainedTokenizerFast

import neurosteer.methods.circuit
from neurosteer import Circuit, CircuitFormatError, CircuitMismatchError, InputError, discover
from neurosteer.methods.circuit import FORMAT_VERSION, METADATA_FILE, TENSORS_FILE
from neurosteer.methods.discovery import neutral_prompts
from neurosteer.methods.selection import layer_mask
from neurosteer.model.layout import resolve_layout

Model = tuple[PreTrainedModel, PreTrainedTokenizerFast]
NEUTRAL = neutral_prompts()[:8]
TENSOR_FIELDS = ("layers", "neurons", "delta", "positive_mean", "negative_mean")


@pytest.fixture(scope="module")
def with_table(
    tiny_llama: Model, positive_prompts: list[str], negative_prompts: list[str]
) -> Circuit:
    """A 12-neuron circuit on the tiny llama, full table kept."""
    model, tokenizer = tiny_llama
    return discover(
        model,
        tokenizer,
        positive_prompts,
        negative_prompts,
        top_k=12,
        neutral=NEUTRAL,
        keep_table=True,
    )


@pytest.fixture(scope="module")
def without_table(with_table: Circuit) -> Circuit:
    return replace(with_table, table=None)


def _assert_same(a: Circuit, b: Circuit) -> None:
    for name in TENSOR_FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype, name
        assert torch.equal(x, y), name
    assert a.model == b.model
    assert a.settings == b.settings
    assert a.prompts == b.prompts
    assert a.library_version == b.library_version
    assert (a.universal is None) == (b.universal is None)
    if a.universal is not None and b.universal is not None:
        assert torch.equal(a.universal, b.universal)
    assert (a.table is None) == (b.table is None)
    if a.table is not None and b.table is not None:
        for key, value in asdict(a.table).items():
            assert torch.equal(value, getattr(b.table, key)), key


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# --- file format -----------------------------------------------------------------------------


@pytest.mark.parametrize("keep", [True, False])
def test_round_trip(
    with_table: Circuit, without_table: Circuit, tmp_path: Path, keep: bool
) -> None:
    circuit = with_table if keep else without_table
    path = circuit.save(tmp_path / "refusal.circuit")
    assert path == tmp_path / "refusal.circuit"
    assert sorted(p.name for p in path.iterdir()) == sorted([METADATA_FILE, TENSORS_FILE])
    loaded = Circuit.load(path)
    _assert_same(circuit, loaded)
    assert loaded.settings.skip_layers == (0, 1)  # a tuple again, not a JSON list
    assert loaded.layers.dtype == torch.int64
    assert loaded.delta.dtype == torch.float32
    assert _leftovers(tmp_path) == []


def test_metadata_file(with_table: Circuit, tmp_path: Path) -> None:
    path = with_table.save(tmp_path / "c")
    meta = json.loads((path / METADATA_FILE).read_text())
    assert meta["format"] == "neurosteer.circuit"
    assert meta["format_version"] == FORMAT_VERSION
    assert meta["n_neurons"] == 12
    assert meta["has_table"] is True
    assert meta["model"]["model_type"] == "llama"
    assert meta["settings"]["top_k"] == 12
    assert set(meta["prompts"]) == {"positive", "negative", "neutral"}
    assert {int(k): v for k, v in meta["neurons_per_layer"].items()} == (
        with_table.neurons_per_layer()
    )
    tensors = safetensors.torch.load_file(str(path / TENSORS_FILE))
    assert tensors["table.positive_mean"].shape == (N_LAYERS, D_MLP)
    assert tensors["table.universal"].dtype == torch.bool


def test_saved_folder_has_ordinary_permissions(without_table: Circuit, tmp_path: Path) -> None:
    # The atomic write goes through a private temp folder; the result must still get the
    # permissions a plain mkdir gives (umask applies), so other users/servers can read it.
    umask = os.umask(0o022)
    os.umask(umask)
    path = without_table.save(tmp_path / "c")
    assert stat.S_IMODE(path.stat().st_mode) == 0o777 & ~umask


def test_saving_twice_is_byte_identical(with_table: Circuit, tmp_path: Path) -> None:
    a, b = with_table.save(tmp_path / "a"), with_table.save(tmp_path / "b")
    for name in (METADATA_FILE, TENSORS_FILE):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    # and a loaded copy saves to the same bytes again
    c = Circuit.load(a).save(tmp_path / "c")
    for name in (METADATA_FILE, TENSORS_FILE):
        assert (a / name).read_bytes() == (c / name).read_bytes(), name


def test_refuses_existing_path_without_force(without_table: Circuit, tmp_path: Path) -> None:
    target = tmp_path / "c"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="already exists"):
        without_table.save(target)
    assert (target / "keep.txt").read_text() == "mine"
    assert _leftovers(tmp_path) == []


def test_replaces_with_force(with_table: Circuit, without_table: Circuit, tmp_path: Path) -> None:
    target = with_table.save(tmp_path / "c")
    (target / "stray.txt").write_text("old")
    without_table.save(target, force=True)
    assert sorted(p.name for p in target.iterdir()) == sorted([METADATA_FILE, TENSORS_FILE])
    assert Circuit.load(target).table is None
    assert _leftovers(tmp_path) == []


def test_missing_parent_folder(without_table: Circuit, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        without_table.save(tmp_path / "no" / "such" / "c")


def _failing_save_file(*_args: Any, **_kwargs: Any) -> None:
    raise OSError("disk full (simulated)")


def test_failed_write_leaves_nothing(
    without_table: Circuit, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # circuit.py imports save_file by name; patch it where it is used, and at the source too
    monkeypatch.setattr(neurosteer.methods.circuit, "save_file", _failing_save_file)
    monkeypatch.setattr(safetensors.torch, "save_file", _failing_save_file)
    target = tmp_path / "c"
    with pytest.raises(OSError, match="disk full"):
        without_table.save(target)
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_failed_forced_write_keeps_the_old_circuit(
    with_table: Circuit, without_table: Circuit, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = with_table.save(tmp_path / "c")
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    monkeypatch.setattr(neurosteer.methods.circuit, "save_file", _failing_save_file)
    with pytest.raises(OSError, match="disk full"):
        without_table.save(target, force=True)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["c"]


# --- loading errors --------------------------------------------------------------------------


def test_load_missing_folder(tmp_path: Path) -> None:
    # a discover that did not finish leaves no folder: say so, not "not a circuit folder"
    with pytest.raises(CircuitFormatError, match=r"'.*nope' does not exist; check the path"):
        Circuit.load(tmp_path / "nope")


def test_load_folder_that_is_not_a_circuit(tiny_llama_dir: Path) -> None:
    with pytest.raises(CircuitFormatError, match="not a circuit folder"):
        Circuit.load(tiny_llama_dir)


def test_load_without_tensors(without_table: Circuit, tmp_path: Path) -> None:
    path = without_table.save(tmp_path / "c")
    (path / TENSORS_FILE).unlink()
    with pytest.raises(CircuitFormatError, match="not a circuit folder"):
        Circuit.load(path)


def test_load_corrupt_json(without_table: Circuit, tmp_path: Path) -> None:
    path = without_table.save(tmp_path / "c")
    (path / METADATA_FILE).write_text('{"format": "neurosteer.circuit", ')
    with pytest.raises(CircuitFormatError, match="corrupt"):
        Circuit.load(path)


def test_load_corrupt_tensors(without_table: Circuit, tmp_path: Path) -> None:
    path = without_table.save(tmp_path / "c")
    (path / TENSORS_FILE).write_bytes(b"\x00\x01not safetensors")
    with pytest.raises(CircuitFormatError, match="corrupt"):
        Circuit.load(path)


@pytest.mark.parametrize("version", [FORMAT_VERSION + 1, 0, None, "1"])
def test_load_other_format_version(without_table: Circuit, tmp_path: Path, version: Any) -> None:
    path = without_table.save(tmp_path / "c")
    meta = json.loads((path / METADATA_FILE).read_text())
    meta["format_version"] = version
    (path / METADATA_FILE).write_text(json.dumps(meta))
    with pytest.raises(CircuitFormatError, match="format version") as info:
        Circuit.load(path)
    assert f"reads version {FORMAT_VERSION}" in str(info.value)


def test_load_missing_field(without_table: Circuit, tmp_path: Path) -> None:
    path = without_table.save(tmp_path / "c")
    meta = json.loads((path / METADATA_FILE).read_text())
    del meta["model"]
    (path / METADATA_FILE).write_text(json.dumps(meta))
    with pytest.raises(CircuitFormatError, match="missing a field"):
        Circuit.load(path)


# --- fitting a model -------------------------------------------------------------------------


def test_check_fits_its_own_model(without_table: Circuit, tiny_llama: Model) -> None:
    without_table.check_fits(resolve_layout(tiny_llama[0]))


@pytest.mark.parametrize(("n_layers", "d_mlp"), [(N_LAYERS + 2, D_MLP), (N_LAYERS, D_MLP + 4)])
def test_check_fits_other_shape(
    without_table: Circuit, tiny_llama: Model, n_layers: int, d_mlp: int
) -> None:
    other = replace(resolve_layout(tiny_llama[0]), model_type="qwen2", n_layers=n_layers)
    other = replace(other, d_mlp=d_mlp)
    with pytest.raises(CircuitMismatchError) as info:
        without_table.check_fits(other)
    message = str(info.value)
    assert f"{N_LAYERS} layers x {D_MLP} neurons" in message
    assert f"{n_layers} layers x {d_mlp} neurons" in message
    assert "does not fit" in message
    assert "discover a circuit on this model" in message


def test_check_fits_indices_outside_the_model(without_table: Circuit, tiny_llama: Model) -> None:
    broken = replace(without_table, neurons=without_table.neurons + D_MLP)
    with pytest.raises(
        CircuitMismatchError,
        match=r"holds neuron \d+ of layer \d+, which has \d+ neurons.*discover it again",
    ):
        broken.check_fits(resolve_layout(tiny_llama[0]))


# --- per-layer views -------------------------------------------------------------------------


def _handmade(without_table: Circuit) -> Circuit:
    return replace(
        without_table,
        layers=torch.tensor([3, 2, 3, 3, 2]),
        neurons=torch.tensor([30, 5, 2, 17, 36]),
        delta=torch.zeros(5),
        positive_mean=torch.zeros(5),
        negative_mean=torch.zeros(5),
    )


def test_neurons_per_layer_and_by_layer(without_table: Circuit) -> None:
    circuit = _handmade(without_table)
    assert len(circuit) == 5
    assert circuit.neurons_per_layer() == {2: 2, 3: 3}
    by_layer = circuit.by_layer()
    assert list(by_layer) == [2, 3]
    assert by_layer[2].tolist() == [5, 36]
    assert by_layer[3].tolist() == [2, 17, 30]  # sorted
    assert all(v.dtype == torch.int64 for v in by_layer.values())


def test_views_of_a_discovered_circuit(with_table: Circuit) -> None:
    per_layer = with_table.neurons_per_layer()
    assert sum(per_layer.values()) == len(with_table) == 12
    assert all(n > 0 for n in per_layer.values())
    by_layer = with_table.by_layer()
    assert {layer: len(idx) for layer, idx in by_layer.items()} == per_layer
    pairs = {(layer, int(n)) for layer, idx in by_layer.items() for n in idx}
    assert pairs == set(zip(with_table.layers.tolist(), with_table.neurons.tolist(), strict=True))


# --- reselect, random_like -------------------------------------------------------------------


@pytest.mark.parametrize(
    "change", [{"top_k": 5}, {"top_k": 30}, {"top_k": 6, "positive_only": True}]
)
def test_reselect_equals_fresh_discovery(
    with_table: Circuit,
    tiny_llama: Model,
    positive_prompts: list[str],
    negative_prompts: list[str],
    change: dict[str, Any],
) -> None:
    model, tokenizer = tiny_llama
    fresh = discover(
        model,
        tokenizer,
        positive_prompts,
        negative_prompts,
        neutral=NEUTRAL,
        keep_table=True,
        **change,
    )
    again = with_table.reselect(**change)
    _assert_same(fresh, again)


def test_reselect_by_fraction(with_table: Circuit) -> None:
    again = with_table.reselect(fraction=0.1)
    assert len(again) == round(0.1 * N_LAYERS * D_MLP)
    assert again.settings.top_k is None
    assert again.settings.fraction == 0.1


def test_reselect_needs_the_table(without_table: Circuit) -> None:
    with pytest.raises(InputError, match="keep_table"):
        without_table.reselect(top_k=3)


def test_reselect_too_many(with_table: Circuit) -> None:
    with pytest.raises(InputError, match="only"):
        with_table.reselect(top_k=2 * D_MLP + 1)


def test_random_like_same_size_and_layers(with_table: Circuit) -> None:
    control = with_table.random_like(seed=1)
    assert len(control) == len(with_table)
    assert control.neurons_per_layer() == with_table.neurons_per_layer()
    assert control.settings.method == "random"
    assert control.settings.seed == 1
    assert control.table is None
    assert control.layers.dtype == control.neurons.dtype == torch.int64
    assert int(control.neurons.max()) < D_MLP
    for idx in control.by_layer().values():
        assert len(set(idx.tolist())) == len(idx)  # no neuron twice in a layer
    assert with_table.settings.method == "cna"  # the original is untouched


def test_random_like_is_seeded(with_table: Circuit) -> None:
    def pairs(c: Circuit) -> set[tuple[int, int]]:
        return set(zip(c.layers.tolist(), c.neurons.tolist(), strict=True))

    a, b = with_table.random_like(seed=3), with_table.random_like(seed=3)
    assert torch.equal(a.layers, b.layers)
    assert torch.equal(a.neurons, b.neurons)
    c = with_table.random_like(seed=4)
    assert pairs(a) != pairs(c)


def test_random_like_across_candidate_layers(with_table: Circuit) -> None:
    control = with_table.random_like(seed=0, per_layer=False)
    assert len(control) == len(with_table)
    assert set(control.layers.tolist()) <= {2, 3}
    pairs = set(zip(control.layers.tolist(), control.neurons.tolist(), strict=True))
    assert len(pairs) == len(control)
    assert control.settings.method == "random"


def test_random_like_round_trips(with_table: Circuit, tmp_path: Path) -> None:
    control = with_table.random_like(seed=7)
    _assert_same(control, Circuit.load(control.save(tmp_path / "random.circuit")))


# --- random controls: exact size, never universal neurons --------------------------------------


def _pairs(c: Circuit) -> set[tuple[int, int]]:
    return set(zip(c.layers.tolist(), c.neurons.tolist(), strict=True))


def test_discovery_records_the_universal_neurons(
    tiny_llama: Model, positive_prompts: list[str], negative_prompts: list[str], tmp_path: Path
) -> None:
    model, tokenizer = tiny_llama
    # one neutral prompt, repeated: its top neuron is "universal" on every prompt
    kwargs = {"top_k": 6, "neutral": ["Name a fruit."] * 5}
    kept = discover(model, tokenizer, positive_prompts, negative_prompts, keep_table=True, **kwargs)
    circuit = discover(model, tokenizer, positive_prompts, negative_prompts, **kwargs)
    assert kept.table is not None
    assert circuit.table is None
    assert circuit.universal is not None
    assert circuit.universal.shape == (N_LAYERS, D_MLP)
    assert torch.equal(circuit.universal, kept.table.universal)
    assert circuit.universal.any()
    path = circuit.save(tmp_path / "c")
    tensors = safetensors.torch.load_file(str(path / TENSORS_FILE))
    assert "table.universal" not in tensors
    layers, neurons = tensors["universal.layers"].tolist(), tensors["universal.neurons"].tolist()
    stored = zip(layers, neurons, strict=True)
    assert set(stored) == {tuple(ix) for ix in circuit.universal.nonzero().tolist()}
    loaded = Circuit.load(path)
    assert loaded.universal is not None
    assert torch.equal(loaded.universal, circuit.universal)
    off = discover(
        model, tokenizer, positive_prompts, negative_prompts, top_k=6, universal_filter=False
    )
    assert off.universal is not None
    assert not off.universal.any()  # recorded as "none", not as "unknown"


def test_files_without_universal_neurons_still_load(
    without_table: Circuit, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = without_table.save(tmp_path / "old")
    tensor_file = path / TENSORS_FILE
    tensors = safetensors.torch.load_file(str(tensor_file))
    kept = {k: v for k, v in tensors.items() if not k.startswith("universal")}
    safetensors.torch.save_file(kept, str(tensor_file))
    old = Circuit.load(path)
    assert old.universal is None
    assert old.universal_mask() is None
    with caplog.at_level("WARNING", logger="neurosteer.methods.circuit"):
        control = old.random_like(seed=0)
    assert "universal" in caplog.text
    assert len(control) == len(old)


def test_candidates_and_scores_of_a_discovered_circuit(
    with_table: Circuit, without_table: Circuit, tmp_path: Path
) -> None:
    table = with_table.table
    assert table is not None
    info, skip = with_table.model, with_table.settings.skip_layers
    in_layers = layer_mask(info.n_layers, info.d_mlp, skip)
    candidates = with_table.candidates()
    assert torch.equal(candidates, in_layers & ~table.universal)
    assert int(candidates.sum()) == with_table.settings.n_candidates
    assert with_table.settings.universal_removed == int((in_layers & table.universal).sum())
    # its scores are the table's at its neurons
    at = (with_table.layers, with_table.neurons)
    assert torch.equal(with_table.delta, table.delta[at])
    assert torch.equal(with_table.positive_mean, table.positive_mean[at])
    assert torch.equal(with_table.negative_mean, table.negative_mean[at])
    # a file that recorded no universal neurons: the candidate layers
    path = without_table.save(tmp_path / "old")
    tensors = safetensors.torch.load_file(str(path / TENSORS_FILE))
    kept = {k: v for k, v in tensors.items() if not k.startswith("universal")}
    safetensors.torch.save_file(kept, str(path / TENSORS_FILE))
    assert torch.equal(Circuit.load(path).candidates(), in_layers)


def _every_other_is_universal(circuit: Circuit) -> torch.Tensor:
    """[n_layers, d_mlp] bool: odd neurons are universal (about half of every layer)."""
    mask = torch.zeros(N_LAYERS, D_MLP, dtype=torch.bool)
    mask[:, 1::2] = True
    mask[circuit.layers, circuit.neurons] = False  # a circuit holds no universal neurons
    return mask


@pytest.mark.parametrize("per_layer", [True, False])
@pytest.mark.parametrize("source", ["recorded", "table"])
def test_random_like_never_draws_universal_neurons(
    with_table: Circuit, per_layer: bool, source: str
) -> None:
    assert with_table.table is not None
    mask = _every_other_is_universal(with_table)
    if source == "recorded":
        circuit = replace(with_table, universal=mask, table=None)
    else:  # an older file with a table and no separate record
        circuit = replace(
            with_table, universal=None, table=replace(with_table.table, universal=mask)
        )
    for seed in range(5):
        control = circuit.random_like(seed=seed, per_layer=per_layer)
        assert len(control) == len(circuit)
        assert not mask[control.layers, control.neurons].any()
        assert not _pairs(control) & _pairs(circuit)
        assert control.universal is not None
        assert torch.equal(control.universal, mask)  # kept, for controls of controls


def test_random_like_takes_the_whole_pool_when_it_is_just_large_enough(
    with_table: Circuit,
) -> None:
    """Exactly len(circuit) free candidates: the control is all of them; one fewer: an error."""
    candidates = torch.zeros(N_LAYERS, D_MLP, dtype=torch.bool)
    candidates[2:] = True  # skip_layers = (0, 1)
    candidates[with_table.layers, with_table.neurons] = False
    free = candidates.nonzero()[: len(with_table)]
    universal = candidates.clone()
    universal[free[:, 0], free[:, 1]] = False
    circuit = replace(with_table, universal=universal, table=None)
    control = circuit.random_like(seed=0, per_layer=False)
    assert _pairs(control) == {tuple(ix) for ix in free.tolist()}
    universal[free[0, 0], free[0, 1]] = True
    with pytest.raises(InputError, match=r"only 11 neurons.*random control of 12"):
        replace(circuit, universal=universal).random_like(seed=0, per_layer=False)


@pytest.mark.parametrize("per_layer", [True, False])
def test_random_like_refuses_a_pool_too_small(with_table: Circuit, per_layer: bool) -> None:
    """A circuit filling most of its candidate layers leaves too few neurons for a control:
    an error, never a smaller control (per_layer=False) or one overlapping the circuit."""
    big = with_table.reselect(top_k=50)  # of 74 candidates in layers 2 and 3
    assert len(big) == 50
    assert max(big.neurons_per_layer().values()) > D_MLP // 2
    with pytest.raises(InputError, match="too few"):
        big.random_like(seed=0, per_layer=per_layer)
