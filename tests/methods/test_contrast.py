"""Contrast vectors are an artifact with a versioned file: round trip, the recorded model, old
sweep files, refusals that say what to do."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from neurosteer import ContrastVectors, InputError, contrast_vectors, resolve_layout
from neurosteer.methods.contrast import FORMAT_VERSION, load_vectors, save_vectors
from neurosteer.methods.discovery import model_info

Pair = tuple[PreTrainedModel, PreTrainedTokenizerFast]


@pytest.fixture(scope="module")
def both(
    tiny_llama: Pair, positive_prompts: list[str], negative_prompts: list[str]
) -> tuple[ContrastVectors, ContrastVectors]:
    model, tokenizer = tiny_llama
    return (
        contrast_vectors(model, tokenizer, positive_prompts, negative_prompts),
        contrast_vectors(model, tokenizer, positive_prompts, negative_prompts, point="mlp_output"),
    )


def _same(a: ContrastVectors, b: ContrastVectors) -> None:
    assert (a.point, a.model) == (b.point, b.model)
    for key in ("positive_mean", "negative_mean", "mean_norm"):
        assert torch.equal(getattr(a, key), getattr(b, key)), key


def test_vectors_record_the_model_and_round_trip(
    both: tuple[ContrastVectors, ContrastVectors], tiny_llama: Pair, tmp_path: Path
) -> None:
    residual, mlp = both
    model, _ = tiny_llama
    info = model_info(model, resolve_layout(model))
    assert residual.model == info  # config hash included, computed as for a circuit
    assert residual.model is not None
    assert residual.model.config_hash == info.config_hash

    one = residual.save(tmp_path / "residual.safetensors")
    _same(ContrastVectors.load(one), residual)
    _same(ContrastVectors.load(one, "residual"), residual)

    two = save_vectors(tmp_path / "both.safetensors", [residual, mlp])
    loaded = load_vectors(two)
    assert list(loaded) == ["residual", "mlp_output"]
    _same(loaded["residual"], residual)
    _same(loaded["mlp_output"], mlp)
    _same(ContrastVectors.load(two, "mlp_output"), mlp)
    with pytest.raises(InputError, match="name one of them"):
        ContrastVectors.load(two)
    with pytest.raises(InputError, match="name one of them"):
        ContrastVectors.load(one, "mlp_output")


def test_existing_files_are_replaced_only_with_force(
    both: tuple[ContrastVectors, ContrastVectors], tmp_path: Path
) -> None:
    residual, mlp = both
    file = residual.save(tmp_path / "v.safetensors")
    with pytest.raises(InputError, match="already exists"):
        mlp.save(file)
    assert ContrastVectors.load(file).point == "residual"
    mlp.save(file, force=True)
    assert ContrastVectors.load(file).point == "mlp_output"
    with pytest.raises(InputError, match="does not exist"):
        residual.save(tmp_path / "missing-folder" / "v.safetensors")
    with pytest.raises(InputError, match="two residual"):
        save_vectors(tmp_path / "twice.safetensors", [residual, residual])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.safetensors"]  # nothing staged


def test_an_old_sweep_file_without_a_format_still_loads(
    both: tuple[ContrastVectors, ContrastVectors], tmp_path: Path
) -> None:
    """What sweeps wrote before the vectors had a format: bare tensors, no metadata."""
    residual, mlp = both
    old = tmp_path / "vectors.safetensors"
    tensors = {}
    for v in (residual, mlp):
        for key in ("positive_mean", "negative_mean", "mean_norm"):
            tensors[f"{v.point}.{key}"] = getattr(v, key).contiguous()
    save_file(tensors, str(old))
    loaded = load_vectors(old)
    assert set(loaded) == {"residual", "mlp_output"}
    _same(loaded["residual"], dataclasses.replace(residual, model=None))
    assert loaded["mlp_output"].model is None


def test_unreadable_files_are_input_errors_that_say_what_to_do(
    both: tuple[ContrastVectors, ContrastVectors], tmp_path: Path
) -> None:
    residual, _ = both
    with pytest.raises(InputError, match="does not exist"):
        load_vectors(tmp_path / "nothing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(InputError, match="not a readable safetensors"):
        load_vectors(junk)

    file = residual.save(tmp_path / "v.safetensors")
    tensors = load_file(str(file))
    newer = tmp_path / "newer.safetensors"
    meta = {"format": "neurosteer.contrast_vectors", "format_version": str(FORMAT_VERSION + 1)}
    save_file(tensors, str(newer), metadata=meta | {"points": '{"residual": null}'})
    with pytest.raises(InputError, match="upgrade neurosteer"):
        load_vectors(newer)
    other = tmp_path / "other.safetensors"
    save_file(tensors, str(other), metadata={"format": "something.else"})
    with pytest.raises(InputError, match="not contrast vectors"):
        load_vectors(other)
    torn = tmp_path / "torn.safetensors"
    save_file(
        {"residual.positive_mean": tensors["residual.positive_mean"]},
        str(torn),
        metadata=meta | {"format_version": str(FORMAT_VERSION), "points": '{"residual": null}'},
    )
    with pytest.raises(InputError, match="missing the tensor"):
        load_vectors(torn)


def test_vectors_of_another_model_do_not_fit(
    both: tuple[ContrastVectors, ContrastVectors], tiny_llama: Pair
) -> None:
    residual, _ = both
    model, _ = tiny_llama
    info = model_info(model, resolve_layout(model))
    residual.check_fits(info)  # its own model
    dataclasses.replace(residual, model=None).check_fits(info)  # unknown model: shape only
    with pytest.raises(InputError, match="recorded on"):
        residual.check_fits(dataclasses.replace(info, config_hash="0" * 64))
    with pytest.raises(InputError, match="record them on this model"):
        residual.check_fits(dataclasses.replace(info, d_model=info.d_model + 1))


def test_the_layer_is_checked_once_for_every_baseline(
    both: tuple[ContrastVectors, ContrastVectors],
) -> None:
    residual, _ = both
    n_layers = residual.delta.shape[0]
    assert residual.checked_layer(None) == residual.default_layer()
    assert residual.checked_layer(n_layers - 1) == n_layers - 1
    for bad in (-1, n_layers):
        with pytest.raises(InputError, match="out of range"):
            residual.checked_layer(bad)
