"""`discover` keeps what the neuron browser needs: the prompts and each circuit neuron's
last-token activation on every one of them, in the prompts' order, whether read from the one
pass or recorded by a second one, and saved with the circuit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_models import make_tiny
from transformers import PreTrainedModel, PreTrainedTokenizerFast

import neurosteer.methods.discovery
from neurosteer import Circuit, discover
from neurosteer.methods.discovery import neutral_prompts
from neurosteer.methods.discovery_record import DiscoveryRecord

Model = tuple[PreTrainedModel, PreTrainedTokenizerFast]
NEUTRAL = neutral_prompts()[:8]


def _discover(model: Model, positive: list[str], negative: list[str], **kw: object) -> Circuit:
    return discover(*model, positive, negative, top_k=10, neutral=NEUTRAL, **kw)  # type: ignore[arg-type]


def _record(circuit: Circuit) -> DiscoveryRecord:
    assert circuit.discovery is not None
    assert circuit.discovery.activations is not None
    return circuit.discovery


@pytest.fixture(scope="module")
def gpt2() -> Model:
    """A second family (Conv1D sites, no chat template) beside the llama."""
    return make_tiny("gpt2")


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_the_kept_activations_average_to_the_circuit_means(
    tiny_llama: Model,
    gpt2: Model,
    positive_prompts: list[str],
    negative_prompts: list[str],
    family: str,
) -> None:
    circuit = _discover(
        tiny_llama if family == "llama" else gpt2,
        positive_prompts,
        negative_prompts,
        keep_table=True,
    )
    record = _record(circuit)
    assert record.prompts == {"positive": tuple(positive_prompts),
                              "negative": tuple(negative_prompts)}  # fmt: skip
    assert record.activations is not None
    pos, neg = record.activations["positive"], record.activations["negative"]
    assert pos.shape == (10, len(positive_prompts))
    assert neg.shape == (10, len(negative_prompts))
    torch.testing.assert_close(pos.mean(dim=1), circuit.positive_mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(neg.mean(dim=1), circuit.negative_mean, rtol=1e-4, atol=1e-5)
    assert record.standardized is not None
    expected = circuit.scores("standardized")[circuit.layers, circuit.neurons]
    assert torch.equal(record.standardized, expected)
    assert bool((torch.sign(record.standardized) == torch.sign(circuit.delta)).all())


def test_each_column_belongs_to_its_prompt(
    tiny_llama: Model, positive_prompts: list[str], negative_prompts: list[str]
) -> None:
    # Batches run longest first; shuffling the prompts must shuffle the columns the same way.
    order = [3, 0, 7, 5, 1, 6, 2, 4]
    plain = _record(_discover(tiny_llama, positive_prompts, negative_prompts))
    shuffled = _record(
        _discover(tiny_llama, [positive_prompts[i] for i in order], negative_prompts)
    )
    assert plain.activations is not None
    assert shuffled.activations is not None
    moved = plain.activations["positive"][:, order]
    torch.testing.assert_close(shuffled.activations["positive"], moved, rtol=1e-4, atol=1e-5)
    # and the prompts differ from one another, so a wrong column would show
    spread = plain.activations["positive"].std(dim=1)
    assert bool((spread > 1e-3).all())


def test_a_second_pass_records_the_same_activations(
    tiny_llama: Model,
    positive_prompts: list[str],
    negative_prompts: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    one_pass = _record(_discover(tiny_llama, positive_prompts, negative_prompts))
    monkeypatch.setattr(neurosteer.methods.discovery, "KEEP_IN_PASS_BYTES", 0)
    two_pass = _record(_discover(tiny_llama, positive_prompts, negative_prompts, batch_size=3))
    assert one_pass.activations is not None
    assert two_pass.activations is not None
    for name in ("positive", "negative"):
        torch.testing.assert_close(
            two_pass.activations[name], one_pass.activations[name], rtol=1e-4, atol=1e-5
        )


def test_the_record_is_saved_and_can_be_left_out(
    tiny_llama: Model, positive_prompts: list[str], negative_prompts: list[str], tmp_path: Path
) -> None:
    circuit = _discover(tiny_llama, positive_prompts, negative_prompts)
    loaded = _record(Circuit.load(circuit.save(tmp_path / "c")))
    assert loaded.activations is not None
    assert torch.equal(loaded.activations["negative"], _record(circuit).activations["negative"])  # type: ignore[index]
    bare = _discover(tiny_llama, positive_prompts, negative_prompts, keep_activations=False)
    assert bare.discovery is None
    assert torch.equal(bare.neurons, circuit.neurons)
