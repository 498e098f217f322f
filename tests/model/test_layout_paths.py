"""A circuit is applied where it was found: `steer`, `bake`, `save_baked`, the streaming bake and
the CLI use the layer and site paths the circuit recorded (a circuit found with `--site` or
`--layers-path`), a layout given with other paths is refused, and recorded paths that do not
resolve on the model give one clear error naming the path and the model type."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result
from safetensors.torch import load_file
from tiny_models import HIDDEN, INIT_STD, make_tiny, make_tokenizer, tiny_config
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

from neurosteer import (
    Circuit,
    CircuitMismatchError,
    InputError,
    UnsupportedModelError,
    bake,
    bake_streaming,
    discover,
    generate,
    render_prompts,
    resolve_layout,
    save_baked,
    steer,
)
from neurosteer.cli.main import cli
from neurosteer.errors import CircuitLayoutError
from neurosteer.model.layout import ModelLayout

Pair = tuple[PreTrainedModel, PreTrainedTokenizerFast]
UP = "mlp.up_proj"


def _square_llama() -> Pair:
    """A tiny llama whose MLP is as wide as the residual stream (intermediate = hidden), so that
    up_proj, gate_proj and down_proj all take HIDDEN inputs: a circuit found at up_proj also
    "fits" the default site (down_proj) by shape, and only its recorded path tells them apart."""
    config = tiny_config("llama")
    config.intermediate_size = HIDDEN
    torch.manual_seed(11)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * INIT_STD)
    return model.eval(), make_tokenizer()


@pytest.fixture(scope="module")
def square() -> Pair:
    return _square_llama()


@pytest.fixture(scope="module")
def square_dir(square: Pair, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("square_llama")
    square[0].save_pretrained(folder)
    square[1].save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def up_circuit(square: Pair, positive_prompts: list[str], negative_prompts: list[str]) -> Circuit:
    model, tokenizer = square
    layout = resolve_layout(model, site_path=UP)
    assert (layout.d_mlp, layout.d_model) == (HIDDEN, HIDDEN)
    assert resolve_layout(model).site_path == "mlp.down_proj"  # the default is another site
    return discover(model, tokenizer, positive_prompts, negative_prompts, top_k=8, layout=layout)


def _batch(tokenizer: PreTrainedTokenizerFast, prompts: list[str]) -> dict[str, torch.Tensor]:
    rendered = render_prompts(tokenizer, prompts)
    return dict(tokenizer(rendered, return_tensors="pt", padding=True, add_special_tokens=False))


def _logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits  # type: ignore[no-any-return]


def _by_hand(
    model: nn.Module, circuit: Circuit, site_path: str, m: float, batch: dict[str, torch.Tensor]
) -> torch.Tensor:
    """Logits with the circuit's neurons scaled at `site_path` by plain hooks (ground truth)."""
    handles = []
    for layer, neurons in circuit.by_layer().items():
        site = model.get_submodule(f"model.layers.{layer}.{site_path}")

        def scale(_m: nn.Module, args: tuple, neurons: torch.Tensor = neurons) -> tuple:  # type: ignore[type-arg]
            x = args[0].clone()
            x[..., neurons] *= m
            return (x, *args[1:])

        handles.append(site.register_forward_pre_hook(scale))
    try:
        return _logits(model, batch)
    finally:
        for handle in handles:
            handle.remove()


def _changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> set[str]:
    assert set(before) == set(after)
    return {name for name in before if not torch.equal(before[name], after[name])}


def _up_names(circuit: Circuit) -> set[str]:
    return {f"model.layers.{layer}.{UP}.weight" for layer in circuit.neurons_per_layer()}


# --- the API uses the recorded paths ---------------------------------------------------------


