"""The CLI on a tiny mixture-of-experts checkpoint folder: discover, inspect, generate, bake
(in memory and streamed) and sweep run end to end and show the experts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from tiny_models import save_tiny

from conftest import NEGATIVE_PROMPTS, POSITIVE_PROMPTS
from neurosteer import Circuit
from neurosteer.cli.main import cli

pytestmark = pytest.mark.usefixtures("restore_library_logging")


def _ok(args: list[object]) -> Result:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def test_discover_inspect_generate_bake_and_sweep_on_a_moe_folder(tmp_path: Path) -> None:
    model = save_tiny("qwen2_moe", tmp_path / "moe")
    positive, negative = tmp_path / "pos.txt", tmp_path / "neg.txt"
    positive.write_text("\n".join(POSITIVE_PROMPTS) + "\n")
    negative.write_text("\n".join(NEGATIVE_PROMPTS) + "\n")
    circuit = tmp_path / "moe.circuit"
    common = ["-p", positive, "-n", negative, "--no-universal-filter"]
    _ok(["discover", model, *common, "-o", circuit, "--top-k", "6", "--skip-layers", ""])
    found = Circuit.load(circuit)
    assert found.model.neuron_blocks is not None
    shown = _ok(["inspect", circuit]).stdout
    assert "neurons per expert" in shown
    pairs = zip(found.layers.tolist(), found.neurons.tolist(), strict=True)
    names = [found.model.neuron_name(layer, neuron) for layer, neuron in pairs]
    assert any(name in shown for name in names if name.startswith(("E", "S")))
    answer = _ok(["generate", model, "--circuit", circuit, "--max-new-tokens", "3", "Hi"])
    assert "steered (m = 0)" in answer.stdout
    for extra in ([], ["--streaming"]):
        out = tmp_path / f"baked{len(extra)}"
        _ok(["bake", model, "--circuit", circuit, "-o", out, *extra])
        assert json.loads((out / "neurosteer.json").read_text())["multiplier"] == 0.0
    run = tmp_path / "sweep"
    args = ["sweep", model, *common, "--eval-harmful", positive, "--eval-harmless", negative]
    args += ["-o", run, "--methods", "cna,random", "--strengths", "0,1", "--top-k", "4"]
    args += ["--max-new-tokens", "2", "--kl-limit", "1", "--kl-tokens", "1", "--eval-limit", "2"]
    _ok(args)
    assert (run / "config.json").is_file()


@pytest.mark.parametrize(
    ("flags", "model_type"),
    [([], "llama"), (["--base"], "llama"), (["--moe"], "qwen2_moe")],
)
def test_organism_path_prints_a_model_folder(flags: list[str], model_type: str) -> None:
    folder = Path(_ok(["organism", "path", *flags]).output.strip())
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    assert config["model_type"] == model_type
    assert ("base" in folder.parts) == ("--base" in flags)


def test_organism_path_of_the_moe_base_names_the_command_that_rebuilds_it() -> None:
    result = CliRunner().invoke(cli, ["organism", "path", "--moe", "--base"])
    assert result.exit_code == 2
    assert "organism train --moe" in result.output


def test_inspect_header_names_the_shared_expert_and_dense_layers() -> None:
    from neurosteer.cli.render import _total
    from neurosteer.methods.circuit import ModelInfo

    moe_layer: list[list[int | str]] = [["routed", 0, 8, 64], ["shared", 512, 1, 128]]
    dense_layer: list[list[int | str]] = [["dense", 0, 1, 256]]
    info = ModelInfo(
        "m", "qwen2_moe", "Qwen2MoeForCausalLM", 3, 640, 32, "model.layers", "mlp", "h",
        neuron_blocks=[dense_layer, moe_layer, moe_layer],
    )  # fmt: skip
    assert _total(info) == "1536 in 3 layers (routed: 8 experts x 64, shared: 128, dense: 256)"


def _one_error_line(args: list[object]) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 2, (result.output, result.exception)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    return lines[0]


@pytest.mark.parametrize("family", ["qwen3_moe", "mixtral"])
def test_site_down_proj_on_a_moe_folder_names_the_mlp_block(tmp_path: Path, family: str) -> None:
    model = save_tiny(family, tmp_path / family)
    generate = ["generate", model, "--max-new-tokens", "2", "Hi"]
    line = _one_error_line([*generate, "--site", "mlp.down_proj"])
    assert line.startswith(f"error: 'mlp.down_proj' is not a neuron site of this {family} model")
    assert "is a mixture of experts" in line
    assert "in 'mlp.experts'" in line
    assert line.endswith("leave site_path (--site) out, or pass 'mlp'")
    assert "--layers-path/--site" not in line  # the old advice named the option that failed
    _ok([*generate, "--site", "mlp"])  # the advice works


def test_a_moe_site_on_a_dense_folder_names_its_down_projection(tiny_llama_dir: Path) -> None:
    line = _one_error_line(
        ["generate", tiny_llama_dir, "--max-new-tokens", "2", "--site", "mlp.experts", "Hi"]
    )
    assert line.startswith("error: no module 'mlp.experts' in a decoder layer of this llama model")
    assert "its MLP 'mlp' (LlamaMLP) is dense, with no experts" in line
    assert line.endswith("leave site_path (--site) out to use it, or pass 'mlp.down_proj'")
