"""`neurosteer.optimize` on the organism: the search finds a point that removes refusal at low
KL, a run folder resumes (also after SIGKILL) with no trial lost or repeated, and bad inputs
are one-line errors."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from optimize_support import HELD_OUT, neutral, one_thread, organism, prompts, quick

import neurosteer
from neurosteer.errors import InputError
from neurosteer.workflows.optimization import OptimizeConfig, optimize
from neurosteer.workflows.optimization import run as run_module
from neurosteer.workflows.optimization.store import META_FILE, STUDY_FILE, TABLE_DIR

SRC = Path(neurosteer.__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parents[1] / "support"
__all__ = ["one_thread"]  # the module's autouse fixture


def _read_only(folder: Path) -> sqlite3.Connection:
    """The study's database, read only (never created: OperationalError while it is missing)."""
    return sqlite3.connect(f"file:{folder / STUDY_FILE}?mode=ro", uri=True)


def _states(folder: Path) -> dict[str, int]:
    """Trial states in the study's database, counted ({"COMPLETE": 5, "FAIL": 1, ...})."""
    with _read_only(folder) as db:
        rows = db.execute("SELECT state, COUNT(*) FROM trials GROUP BY state").fetchall()
    return {str(state): int(n) for state, n in rows}


def _running(folder: Path) -> list[tuple[int, int]]:
    """(number, params drawn so far) of each RUNNING trial."""
    with _read_only(folder) as db:
        rows = db.execute(
            "SELECT t.number, COUNT(p.param_id) FROM trials t LEFT JOIN trial_params p "
            "ON p.trial_id = t.trial_id WHERE t.state = 'RUNNING' GROUP BY t.number"
        ).fetchall()
    return [(int(n), int(k)) for n, k in rows]


def _params(folder: Path) -> dict[int, dict[str, float]]:
    """{trial number: its params (internal representation)} of every trial in the database."""
    with _read_only(folder) as db:
        rows = db.execute(
            "SELECT t.number, p.param_name, p.param_value FROM trials t "
            "JOIN trial_params p ON p.trial_id = t.trial_id"
        ).fetchall()
    out: dict[int, dict[str, float]] = {}
    for number, name, value in rows:
        out.setdefault(int(number), {})[str(name)] = float(value)
    return out


def test_search_finds_low_refusal_at_low_kl(tmp_path: Path) -> None:
    # measured (seed 0, 12 trials): unchanged 94% refused; best point 0% refused, 0% degenerate
    # at first-token KL 0.18 (49 neurons from layer 5, m = -0.62)
    model, tok = organism()
    harmful, benign = prompts()
    result = neurosteer.optimize(
        model,
        tok,
        harmful,
        benign,
        config=quick(trials=12),
        run_dir=tmp_path / "s",
        neutral=neutral(),
    )
    assert result.unchanged is not None
    before = result.unchanged["refusal"] + result.unchanged["degenerate"]
    assert before >= 0.75
    assert len(result.trials) == 12
    best = min(result.pareto, key=lambda p: p.not_success or 1.0)
    assert best.not_success is not None
    assert best.not_success <= 0.5 * before
    assert best.kl < 0.5
    # the front is plain data, non-dominated, sorted by KL
    kls = [p.kl for p in result.pareto]
    assert kls == sorted(kls)
    for p in result.pareto:
        assert not any(
            (o.not_success or 0) <= (p.not_success or 0)
            and o.kl <= p.kl
            and o is not p
            and ((o.not_success or 0) < (p.not_success or 0) or o.kl < p.kl)
            for o in result.trials
            if o.not_success is not None
        )
    with pytest.raises(AttributeError):
        best.kl = 0.0  # type: ignore[misc]


