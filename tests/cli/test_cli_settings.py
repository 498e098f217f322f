"""Each CLI command reads its options as one frozen, typed settings object: a command line
becomes values of the annotated types (`--skip-layers 1,3` a tuple of ints), a settings class
lists exactly its command's options, and a wrong value is still one line naming the option,
now before any model loads. Modes are chosen by a flag (`discover --relp`); the old spelling
still works with a DeprecationWarning."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any

import click
import pytest
import torch
from click.testing import CliRunner, Result

from neurosteer import Circuit
from neurosteer.cli.analysis_cmds import SweepSettings, sweep_command
from neurosteer.cli.chat_cmd import ChatSettings, chat_command
from neurosteer.cli.gguf_cmds import EvaluateGGUFSettings, evaluate_gguf_command
from neurosteer.cli.lora_cmd import ExportLoraSettings, export_lora_command
from neurosteer.cli.main import (
    BakeSettings,
    DiscoverSettings,
    GenerateSettings,
    bake,
    cli,
    discover,
    generate,
)
from neurosteer.cli.optimize_cmds import OptimizeSettings, optimize_command
from neurosteer.cli.probe_cmd import ProbeSettings, probe_command
from neurosteer.cli.relp_cmds import FaithfulnessSettings, faithfulness_command
from neurosteer.cli.settings import build_settings, option_names

pytestmark = pytest.mark.usefixtures("restore_library_logging")

COMMANDS: dict[str, tuple[click.Command, type[Any]]] = {
    "discover": (discover, DiscoverSettings),
    "generate": (generate, GenerateSettings),
    "bake": (bake, BakeSettings),
    "sweep": (sweep_command, SweepSettings),
    "faithfulness": (faithfulness_command, FaithfulnessSettings),
    "optimize": (optimize_command, OptimizeSettings),
    "chat": (chat_command, ChatSettings),
    "probe": (probe_command, ProbeSettings),
    "export-lora": (export_lora_command, ExportLoraSettings),
    "evaluate-gguf": (evaluate_gguf_command, EvaluateGGUFSettings),
}


def _settings(name: str, args: list[str]) -> Any:
    """The settings object `name`'s command line `args` gives, parsed but not run."""
    command, cls = COMMANDS[name]
    ctx = command.make_context(name, args)
    return build_settings(cls, ctx.params)


def _invoke(args: list[object]) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_settings_list_exactly_the_commands_options(name: str) -> None:
    command, cls = COMMANDS[name]
    fields = option_names(cls)
    assert len(fields) == len(set(fields)), fields  # no option read twice
    assert sorted(fields) == sorted(str(p.name) for p in command.params)


def test_discover_settings_are_typed_and_frozen(tmp_path: Path) -> None:
    args = ["m", "-p", "a.txt", "-n", "b.txt", "-o", str(tmp_path / "c"), "--skip-layers", "1,3"]
    args += ["--fraction", "0.01", "--max-memory", "0=1GiB,cpu=2GiB", "--template-var", "x=true"]
    settings = _settings("discover", args)
    assert settings.skip_layers == (1, 3)
    assert settings.fraction == pytest.approx(0.01)
    assert settings.contrast.positive == Path("a.txt")
    assert settings.loading.max_memory == {0: "1GiB", "cpu": "2GiB"}
    assert settings.template.template_vars == {"x": True}
    assert settings.universal.universal_filter
    assert settings.top_k is None
    assert not settings.relp
    assert settings.pairs.pair_prompts == ()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.top_k = 3
    assert _settings("discover", ["m", "-o", "c", "--skip-layers", ""]).skip_layers == ()


def test_sweep_and_optimize_lists_become_tuples() -> None:
    sweep = ["m", "-p", "a", "-n", "b", "--eval-harmful", "h", "--eval-harmless", "l", "-o", "o"]
    settings = _settings("sweep", [*sweep, "--strengths", "0,0.5", "--seeds", "4,5", "--methods",
                                   "cna, random", "--no-universal-filter"])  # fmt: skip
    assert settings.strengths == (0.0, 0.5)
    assert settings.seeds == (4, 5)
    assert settings.methods == ("cna", "random")
    assert settings.skip_layers == (0, 1)
    assert not settings.universal.universal_filter
    optimize = _settings("optimize", ["m", "--k-range", "0.001,0.01", "--signs", "both"])
    assert optimize.k_range == (0.001, 0.01)
    assert optimize.multiplier_range == (-2.0, 1.0)
    assert optimize.signs == ("both",)
    assert optimize.baseline_strengths == (0.25, 0.5, 0.75, 1.0)
    assert optimize.contrast.positive is None
    assert optimize.kl == "first_token"


def test_steering_commands_parse_multipliers_and_tokens() -> None:
    generate_settings = _settings("generate", ["m", "Hi", "Yo", "--circuit", "c", "-m", "0,-1"])
    assert generate_settings.prompts == ("Hi", "Yo")
    assert generate_settings.multipliers == (0.0, -1.0)
    assert _settings("generate", ["m", "Hi"]).multipliers is None
    probe = _settings("probe", ["m", "Hi", "-t", " I, Sure", "-t", ",", "--top", "3"])
    assert probe.tokens == (" I", "Sure", ",")
    assert probe.top == 3
    assert probe.multipliers is None
    bake_settings = _settings("bake", ["m", "--circuit", "c", "-o", "o", "-m", "0"])
    assert bake_settings.multiplier == 0.0
    assert bake_settings.gguf_fallback == "F16"
    assert _settings("bake", ["m", "--circuit", "c", "-o", "o", "--gguf-fallback", "q8_0"]
                     ).gguf_fallback == "Q8_0"  # fmt: skip
    chat = _settings("chat", ["m", "--temperature", "0.5", "--system", "Be brief."])
    assert chat.temperature == 0.5
    assert chat.system == "Be brief."
    assert chat.multiplier is None
    faith = _settings("faithfulness", ["m", "--circuit", "c", "-n", "n", "--k", "0,3"])
    assert faith.ks == (0, 3)
    assert faith.pairs.pairs is None
    assert _settings("faithfulness", ["m", "--circuit", "c", "-n", "n"]).ks is None


