"""Models whose weights accelerate keeps off the execution device (offload hooks, meta
parameters): discovery and steering give the same results; every path that edits or saves
weights (circuit bake, save_baked, the direction-ablation bake, the CLI) refuses clearly and
changes nothing."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from accelerate import cpu_offload
from accelerate.hooks import AlignDevicesHook, SequentialHook
from click.testing import CliRunner
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from neurosteer import (
    Circuit,
    InputError,
    bake,
    discover,
    generate,
    load_model,
    render_prompts,
    resolve_layout,
    save_baked,
    steer,
)
from neurosteer.cli.main import cli
from neurosteer.hooks import count_hooks
from neurosteer.methods.baselines import DirectionAblation
from neurosteer.methods.circuit import CircuitRecipe
from neurosteer.methods.discovery import model_info
from neurosteer.workflows.organism import INSTRUCT_DIR

Pair = tuple[PreTrainedModel, PreTrainedTokenizerFast]


@pytest.fixture(scope="module")
def offloaded(tiny_llama: Pair) -> PreTrainedModel:
    model = copy.deepcopy(tiny_llama[0])
    cpu_offload(model, execution_device=torch.device("cpu"))
    assert model.model.layers[2].mlp.down_proj.weight.device.type == "meta"
    return model


def test_discovery_and_steering_match_on_an_offloaded_model(
    tiny_llama: Pair,
    offloaded: PreTrainedModel,
    positive_prompts: list[str],
    negative_prompts: list[str],
) -> None:
    model, tokenizer = tiny_llama
    here = discover(model, tokenizer, positive_prompts, negative_prompts, top_k=6)
    there = discover(offloaded, tokenizer, positive_prompts, negative_prompts, top_k=6)
    assert torch.equal(here.layers, there.layers)
    assert torch.equal(here.neurons, there.neurons)
    torch.testing.assert_close(here.delta, there.delta)

    rendered = render_prompts(tokenizer, positive_prompts[:3])
    batch = tokenizer(rendered, return_tensors="pt", padding=True, add_special_tokens=False)
    before = count_hooks(offloaded)
    with torch.no_grad():
        with steer(model, here, 0.0):
            expected = model(**batch).logits
        with steer(offloaded, here, 0.0):
            got = offloaded(**batch).logits
    torch.testing.assert_close(got, expected)
    assert count_hooks(offloaded) == before


def test_in_memory_bake_refuses_offloaded_weights(
    tiny_llama: Pair,
    offloaded: PreTrainedModel,
    positive_prompts: list[str],
    negative_prompts: list[str],
) -> None:
    model, tokenizer = tiny_llama
    circuit = discover(model, tokenizer, positive_prompts, negative_prompts, top_k=6)
    with pytest.raises(InputError, match="offloaded"):
        bake(offloaded, circuit, 0.0)


def test_device_map_auto_with_disk_offload(
    tiny_llama_dir: Path,
    positive_prompts: list[str],
    negative_prompts: list[str],
    tmp_path: Path,
) -> None:
    model, tokenizer = load_model(tiny_llama_dir)
    split, _ = load_model(
        tiny_llama_dir, device_map="auto", max_memory={"cpu": "40KB"}, offload_folder=tmp_path
    )
    assert "disk" in set(split.hf_device_map.values())
    here = discover(model, tokenizer, positive_prompts, negative_prompts, top_k=6)
    there = discover(split, tokenizer, positive_prompts, negative_prompts, top_k=6)
    assert torch.equal(here.neurons, there.neurons)
    torch.testing.assert_close(here.delta, there.delta)
    with steer(model, here, 0.0):
        expected = generate(model, tokenizer, positive_prompts[:2], max_new_tokens=5)
    with steer(split, here, 0.0):
        got = generate(split, tokenizer, positive_prompts[:2], max_new_tokens=5)
    assert got == expected
    with pytest.raises(InputError, match="need a device map"):
        load_model(tiny_llama_dir, max_memory={"cpu": "1GB"})


# --- every path that edits or saves weights refuses offloaded ones ------------------------------


def _circuit_on(model: PreTrainedModel, layers: tuple[int, ...]) -> Circuit:
    """Three neurons in each of `layers`, built by hand (no discovery on an offloaded model)."""
    layout = resolve_layout(model)
    layer_idx = torch.tensor([layer for layer in layers for _ in range(3)])
    neurons = torch.tensor([5, 9, 11] * len(layers))

    def zeros() -> torch.Tensor:
        return torch.zeros(len(layer_idx))

    return Circuit(
        layers=layer_idx,
        neurons=neurons,
        delta=zeros(),
        positive_mean=zeros(),
        negative_mean=zeros(),
        model=model_info(model, layout),
        settings=CircuitRecipe(k=len(layer_idx)),
    )


@pytest.fixture(scope="module")
def disk_organism(tmp_path_factory: pytest.TempPathFactory) -> Pair:
    """The organism with every module offloaded to disk (the issue's reproduction)."""
    model, tokenizer = load_model(
        INSTRUCT_DIR,
        device_map="auto",
        max_memory={"cpu": "300KB"},
        offload_folder=tmp_path_factory.mktemp("offload"),
    )
    assert set(model.hf_device_map.values()) == {"disk"}
    return model, tokenizer  # type: ignore[return-value]


@pytest.fixture(scope="module")
def split_organism(tmp_path_factory: pytest.TempPathFactory) -> Pair:
    """The organism with layers 0-1 in memory and layers 2-5 offloaded to disk."""
    model, tokenizer = load_model(
        INSTRUCT_DIR,
        device_map="auto",
        max_memory={"cpu": "4MB"},
        offload_folder=tmp_path_factory.mktemp("offload"),
    )
    assert model.hf_device_map["model.layers.1"] == "cpu"
    assert model.hf_device_map["model.layers.2"] == "disk"
    return model, tokenizer  # type: ignore[return-value]


def _snapshot(model: PreTrainedModel) -> dict[str, tuple[int, str]]:
    return {name: (id(p), p.device.type) for name, p in model.named_parameters()}


@pytest.mark.parametrize("kind", ["cpu_offload", "disk", "split"])
def test_weight_edits_refuse_offloaded_weights_and_change_nothing(
    kind: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    if kind == "cpu_offload":
        model = request.getfixturevalue("offloaded")
        tokenizer = request.getfixturevalue("tiny_llama")[1]
    else:
        model, tokenizer = request.getfixturevalue(f"{kind}_organism")
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    tied, tie_flag = head.weight is embed.weight, model.config.tie_word_embeddings
    before = _snapshot(model)
    circuit = _circuit_on(model, (2, 3))
    direction = torch.nn.functional.normalize(torch.randn(model.config.hidden_size), dim=0)

    with pytest.raises(InputError, match=r"'model\.layers\.2\.mlp\.down_proj\.weight'.*offloaded"):
        bake(model, circuit, 0.0)
    with pytest.raises(InputError, match=r"offloaded.*device_map=None.*--streaming"):
        DirectionAblation(direction=direction, layer=2).bake(model)
    with pytest.raises(InputError, match="offloaded"):
        save_baked(model, tokenizer, circuit, 0.0, tmp_path / "baked")
    assert not (tmp_path / "baked").exists()

    # nothing changed, and the LM head was not untied onto the meta device
    assert _snapshot(model) == before
    assert (model.get_output_embeddings().weight is embed.weight) == tied
    assert model.config.tie_word_embeddings == tie_flag


def test_in_memory_layers_of_a_split_model_still_bake(split_organism: Pair) -> None:
    """Layers that accelerate keeps in memory are real weights: baking them is a real edit."""
    model, _ = split_organism
    circuit = _circuit_on(model, (0, 1))
    weight = model.model.layers[1].mlp.down_proj.weight
    original = weight.detach().clone()
    handle = bake(model, circuit, 0.0)
    assert torch.count_nonzero(weight[:, [5, 9, 11]]) == 0
    handle.undo()
    assert torch.equal(weight, original)


def test_cli_refuses_offloaded_weights_in_one_line(
    tiny_llama_dir: Path, tmp_path: Path, tiny_llama: Pair
) -> None:
    circuit = _circuit_on(tiny_llama[0], (2,))
    circuit.save(tmp_path / "c.circuit")
    common = ["bake", str(tiny_llama_dir), "--circuit", str(tmp_path / "c.circuit")]
    offload = ["--device-map", "auto", "--max-memory", "cpu=40KB"]
    offload += ["--offload-folder", str(tmp_path / "offload")]
    result = CliRunner().invoke(cli, [*common, *offload, "-o", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "offloaded" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
    # the streaming bake never loads the model: offloading options are refused, not ignored
    result = CliRunner().invoke(
        cli, [*common, "--streaming", *offload, "-o", str(tmp_path / "out")]
    )
    assert result.exit_code == 2, result.output
    assert "--streaming" in result.stderr
    assert "--device-map" in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_hook_that_swaps_weights_in_counts_as_offloaded(tiny_llama: Pair) -> None:
    """accelerate may keep a real tensor in the module and swap the offloaded one in only
    for the forward pass; an edit of the resident tensor would be lost, so it is refused."""
    model = copy.deepcopy(tiny_llama[0])
    site = model.model.layers[2].mlp.down_proj
    site._hf_hook = SequentialHook(AlignDevicesHook(), AlignDevicesHook(offload=True))
    original = site.weight.detach().clone()
    with pytest.raises(InputError, match=r"'model\.layers\.2\.mlp\.down_proj\.weight'"):
        bake(model, _circuit_on(model, (1, 2)), 0.0)
    assert torch.equal(site.weight, original)
    assert torch.equal(
        model.model.layers[1].mlp.down_proj.weight,
        tiny_llama[0].model.layers[1].mlp.down_proj.weight,
    )