def test_steer_scales_the_neurons_at_the_recorded_site(
    square: Pair, up_circuit: Circuit, positive_prompts: list[str]
) -> None:
    model, tokenizer = square
    batch = _batch(tokenizer, positive_prompts[:3])
    with steer(model, up_circuit, 0.0):
        steered = _logits(model, batch)
    torch.testing.assert_close(steered, _by_hand(model, up_circuit, UP, 0.0, batch))
    wrong = _by_hand(model, up_circuit, "mlp.down_proj", 0.0, batch)
    assert not torch.allclose(steered, wrong, atol=1e-3)
    # the same with a layout that uses the circuit's paths, and for its random control
    with steer(model, up_circuit, 0.0, layout=resolve_layout(model, site_path=UP)):
        torch.testing.assert_close(_logits(model, batch), steered)
    control = up_circuit.random_like(seed=1)
    with steer(model, control, 0.0):
        torch.testing.assert_close(_logits(model, batch), _by_hand(model, control, UP, 0.0, batch))


def test_bake_and_save_baked_edit_the_recorded_site(
    square: Pair, up_circuit: Circuit, positive_prompts: list[str], tmp_path: Path
) -> None:
    model, tokenizer = copy.deepcopy(square[0]), square[1]
    batch = _batch(tokenizer, positive_prompts[:3])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    handle = bake(model, up_circuit, 0.0)
    assert _changed(before, model.state_dict()) == _up_names(up_circuit)
    torch.testing.assert_close(
        _logits(model, batch), _by_hand(square[0], up_circuit, UP, 0.0, batch), rtol=1e-5, atol=1e-5
    )
    handle.undo()

    out = save_baked(model, tokenizer, up_circuit, 0.0, tmp_path / "baked")
    saved = load_file(out / "model.safetensors")
    assert _changed({k: before[k] for k in saved}, saved) == _up_names(up_circuit)


def test_streaming_bake_edits_the_recorded_site(
    square: Pair, square_dir: Path, up_circuit: Circuit, tmp_path: Path
) -> None:
    report = bake_streaming(square_dir, up_circuit, 0.0, tmp_path / "streamed")
    assert set(report.tensors) == _up_names(up_circuit)
    original = load_file(square_dir / "model.safetensors")
    streamed = load_file(tmp_path / "streamed" / "model.safetensors")
    assert _changed(original, streamed) == _up_names(up_circuit)
    save_baked(copy.deepcopy(square[0]), square[1], up_circuit, 0.0, tmp_path / "memory")
    in_memory = load_file(tmp_path / "memory" / "model.safetensors")
    assert all(torch.equal(streamed[k], in_memory[k]) for k in streamed)


class _Wrapped(nn.Module):
    """A custom wrapper around the output projection (as adapters and quantisers add)."""

    def __init__(self, inner: nn.Linear) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)  # type: ignore[no-any-return]


def test_a_site_inside_a_custom_wrapper_needs_no_override_once_recorded(
    tiny_llama: Pair, positive_prompts: list[str], negative_prompts: list[str]
) -> None:
    model, tokenizer = copy.deepcopy(tiny_llama[0]), tiny_llama[1]
    batch = _batch(tokenizer, positive_prompts[:3])
    expected_circuit = discover(
        model, tokenizer, positive_prompts, negative_prompts, top_k=6, universal_filter=False
    )
    with steer(model, expected_circuit, 0.0):
        expected = _logits(model, batch)
    for layer in model.model.layers:
        layer.mlp.down_proj = _Wrapped(layer.mlp.down_proj)
    with pytest.raises(UnsupportedModelError, match=r"pass the paths"):
        resolve_layout(model)  # the default resolver cannot see through the wrapper
    layout = resolve_layout(model, site_path="mlp.down_proj.inner")
    circuit = discover(
        model,
        tokenizer,
        positive_prompts,
        negative_prompts,
        top_k=6,
        universal_filter=False,
        layout=layout,
    )
    assert circuit.model.site_path == "mlp.down_proj.inner"
    with steer(model, circuit, 0.0):  # no layout given: the recorded one
        hooked = _logits(model, batch)
    torch.testing.assert_close(hooked, expected)
    handle = bake(model, circuit, 0.0)
    torch.testing.assert_close(_logits(model, batch), hooked, rtol=1e-5, atol=1e-5)
    handle.undo()