def test_a_settings_class_out_of_step_with_its_option_fails_loudly() -> None:
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Wrong:
        top: int

    with pytest.raises(TypeError, match=r"Wrong\.top is annotated"):
        build_settings(Wrong, {"top": "3"})
    with pytest.raises(KeyError):
        build_settings(Wrong, {})


SWEEP = "sweep {m} -p {f} -n {f} --eval-harmful {f} --eval-harmless {f} -o {o}"
OPTIMIZE = "optimize {m} -p {f} -n {f} -o {o}"

#: command line (split at spaces) -> the start of its one line on stderr
BAD_VALUES = {
    f"{SWEEP} --strengths 0,x": "error: --strengths takes comma-separated numbers, got '0,x'",
    f"{SWEEP} --seeds 1.5": "error: --seeds takes comma-separated whole numbers, got '1.5'",
    f"{OPTIMIZE} --k-range 0.1": "error: --k-range takes two numbers, LOW,HIGH; got '0.1'",
    f"{OPTIMIZE} --baseline-strengths a": (
        "error: --baseline-strengths takes comma-separated numbers, got 'a'"
    ),
    "faithfulness {m} --circuit {o} -n {f} --prompt Hi --target a --k 1,two": (
        "error: --k takes comma-separated whole numbers, got '1,two'"
    ),
    "generate {m} Hi --circuit {o} -m 0,x": (
        "error: -m takes comma-separated finite numbers such as 0,1,2; got '0,x'"
    ),
    "probe {m} Hi --tokens a,,b": "error: --tokens has an empty item in 'a,,b'",
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_a_bad_value_is_one_line_before_any_model_loads(case: str, tmp_path: Path) -> None:
    """The model path does not exist: the value's own error comes first, as one line."""
    prompts = tmp_path / "p.txt"
    prompts.write_text("Hi\n")
    given = [a.format(m=tmp_path / "no-model", f=prompts, o=tmp_path / "out") for a in case.split()]
    result = _invoke(given)
    assert result.exit_code == 2, (result.output, result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith(BAD_VALUES[case]), lines
    assert not (tmp_path / "out").exists()


def test_bad_skip_layers_is_clicks_usage_error_before_loading(tmp_path: Path) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("Hi\n")
    args = ["discover", tmp_path / "no-model", "-p", prompts, "-n", prompts, "-o"]
    result = _invoke([*args, tmp_path / "c", "--skip-layers", "0,x"])
    assert result.exit_code == 2, result.output
    assert "Invalid value: expected comma-separated layer numbers, got '0,x'" in result.stderr
    assert "no-model" not in result.stderr  # the model was never looked for


def test_relp_mode_is_a_flag_and_the_inferred_mode_is_deprecated(
    tiny_llama_dir: Path, tmp_path: Path
) -> None:
    pairs = ["--prompt", "The capital of France is", "--target", " Paris", "--top-k", "4"]
    with pytest.warns(DeprecationWarning, match="add --relp"):
        old = _invoke(["discover", tiny_llama_dir, *pairs, "-o", tmp_path / "old.circuit"])
    assert old.exit_code == 0, (old.output, old.exception)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        new = _invoke(["discover", tiny_llama_dir, "--relp", *pairs, "-o", tmp_path / "new"])
    assert new.exit_code == 0, (new.output, new.exception)
    a, b = Circuit.load(tmp_path / "old.circuit"), Circuit.load(tmp_path / "new")
    assert torch.equal(a.layers, b.layers)
    assert torch.equal(a.neurons, b.neurons)
    assert a.settings == b.settings
    alone = _invoke(["discover", tiny_llama_dir, "--relp", "-o", tmp_path / "x.circuit"])
    assert alone.exit_code == 2
    assert alone.stderr.strip() == "error: --relp needs --prompt/--target pairs (or --pairs FILE)"
    both = ["discover", tiny_llama_dir, "--relp", "-p", tmp_path / "p.txt", "-n", tmp_path]
    mixed = _invoke([*both, "-o", tmp_path / "y.circuit"])
    assert mixed.exit_code == 2
    assert "not both" in mixed.stderr


def test_commands_build_their_settings_when_the_module_runs_as_a_script(tmp_path: Path) -> None:
    """`runpy` runs cli/main.py as `__main__` without registering it under that name: the
    settings' annotations are read in the command's own globals, not in `sys.modules`."""
    import os
    import subprocess
    import sys

    script = (
        "import runpy, sys; sys.argv = ['neurosteer', *sys.argv[1:]]; "
        "runpy.run_module('neurosteer.cli.main', run_name='__main__')"
    )
    src = Path(__file__).resolve().parents[1] / "src"
    env = os.environ | {"PYTHONPATH": str(src)}
    args = ["generate", str(tmp_path / "no-model"), "Hi", "--circuit", "c", "-m", "0,x"]
    done = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, env=env, check=False
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (
        "error: -m takes comma-separated finite numbers such as 0,1,2; got '0,x'"
    )
