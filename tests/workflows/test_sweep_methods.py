"""A sweep's fitted methods: each is an `Intervention` bound to the sweep's options, errors stay
in the project's hierarchy, and the run folder's vectors file is the contrast-vector format."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from neurosteer import (
    CAA,
    Circuit,
    ContrastVectors,
    DirectionAblation,
    InputError,
    Intervention,
    NeurosteerError,
    contrast_vectors,
    discover,
    resolve_layout,
)
from neurosteer.interventions.protocol import Bound
from neurosteer.methods.contrast import load_vectors
from neurosteer.workflows.judges import get_judge
from neurosteer.workflows.sweep.config import SweepConfig
from neurosteer.workflows.sweep.methods import Fitted, fit_methods
from neurosteer.workflows.sweep.store import VECTORS_FILE

Pair = tuple[PreTrainedModel, PreTrainedTokenizerFast]


@pytest.fixture(scope="module")
def parts(
    tiny_llama: Pair, positive_prompts: list[str], negative_prompts: list[str]
) -> tuple[Circuit, ContrastVectors]:
    model, tokenizer = tiny_llama
    circuit = discover(
        model, tokenizer, positive_prompts, negative_prompts, top_k=4, universal_filter=False
    )
    return circuit, contrast_vectors(model, tokenizer, positive_prompts, negative_prompts)


def test_fitted_methods_are_bound_interventions(
    parts: tuple[Circuit, ContrastVectors], tiny_llama: Pair
) -> None:
    circuit, residual = parts
    model, _ = tiny_llama
    layout = resolve_layout(model)
    fitted = Fitted(
        circuit=circuit,
        caa=CAA.fit(residual, layer=2),
        direction=DirectionAblation.fit(residual, layer=1),
        random={3: circuit.random_like(3)},
        caa_positions="prompt",
    )
    for method, seed, inner in [
        ("cna", None, circuit),
        ("random", 3, fitted.random[3]),
        ("caa", None, fitted.caa),
        ("direction", None, fitted.direction),
    ]:
        bound = fitted.intervention(method, seed, layout=layout)
        assert isinstance(bound, Bound)
        assert isinstance(bound, Intervention)
        assert bound.intervention is inner
        assert bound.layout is layout
        with bound.steer(model, 0.5) as handle:
            assert handle.positions == ("prompt" if method == "caa" else "all")
            assert handle.strength == 0.5


@pytest.mark.parametrize(
    ("method", "seed", "message"),
    [
        ("mlp_output", None, "was not fitted"),
        ("caa", None, "was not fitted"),
        ("steer", None, "was not fitted"),
        ("random", 7, "seed 7"),
        ("random", None, "seed None"),
    ],
)
def test_a_method_that_was_not_fitted_is_an_input_error(
    parts: tuple[Circuit, ContrastVectors], method: str, seed: int | None, message: str
) -> None:
    circuit, _ = parts
    fitted = Fitted(circuit=circuit, random={0: circuit.random_like(0)})
    with pytest.raises(InputError, match=message) as caught:
        fitted.intervention(method, seed)
    assert isinstance(caught.value, NeurosteerError)
    assert not isinstance(caught.value, KeyError)


def _fit(tiny_llama: Pair, run_dir: Path, positive: list[str], negative: list[str]) -> Fitted:
    model, tokenizer = tiny_llama
    config = SweepConfig(
        methods=("caa", "mlp_output"),
        strengths=(1.0,),
        top_k=4,
        universal_filter=False,
        layer_scan_prompts=0,
        caa_positions="prompt",
    )
    return fit_methods(
        model,
        tokenizer,
        config,
        positive,
        negative,
        run_dir,
        judge=get_judge("sweep"),
        layout=resolve_layout(model),
    )


def test_the_run_folder_keeps_its_vectors_in_the_versioned_format(
    tiny_llama: Pair, tmp_path: Path, positive_prompts: list[str], negative_prompts: list[str]
) -> None:
    fitted = _fit(tiny_llama, tmp_path, positive_prompts, negative_prompts)
    stored = load_vectors(tmp_path / VECTORS_FILE)
    assert set(stored) == {"residual", "mlp_output"}
    for point, vectors in stored.items():
        assert vectors.model is not None  # the model it was recorded on, config hash included
        assert torch.equal(vectors.positive_mean, fitted.vectors[point].positive_mean)
    assert fitted.caa is not None
    assert fitted.caa_positions == "prompt"

    # resuming reads them back; vectors of another model are refused with what to do
    again = _fit(tiny_llama, tmp_path, positive_prompts, negative_prompts)
    assert torch.equal(again.vectors["residual"].delta, fitted.vectors["residual"].delta)
    residual = stored["residual"]
    assert residual.model is not None
    foreign = dataclasses.replace(
        residual, model=dataclasses.replace(residual.model, config_hash="f" * 64)
    )
    foreign.save(tmp_path / VECTORS_FILE, force=True)
    with pytest.raises(InputError, match="new run folder"):
        _fit(tiny_llama, tmp_path, positive_prompts, negative_prompts)