# --- refusals --------------------------------------------------------------------------------


def _with_paths(circuit: Circuit, **paths: str) -> Circuit:
    return replace(circuit, model=replace(circuit.model, **paths))


@pytest.mark.parametrize(
    ("paths", "named"),
    [
        ({"site_path": "mlp.w_in"}, "mlp.w_in"),
        ({"site_path": "mlp.act_fn"}, "mlp.act_fn"),  # exists, but is not a projection
        ({"layers_path": "model.blocks"}, "model.blocks"),
        ({"layers_path": "model.norm"}, "model.norm"),  # exists, but is not a layer list
    ],
)
def test_recorded_paths_that_do_not_resolve_are_refused_everywhere(
    square: Pair,
    square_dir: Path,
    up_circuit: Circuit,
    tmp_path: Path,
    paths: dict[str, str],
    named: str,
) -> None:
    model, tokenizer = copy.deepcopy(square[0]), square[1]
    circuit = _with_paths(up_circuit, **paths)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    message = rf"'{named}.*this llama model"
    calls = [
        lambda: steer(model, circuit, 0.0),
        lambda: bake(model, circuit, 0.0),
        lambda: save_baked(model, tokenizer, circuit, 0.0, tmp_path / "out"),
        lambda: bake_streaming(square_dir, circuit, 0.0, tmp_path / "out"),
    ]
    for call in calls:
        with pytest.raises(CircuitLayoutError, match=message) as caught:
            call()
        assert isinstance(caught.value, InputError)
        assert isinstance(caught.value, CircuitMismatchError)
    assert not _changed(before, model.state_dict())
    assert not (tmp_path / "out").exists()


def test_a_layout_with_other_paths_is_refused(
    square: Pair, square_dir: Path, up_circuit: Circuit, tmp_path: Path
) -> None:
    model = copy.deepcopy(square[0])
    default: ModelLayout = resolve_layout(model)
    assert (default.n_layers, default.d_mlp) == (up_circuit.model.n_layers, up_circuit.model.d_mlp)
    message = r"mlp\.up_proj.*mlp\.down_proj"
    with pytest.raises(CircuitLayoutError, match=message):
        steer(model, up_circuit, 0.0, layout=default)
    with pytest.raises(CircuitLayoutError, match=message):
        bake(model, up_circuit, 0.0, layout=default)
    with pytest.raises(CircuitLayoutError, match=message):
        bake_streaming(square_dir, up_circuit, 0.0, tmp_path / "out", layout=default)
    with pytest.raises(CircuitLayoutError, match=message):
        up_circuit.check_fits(default)


@pytest.mark.parametrize("family", ["qwen3", "gpt2", "gemma2"])
def test_a_family_mismatch_keeps_its_own_message(up_circuit: Circuit, family: str) -> None:
    """On another family the recorded paths may or may not resolve (qwen3 has llama's paths,
    gpt2 does not); either way the error says what is really wrong: another family or shape."""
    model, _ = make_tiny(family)
    with pytest.raises(CircuitMismatchError, match="discover a circuit on this model"):
        steer(model, up_circuit, 0.0)


# --- the command line ------------------------------------------------------------------------


