"""`neurosteer optimize` says what it found: the closing hint leads with a baseline that beats
the CNA front, and the target refusal is stated in held-out answers (one answer = 1/n), with a
warning when it is finer than one answer."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from optimize_support import neutral, one_thread, organism, prompts, quick, trial_result

from neurosteer.cli.main import cli
from neurosteer.cli.optimize_cmds import _export_hint
from neurosteer.workflows.optimization import optimize
from neurosteer.workflows.optimization.baselines import BaselinePoint
from neurosteer.workflows.optimization.export import (
    baseline_verdict,
    coarse_target_warning,
    dominating_baselines,
    target_in_answers,
)
from neurosteer.workflows.optimization.study import pareto_front

__all__ = ["one_thread"]  # the module's autouse fixture


def _baseline(method: str, s: float, refusal: float, kl: float) -> BaselinePoint:
    return BaselinePoint(
        method=method,
        layer=3,
        s=s,
        strength=s,
        refusal=refusal,
        degenerate=0.0,
        compliance=1 - refusal,
        kl=kl,
        kl_first_token=kl,
        kl_mean=None,
    )


# the case: the hint's trial refuses nothing at KL 3.01, ablation nothing at KL 0.23
TRIALS = [trial_result(0, 0.0, 3.01), trial_result(1, 0.5, 0.10), trial_result(2, 0.9, 0.02)]
ABLATION = _baseline("direction", 1.0, 0.0, 0.23)


def test_a_dominating_baseline_is_said_first() -> None:
    folder = Path("search")
    hint = _export_hint(folder, TRIALS, [ABLATION], held_out=8)
    assert hint.startswith("A baseline beats 1 of the 3 trials on the CNA front")
    assert "directional ablation at s = 1" in hint
    assert "0% at KL 0.23" in hint
    assert "CNA trial 0 has 0% at KL 3.01" in hint
    # it still says how to export the best CNA trial, after the verdict
    assert hint.index("beats") < hint.index("--export best.circuit")
    assert "allows 0 of 8 held-out answers" in hint
    assert "12.5%" in hint
    # a baseline that beats every front point is said to
    every = [ABLATION, _baseline("caa", 0.5, 0.4, 0.05), _baseline("caa", 1.0, 0.8, 0.01)]
    assert _export_hint(folder, TRIALS, every).startswith("A baseline beats every trial")
    # no baseline, or one the front beats: no verdict, the hint as before
    worse = _baseline("direction", 0.5, 0.0, 5.0)
    for baselines in ([], [worse]):
        hint = _export_hint(folder, TRIALS, baselines)
        assert "beats" not in hint
        assert hint.startswith("`neurosteer optimize search --export best.circuit`")


def test_dominance_needs_both_objectives() -> None:
    trial = trial_result(0, 0.25, 1.0)
    tie = _baseline("caa", 1.0, 0.25, 1.0)  # equal on both: not better
    lower_kl = _baseline("caa", 0.5, 0.25, 0.9)
    fewer_refusals = _baseline("direction", 0.5, 0.125, 1.0)
    one_worse = _baseline("direction", 1.0, 0.0, 1.1)
    found = dominating_baselines(trial, [tie, lower_kl, fewer_refusals, one_worse])
    assert found == [fewer_refusals, lower_kl]
    assert dominating_baselines(trial_result(1, None, 0.0), [lower_kl]) == []
    assert baseline_verdict(pareto_front([trial]), [tie, one_worse]) is None


def test_the_target_is_stated_in_held_out_answers() -> None:
    assert target_in_answers(0.1, 8).startswith("--target-refusal 0.1 allows 0 of 8")
    assert "one answer = 12.5%" in target_in_answers(0.1, 8)
    assert "allows 1 of 16" in target_in_answers(0.1, 16)
    assert "allows 1 of 8" in target_in_answers(0.125, 8)  # exactly one answer's share
    warning = coarse_target_warning(0.1, 8)
    assert warning is not None
    assert "no refused answer at all" in warning
    assert "--target-refusal 0.125" in warning
    for target, n in ((0.125, 8), (0.0, 8), (0.1, 16), (1.0, 8)):
        assert coarse_target_warning(target, n) is None, (target, n)


def test_show_and_export_state_the_resolution(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model, tok = organism()
    harmful, benign = prompts()
    folder = tmp_path / "s"
    optimize(model, tok, harmful, benign, config=quick(trials=2), run_dir=folder, neutral=neutral())
    shown = CliRunner().invoke(cli, ["optimize", str(folder), "--show"])
    assert shown.exit_code == 0, shown.output
    assert "16 held-out positive prompts (one answer = 6.25%)" in shown.output
    # 0.05 is finer than one of 16 answers: a warning, whatever the export then finds
    out = tmp_path / "x.circuit"
    result = CliRunner().invoke(
        cli, ["optimize", str(folder), "--export", str(out), "--target-refusal", "0.05"]
    )
    assert result.exit_code in (0, 2), result.exception
    assert "allows 0 of 16 held-out answers" in caplog.text  # a warning (stderr in the CLI)
    assert "--target-refusal 0.0625 to allow one" in caplog.text
    caplog.clear()
    # at the resolution itself, no warning; the export line says what the target allows
    result = CliRunner().invoke(
        cli, ["optimize", str(folder), "--export", str(out), "--target-refusal", "1", "--force"]
    )
    assert result.exit_code == 0, (result.output, result.exception)
    assert "allow one" not in caplog.text
    assert "--target-refusal 1 allows 16 of 16 held-out answers" in result.output


# --- no silent stages ------------------------------------------------------------------------


def test_every_stage_before_the_trials_says_what_it_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stages that were silent (the unchanged model's answers, opening the study, fitting
    the baselines' vectors) have shown a bar naming them by the time their work starts."""
    from neurosteer.workflows.optimization import baselines, objectives
    from neurosteer.workflows.optimization import run as run_module

    shown: list[str] = []
    at_start: dict[str, str] = {}

    def spy(module: object, name: str) -> None:
        real = getattr(module, name)

        def wrapper(*args: object, **kwargs: object) -> object:
            shown.append(capsys.readouterr().err)
            at_start[name] = "".join(shown)
            if name == "contrast_vectors":
                assert kwargs.get("progress") is True
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)

    spy(objectives, "measure_refusal")
    spy(run_module, "open_study")
    spy(baselines, "contrast_vectors")
    model, tok = organism()
    harmful, benign = prompts()
    config = quick(trials=1, baselines=True, baseline_strengths=(1.0,))
    run_module.optimize(
        model, tok, harmful, benign, config=config, run_dir=tmp_path / "s", progress=True
    )
    assert "answers of 40 tokens to 16 held-out positive prompts" in at_start["measure_refusal"]
    assert f"opening {tmp_path / 's' / 'study.db'}" in at_start["open_study"]
    assert "contrast_vectors" in at_start