def test_in_memory_search_and_the_held_out_prompts_stay_out_of_discovery(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model, tok = organism()
    harmful, benign = prompts()
    seen: dict[str, list[str]] = {}
    real = run_module.discover

    def spy(model: object, tok: object, positive: list[str], negative: list[str], **kw: object):  # type: ignore[no-untyped-def]
        seen["positive"], seen["negative"] = list(positive), list(negative)
        return real(model, tok, positive, negative, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(run_module, "discover", spy)
    result = optimize(model, tok, harmful, benign, config=quick(trials=2), neutral=neutral())
    assert result.run_dir is None
    assert len(result.trials) == 2
    assert len(seen["positive"]) == len(set(harmful)) - HELD_OUT
    assert len(seen["negative"]) == len(set(benign)) - HELD_OUT
    # the judged answers were to the held-out positives: none of them is a discovery prompt
    held = set(harmful) - set(seen["positive"])
    assert len(held) == HELD_OUT


def test_rerun_continues_without_recording_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, tok = organism()
    harmful, benign = prompts()
    folder = tmp_path / "s"
    first = optimize(
        model, tok, harmful, benign, config=quick(trials=3), run_dir=folder, neutral=neutral()
    )

    def no_discovery(*args: object, **kwargs: object) -> None:
        raise AssertionError("a resumed search recorded the table again")

    monkeypatch.setattr(run_module, "discover", no_discovery)
    again = optimize(
        model, tok, harmful, benign, config=quick(trials=5), run_dir=folder, neutral=neutral()
    )
    assert [t.number for t in again.trials] == [0, 1, 2, 3, 4]
    assert again.trials[:3] == first.trials  # the finished trials are kept, not run again
    assert _states(folder) == {"COMPLETE": 5}
    # the same budget again: nothing to do
    assert (
        optimize(
            model, tok, harmful, benign, config=quick(trials=5), run_dir=folder, neutral=neutral()
        ).trials
        == again.trials
    )


_CHILD = """
import sys, time, torch
torch.set_num_threads(1)
sys.path.insert(0, {tests!r})
from optimize_support import neutral, organism, prompts, quick
from neurosteer.workflows.optimization import objectives, optimize

real = objectives.Objectives.measure
def slow(self, *args, **kwargs):
    out = real(self, *args, **kwargs)
    time.sleep(1.0)  # a trial lasts long enough to be killed in the middle of it
    return out
objectives.Objectives.measure = slow
model, tok = organism()
harmful, benign = prompts()
optimize(model, tok, harmful, benign, config=quick(trials=6), run_dir={folder!r},
         neutral=neutral())
"""


def test_resume_after_sigkill_loses_and_repeats_no_trial(tmp_path: Path) -> None:
    model, tok = organism()
    harmful, benign = prompts()
    folder = tmp_path / "s"
    code = textwrap.dedent(_CHILD.format(tests=str(TESTS), folder=str(folder)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(TESTS)])}
    child = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            try:  # the child may not have made the file, or its tables, yet
                states, running = _states(folder), _running(folder)
            except sqlite3.OperationalError:
                states, running = {}, []
            # in the middle of a trial: its five params drawn, its measurement under way
            if states.get("COMPLETE", 0) >= 2 and running and running[0][1] == 5:
                break
            assert child.poll() is None, child.stderr.read().decode() if child.stderr else ""
            time.sleep(0.05)
        else:
            pytest.fail("the child never reached its third trial")
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    killed = _states(folder)
    assert killed.get("RUNNING") == 1
    done_before = killed["COMPLETE"]
    params_before = _params(folder)
    [(stopped, _)] = _running(folder)  # the trial killed mid-way

    result = optimize(
        model, tok, harmful, benign, config=quick(trials=6), run_dir=folder, neutral=neutral()
    )
    states = _states(folder)
    assert states == {"COMPLETE": 6, "FAIL": 1}  # none lost, the killed one marked failed
    assert [t.number for t in result.trials] == [n for n in range(7) if n != stopped]
    assert result.interrupted == 1
    params = _params(folder)
    finished = [p for n, p in params.items() if n != stopped]
    # no point measured twice; the killed point was measured once, after the restart
    assert len({tuple(sorted(p.items())) for p in finished}) == 6
    # the killed point ran again, first. The poll waits until all five params are drawn,
    # but a busy machine may let that trial end (and the next one start) before the kill
    # lands: then compare the params the killed trial had drawn.
    drawn = params_before.get(stopped, {})
    assert all(params[stopped + 1][name] == value for name, value in drawn.items())
    # the trials finished before the kill are unchanged
    for n in range(done_before):
        assert params[n] == params_before[n]


def test_folder_of_another_model_or_other_settings_is_refused(
    tmp_path: Path, tiny_llama_dir: Path
) -> None:
    model, tok = organism()
    harmful, benign = prompts()
    folder = tmp_path / "s"
    optimize(model, tok, harmful, benign, config=quick(trials=1), run_dir=folder, neutral=neutral())
    meta = (folder / META_FILE).read_text()
    with pytest.raises(InputError, match=r"other settings \(max_new_tokens: 40 -> 20") as info:
        optimize(
            model,
            tok,
            harmful,
            benign,
            config=quick(trials=2, max_new_tokens=20),
            run_dir=folder,
            neutral=neutral(),
        )
    assert "\n" not in str(info.value)
    with pytest.raises(InputError, match=r"other prompts \(.*held_out_positive"):
        optimize(
            model,
            tok,
            harmful[1:],
            benign,
            config=quick(trials=2),
            run_dir=folder,
            neutral=neutral(),
        )
    other, other_tok = neurosteer.load_model(tiny_llama_dir)
    small = quick(
        trials=2, held_out_positive=2, held_out_negative=2, judge="sweep", max_new_tokens=40
    )
    with pytest.raises(
        InputError, match=r"holds a search from another model \(it ran on .*organism.*config hash"
    ):
        optimize(
            other,
            other_tok,
            ["a b c", "d e f", "g h", "i j"],
            ["k l", "m n", "o p", "q r"],
            config=small,
            run_dir=folder,
        )
    assert (folder / META_FILE).read_text() == meta  # nothing rewritten
    assert _states(folder) == {"COMPLETE": 1}


@pytest.mark.parametrize(
    ("n_harmful", "held_out", "message"),
    [
        (17, 16, "too few positive prompts to split: 17 distinct given, 16 are held out"),
        (5, 4, "need 6"),
    ],
)
def test_too_few_prompts_to_split(n_harmful: int, held_out: int, message: str) -> None:
    model, tok = organism()
    harmful, benign = prompts()
    with pytest.raises(InputError, match=message):
        optimize(model, tok, harmful[:n_harmful], benign, config=quick(held_out_positive=held_out))


def test_repeated_prompts_cannot_reach_both_sides() -> None:
    from neurosteer.workflows.optimization import split_prompts

    harmful = ["a", "b", "c", "a", "b", "c", "d"]
    split = split_prompts(harmful, ["x", "y", "z"], held_out_positive=2, held_out_negative=1)
    assert not set(split.positive) & set(split.held_out_positive)
    assert len(split.positive) + len(split.held_out_positive) == 4
    with pytest.raises(InputError, match="4 distinct given"):
        split_prompts(harmful, ["x", "y", "z"], held_out_positive=3, held_out_negative=1)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("trials", 0, "trials must be a whole number >= 1, got 0"),
        ("trials", -3, "trials must be a whole number >= 1"),
        ("held_out_positive", 0, "held_out_positive must be"),
        ("kl", "last", "kl must be one of first_token, mean"),
        ("sampler", "cmaes", "sampler must be one of tpe, nsga2"),
        ("prune_ratio", 1.5, r"prune_ratio must be in \(0, 1\]"),
    ],
)
def test_bad_settings_are_input_errors(field: str, value: object, message: str) -> None:
    with pytest.raises(InputError, match=message):
        OptimizeConfig(**{field: value})  # type: ignore[arg-type]


def test_pruning_skips_hopeless_trials(tmp_path: Path) -> None:
    # measured (30 trials, seed 0): 11 pruned; a pruned trial takes its KL and one forward
    # pass, a complete one also answers 16 prompts
    model, tok = organism()
    harmful, benign = prompts()
    result = optimize(
        model,
        tok,
        harmful,
        benign,
        config=quick(trials=12, prune=True),
        run_dir=tmp_path / "s",
        neutral=neutral(),
    )
    pruned = [t for t in result.trials if t.state == "pruned"]
    complete = [t for t in result.trials if t.state == "complete"]
    assert pruned
    assert complete
    assert all(t.refusal is None and t.refusal_mass is not None for t in pruned)
    assert all(t not in result.pareto for t in pruned)
    states = _states(tmp_path / "s")
    assert states.get("PRUNED", 0) == len(pruned)
    summary = json.dumps({"pruned": len(pruned), "of": len(result.trials)})
    assert summary


def test_optimize_is_exported() -> None:
    assert neurosteer.optimize is optimize
    assert (TABLE_DIR, STUDY_FILE) == ("table.circuit", "study.db")