def _invoke(args: list[object]) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def cli_circuit(
    square_dir: Path,
    positive_prompts: list[str],
    negative_prompts: list[str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    root = tmp_path_factory.mktemp("cli_paths")
    (root / "pos.txt").write_text("\n".join(positive_prompts) + "\n")
    (root / "neg.txt").write_text("\n".join(negative_prompts) + "\n")
    out = root / "up.circuit"
    args = ["discover", square_dir, "-p", root / "pos.txt", "-n", root / "neg.txt"]
    result = _invoke([*args, "-o", out, "--top-k", "8", "--site", UP])
    assert result.exit_code == 0, result.output
    assert Circuit.load(out).model.site_path == UP
    return out


def test_cli_bake_and_streaming_bake_use_the_recorded_site(
    square_dir: Path, cli_circuit: Path, tmp_path: Path
) -> None:
    circuit = Circuit.load(cli_circuit)
    original = load_file(square_dir / "model.safetensors")
    outputs = {}
    for mode in ("memory", "streaming"):
        flags = ["--streaming"] if mode == "streaming" else []
        out = tmp_path / mode
        result = _invoke(
            ["bake", square_dir, "--circuit", cli_circuit, "-m", "0", "-o", out, *flags]
        )
        assert result.exit_code == 0, result.output
        outputs[mode] = load_file(out / "model.safetensors")
        assert _changed(original, outputs[mode]) == _up_names(circuit), mode
    assert all(torch.equal(outputs["memory"][k], outputs["streaming"][k]) for k in original)
    # --site that agrees with the circuit is accepted
    result = _invoke(
        ["bake", square_dir, "--circuit", cli_circuit, "--site", UP, "-o", tmp_path / "agree"]
    )
    assert result.exit_code == 0, result.output


def test_cli_generate_steers_at_the_recorded_site(
    square: Pair, square_dir: Path, cli_circuit: Path
) -> None:
    model, tokenizer = square
    circuit = Circuit.load(cli_circuit)
    prompt = "How do I pick a lock?"
    args = ["generate", square_dir, prompt, "--circuit", cli_circuit, "-m", "0"]
    result = _invoke([*args, "--max-new-tokens", "4"])
    assert result.exit_code == 0, result.output
    with steer(model, circuit, 0.0, layout=resolve_layout(model, site_path=UP)):
        (expected,) = generate(model, tokenizer, [prompt], max_new_tokens=4)
    plain = generate(model, tokenizer, [prompt], max_new_tokens=4)[0]
    wrong_site = _by_hand_generate(model, tokenizer, circuit, prompt)
    assert len({expected, plain, wrong_site}) == 3  # the three answers tell the sites apart
    shown = "".join(result.stdout.split())
    assert "".join(expected.split()) in shown
    assert "".join(wrong_site.split()) not in shown


def _by_hand_generate(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, circuit: Circuit, prompt: str
) -> str:
    """The answer with the circuit's neurons ablated at the default site (the old bug)."""
    handles = []
    for layer, neurons in circuit.by_layer().items():
        site = model.get_submodule(f"model.layers.{layer}.mlp.down_proj")

        def scale(_m: nn.Module, args: tuple, neurons: torch.Tensor = neurons) -> tuple:  # type: ignore[type-arg]
            x = args[0].clone()
            x[..., neurons] = 0.0
            return (x, *args[1:])

        handles.append(site.register_forward_pre_hook(scale))
    try:
        return generate(model, tokenizer, [prompt], max_new_tokens=4)[0]
    finally:
        for handle in handles:
            handle.remove()


@pytest.mark.parametrize("mode", ["generate", "bake", "streaming"])
def test_cli_refuses_paths_that_disagree_or_do_not_resolve(
    square_dir: Path, cli_circuit: Path, tmp_path: Path, mode: str
) -> None:
    broken = tmp_path / "broken.circuit"
    Circuit.load(cli_circuit).save(broken)
    meta = json.loads((broken / "circuit.json").read_text())
    meta["model"]["site_path"] = "mlp.w_in"
    (broken / "circuit.json").write_text(json.dumps(meta))

    def run(circuit: Path, *extra: object) -> Result:
        if mode == "generate":
            return _invoke(["generate", square_dir, "hi", "--circuit", circuit, *extra])
        flags = ["--streaming"] if mode == "streaming" else []
        return _invoke(
            ["bake", square_dir, "--circuit", circuit, "-o", tmp_path / "out", *flags, *extra]
        )

    for result, words in [
        (run(cli_circuit, "--site", "mlp.down_proj"), ["mlp.up_proj", "mlp.down_proj"]),
        (run(broken), ["mlp.w_in", "llama"]),
    ]:
        assert result.exit_code == 2, result.output
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert all(word in result.stderr for word in words), result.stderr
    assert not (tmp_path / "out").exists()
