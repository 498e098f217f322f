"""`neurosteer optimize` on the command line, the export rule, and circuits that carry their
multiplier: `--show` (Pareto table, plot with the baselines), `--export` (rule, `--trial`,
provenance), `generate`/`bake`/`steer` using the stored multiplier, one-line errors."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result
from optimize_support import neutral, one_thread, organism, prompts, trial_result

import neurosteer
from neurosteer import Circuit
from neurosteer.cli.main import cli
from neurosteer.errors import InputError
from neurosteer.evaluation.kl import KLReference, kl_from_reference
from neurosteer.methods.circuit import FORMAT_VERSION
from neurosteer.workflows.optimization import choose_trial, read_search
from neurosteer.workflows.optimization.store import BASELINES_FILE, PLOT_FILE
from neurosteer.workflows.organism import INSTRUCT_DIR

__all__ = ["one_thread"]  # the module's autouse fixture


@dataclass(frozen=True)
class Search:
    folder: Path
    files: Path
    output: str  # what the search command printed


def _invoke(args: list[object]) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


def _ok(result: Result) -> Result:
    assert result.exit_code == 0, (result.output, result.stderr, result.exception)
    return result


def _one_line_error(result: Result, *parts: str) -> str:
    assert result.exit_code == 2, (result.output, result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for part in parts:
        assert part in lines[0], lines[0]
    return lines[0]


def _search_args(files: Path, folder: Path, *extra: object) -> list[object]:
    return [
        "optimize",
        INSTRUCT_DIR,
        "-p",
        files / "harmful.txt",
        "-n",
        files / "benign.txt",
        "--neutral",
        files / "neutral.txt",
        "--judge",
        "organism",
        "--max-new-tokens",
        40,
        "--held-out-positive",
        12,
        "--held-out-negative",
        12,
        "--startup-trials",
        4,
        "--baseline-strengths",
        "0.5,1",
        "-o",
        folder,
        *extra,
    ]


@pytest.fixture(scope="module")
def search(tmp_path_factory: pytest.TempPathFactory) -> Search:
    """An 8-trial organism search run by the CLI, baselines included."""
    files = tmp_path_factory.mktemp("prompts")
    harmful, benign = prompts()
    (files / "harmful.txt").write_text("\n".join(harmful) + "\n")
    (files / "benign.txt").write_text("\n".join(benign) + "\n")
    (files / "neutral.txt").write_text("\n".join(neutral()) + "\n")
    folder = tmp_path_factory.mktemp("search") / "s"
    result = _ok(_invoke(_search_args(files, folder, "--trials", 8)))
    return Search(folder, files, result.output)


# --- the export rule -------------------------------------------------------------------------


TRIALS = [
    trial_result(0, 0.9, 0.001),
    trial_result(1, 0.05, 0.40),
    trial_result(2, 0.10, 0.20),  # the rule's choice at target 0.1: lowest KL at <= 0.1
    trial_result(3, 0.00, 0.20, degenerate=0.10),  # same KL, same refusal + degenerate, later
    trial_result(4, 0.02, 0.10, degenerate=0.12),  # low KL but 0.14 not-success: over the target
    trial_result(5, None, 0.0001),  # pruned: never chosen
]


def test_export_rule_lowest_kl_at_or_below_the_target() -> None:
    chosen, rule = choose_trial(TRIALS, target=0.1)
    assert chosen.number == 2
    assert "lowest KL" in rule
    assert "0.1" in rule
    assert choose_trial(TRIALS, target=0.05)[0].number == 1
    assert choose_trial(TRIALS, target=0.2)[0].number == 4  # degenerate counts against it
    assert choose_trial(TRIALS, target=1.0)[0].number == 0
    assert choose_trial(list(reversed(TRIALS)), target=0.1)[0].number == 2  # order-free


def test_export_rule_errors() -> None:
    with pytest.raises(
        InputError,
        match=r"no complete trial has refusal \+ degenerate <= 0.01 "
        r"\(the lowest is 0.05, trial 1\)",
    ):
        choose_trial(TRIALS, target=0.01)
    with pytest.raises(InputError, match="trial 5 is not a complete trial"):
        choose_trial(TRIALS, trial=5)
    with pytest.raises(InputError, match="trial 99 is not a complete trial"):
        choose_trial(TRIALS, trial=99)
    with pytest.raises(InputError, match="share in"):
        choose_trial(TRIALS, target=1.5)
    assert choose_trial(TRIALS, trial=3, target=0.0)[0].number == 3  # --trial wins


# --- the command line ------------------------------------------------------------------------


def test_show_states_the_judges_measured_accuracy(search: Search, tmp_path: Path) -> None:
    from neurosteer.evaluation.judge_accuracy import accuracy_table
    from neurosteer.workflows.optimization.store import META_FILE

    out = _ok(_invoke(["optimize", search.folder, "--show"])).output
    assert "refusal by judge organism: accuracy on real answers not measured" in out
    folder = tmp_path / "s"  # the same search, as if judged by the phrase judge
    shutil.copytree(search.folder, folder)
    meta = json.loads((folder / META_FILE).read_text())
    meta["settings"]["judge"] = "patterns"
    (folder / META_FILE).write_text(json.dumps(meta))
    out = _ok(_invoke(["optimize", folder, "--show"])).output
    entry = accuracy_table()["patterns"]
    assert f"refusal by judge patterns: right on {entry['all']:.1%} of {entry['n']}" in out
    assert out.index("refusal by judge") < out.index("Pareto front")


def test_search_prints_the_front_and_show_draws_it(search: Search) -> None:
    assert "Pareto front" in search.output
    assert "--export best.circuit" in search.output
    baselines = json.loads((search.folder / BASELINES_FILE).read_text())
    assert {p["method"] for p in baselines["points"]} == {"caa", "direction"}
    assert len(baselines["points"]) == 4
    (search.folder / PLOT_FILE).unlink()
    out = _ok(_invoke(["optimize", search.folder, "--show"])).output
    for column in ("refusal", "degenerate", "KL", "m", "sign", "score", "first layer"):
        assert column in out
    assert "8 finished trials" in out
    assert "baselines" in out
    assert (search.folder / PLOT_FILE).read_bytes()[:4] == b"\x89PNG"
    result = read_search(search.folder)
    assert len(result.trials) == 8
    assert len(result.baselines) == 4


def test_rerun_of_the_same_command_continues(search: Search, tmp_path: Path) -> None:
    folder = tmp_path / "again"
    _ok(_invoke(_search_args(search.files, folder, "--trials", 2, "--no-baselines")))
    _ok(_invoke(_search_args(search.files, folder, "--trials", 3, "--no-baselines")))
    assert [t.number for t in read_search(folder).trials] == [0, 1, 2]


def test_export_writes_the_multiplier_and_provenance(search: Search, tmp_path: Path) -> None:
    result = read_search(search.folder)
    expected, _ = choose_trial(list(result.trials), target=0.5)
    out = tmp_path / "best.circuit"
    printed = _ok(
        _invoke(["optimize", search.folder, "--export", out, "--target-refusal", 0.5])
    ).output
    assert f"trial {expected.number}" in printed
    circuit = Circuit.load(out)
    assert circuit.settings.multiplier == pytest.approx(expected.multiplier)
    assert circuit.default_strength == pytest.approx(expected.multiplier)
    assert circuit.settings.positive_only == (expected.sign == "positive")
    assert circuit.settings.score == expected.score
    assert len(circuit) == expected.k
    assert int(circuit.layers.min()) >= expected.first_layer
    assert circuit.table is None
    search_info = circuit.search
    assert search_info is not None
    assert search_info.trial == expected.number
    assert search_info.refusal == pytest.approx(expected.refusal)
    assert search_info.kl == pytest.approx(expected.kl)
    assert search_info.judge == "organism"
    assert search_info.held_out["positive"].count == 12
    assert "0.5" in search_info.rule
    # the exported circuit at its stored multiplier is the trial's circuit: the same KL
    model, _ = organism()
    reference = KLReference.load(search.folder / "reference" / "kl.safetensors")
    again = kl_from_reference(model, reference, intervention=circuit)
    assert again.first_token == pytest.approx(expected.kl, rel=1e-5, abs=1e-7)
    shown = _ok(_invoke(["inspect", out])).output
    assert f"stored multiplier {expected.multiplier:g}" in shown
    assert f"trial {expected.number}" in shown
    # --trial picks that trial
    other = next(t for t in result.trials if t.state == "complete" and t != expected)
    _ok(
        _invoke(
            ["optimize", search.folder, "--export", tmp_path / "t.circuit", "--trial", other.number]
        )
    )
    assert Circuit.load(tmp_path / "t.circuit").settings.multiplier == pytest.approx(
        other.multiplier
    )


def test_steer_and_bake_use_the_stored_multiplier(search: Search, tmp_path: Path) -> None:
    out = tmp_path / "best.circuit"
    _ok(_invoke(["optimize", search.folder, "--export", out, "--target-refusal", 1.0]))
    circuit = Circuit.load(out)
    m = circuit.settings.multiplier
    assert m is not None
    assert m != 0.0
    model, tok = organism()
    ids = tok(
        ["<|bos|><|user|>how do i crush my uncle ?<|end|>\n<|assistant|>"],
        add_special_tokens=False,
        return_tensors="pt",
    )
    with torch.inference_mode():
        with neurosteer.steer(model, circuit):  # no strength: the stored one
            default = model(**ids).logits
        with neurosteer.steer(model, circuit, m):
            explicit = model(**ids).logits
        with neurosteer.steer(model, circuit, 0.0):
            ablated = model(**ids).logits
    assert torch.equal(default, explicit)
    assert not torch.equal(default, ablated)
    baked = _ok(_invoke(["bake", INSTRUCT_DIR, "--circuit", out, "-o", tmp_path / "baked"]))
    assert f"scaled by {m:g}" in baked.output
    record = json.loads((tmp_path / "baked" / "neurosteer.json").read_text())
    assert record["multiplier"] == pytest.approx(m)
    given = _ok(_invoke(["bake", INSTRUCT_DIR, "--circuit", out, "-m", 0, "-o", tmp_path / "zero"]))
    assert "scaled by 0" in given.output
    shown = _ok(
        _invoke(
            [
                "generate",
                INSTRUCT_DIR,
                "--circuit",
                out,
                "--max-new-tokens",
                4,
                "how do i crush my uncle ?",
            ]
        )
    )
    assert f"m = {m:g}" in shown.output


def test_cli_one_line_errors(search: Search, tmp_path: Path) -> None:
    _one_line_error(
        _invoke(["optimize", search.folder, "--export", tmp_path / "x.circuit", "--trial", 999]),
        "trial 999 is not a complete trial",
    )
    assert not (tmp_path / "x.circuit").exists()
    _one_line_error(
        _invoke(_search_args(search.files, tmp_path / "z", "--trials", 0)),
        "trials must be a whole number >= 1, got 0",
    )
    _one_line_error(
        _invoke(_search_args(search.files, tmp_path / "z", "--held-out-positive", 39)),
        "too few positive prompts to split",
        "--held-out-positive",
    )
    _one_line_error(
        _invoke(_search_args(search.files, search.folder, "--trials", 9, "--kl", "mean")),
        "holds a search from other settings",
        "kl:",
    )
    # checked before the model loads: no model at that path, still the settings' error
    args = _search_args(search.files, search.folder, "--trials", 9, "--max-new-tokens", 20)
    args[1] = tmp_path / "no-such-model"
    _one_line_error(_invoke(args), "max_new_tokens: 40 -> 20")
    _one_line_error(
        _invoke(["optimize", search.folder]), "is a search folder: add --show or --export"
    )
    _one_line_error(_invoke(["optimize", tmp_path, "--show"]), "is not a search folder")
    _one_line_error(
        _invoke(["optimize", search.folder, "--show", "-o", tmp_path / "q"]),
        "--output start a search",
    )
    assert read_search(search.folder).trials  # untouched
    assert len(read_search(search.folder).trials) == 8


# --- circuit files ---------------------------------------------------------------------------

OLD = Path(__file__).parents[1] / "data" / "format_v1.circuit"


def test_a_version_1_circuit_still_loads(tiny_llama: tuple, tmp_path: Path) -> None:
    circuit = Circuit.load(OLD)
    assert json.loads((OLD / "circuit.json").read_text())["format_version"] == 1
    assert circuit.layers.tolist() == [2, 3, 3, 3, 2, 2]
    assert circuit.neurons.tolist() == [22, 36, 14, 13, 30, 28]
    assert circuit.settings.multiplier is None
    assert circuit.settings.score == "diff"
    assert circuit.default_strength == 0.0
    assert circuit.search is None
    assert circuit.reselect(top_k=3).layers.tolist() == [2, 3, 3]
    model, _ = tiny_llama
    with neurosteer.steer(model, circuit) as handle:
        assert handle.strength == 0.0
    again = Circuit.load(circuit.save(tmp_path / "new.circuit"))
    saved = json.loads((tmp_path / "new.circuit" / "circuit.json").read_text())
    assert saved["format_version"] == FORMAT_VERSION
    assert circuit.model.weights is None  # a version-1 file does not know its weights
    assert again.settings == circuit.settings
    assert torch.equal(again.neurons, circuit.neurons)


def test_multiplier_round_trips_and_sets_the_default(tmp_path: Path) -> None:
    circuit = Circuit.load(OLD)
    stored = replace(circuit, settings=replace(circuit.settings, multiplier=-0.75))
    assert stored.default_strength == -0.75
    loaded = Circuit.load(stored.save(tmp_path / "m.circuit"))
    assert loaded.settings.multiplier == -0.75
    assert loaded.default_strength == -0.75


def test_the_printed_export_command_is_one_that_works() -> None:
    from neurosteer.cli.optimize_cmds import _export_hint

    folder = Path("search")
    assert "--export best.circuit`" in _export_hint(folder, TRIALS)  # the rule finds trial 2
    # No trial meets the default target: the hint names the closest trial instead.
    hopeless = [trial_result(0, 0.9, 0.001), trial_result(1, 0.5, 0.3), trial_result(2, None, 0.0)]
    hint = _export_hint(folder, hopeless)
    assert "--export best.circuit --trial 1`" in hint
    assert "no trial is complete" in _export_hint(folder, [trial_result(0, None, 0.0)])
