"""Re-run one recorded point of a run folder and say whether it matches its record.

A sweep folder (config.json) gives a point: its interventions are read back from the folder
(the circuit, the vectors, the fitted layers), its evaluation prompts from the point's answers
file (checked against the prompt hashes config.json records), and it is measured again as
`run_sweep` measures it. A search folder (optimize.json) gives a trial: its circuit is selected
again from the stored table with the trial's parameters, and measured against the stored
reference (held-out prompts, the unchanged model's KL reference) as the trial was.

What is compared, and how:
  * exactly: greedy answers, their labels and every share counted from them (refusal,
    compliance, degenerate, distinct-4, MMLU accuracy), a trial's k and pruned state; greedy
    decoding is deterministic on one machine, so any difference is reported;
  * within `TOLERANCE` (absolute plus relative): KL values and refusal-token masses, floats
    summed in an order that threads and kernels may change.
The recorded environment (`neurosteer.model.environment`) is compared with this one and each
difference named, since it is the usual reason for a mismatch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from neurosteer.errors import InputError
from neurosteer.methods.circuit import Circuit
from neurosteer.model.environment import environment, environment_differences
from neurosteer.model.layout import ModelLayout
from neurosteer.model.runtime import runs_model
from neurosteer.prompts.render import prompt_hash
from neurosteer.workflows.judges import get_judge
from neurosteer.workflows.optimization import store as search_store
from neurosteer.workflows.optimization.config import OptimizeConfig
from neurosteer.workflows.optimization.objectives import Objectives
from neurosteer.workflows.optimization.space import build_circuit, suggest
from neurosteer.workflows.optimization.study import load_study, optuna_module
from neurosteer.workflows.sweep.config import SweepConfig
from neurosteer.workflows.sweep.methods import fit_methods
from neurosteer.workflows.sweep.runner import measure_point
from neurosteer.workflows.sweep.store import (
    CONFIG_FILE,
    point_key,
    point_label,
    read_answers,
    read_config,
    read_results,
)

#: Floats match when |now − recorded| <= absolute + relative · |recorded|.
TOLERANCE = {"absolute": 1e-6, "relative": 1e-4}


@dataclass(frozen=True)
class Check:
    """One recorded value measured again.

    Attributes:
        name: what it is ("harmful.refusal", "kl.mean", "answers", ...).
        recorded, now: the two values.
        exact: compared exactly (True) or within `TOLERANCE` (False).
        matches: whether they agree by that rule.
    """

    name: str
    recorded: Any
    now: Any
    exact: bool
    matches: bool


@dataclass(frozen=True)
class Reproduction:
    """What re-running a point gave.

    Attributes:
        what: the point ("cna at s = 0.5", "trial 3").
        checks: every compared value.
        environment: the differences between the recorded environment and this one.
    """

    what: str
    checks: tuple[Check, ...]
    environment: tuple[str, ...]

    @property
    def matches(self) -> bool:
        return all(c.matches for c in self.checks)


def run_kind(run_dir: Path) -> str:
    """ "sweep" or "search" by the folder's record.

    Raises:
        InputError: neither record in the folder.
    """
    if (run_dir / CONFIG_FILE).is_file():
        return "sweep"
    if (run_dir / search_store.META_FILE).is_file():
        return "search"
    raise InputError(
        f"'{run_dir}' holds neither a sweep ({CONFIG_FILE}) nor a search "
        f"({search_store.META_FILE}); give a run folder"
    )


def recorded_model(run_dir: Path) -> tuple[str, dict[str, Any]]:
    """(the model's name or path, the recorded environment) of a run folder."""
    meta = _meta(run_dir)
    return str(meta["model"]["name_or_path"]), dict(meta.get("environment") or {})


def _meta(run_dir: Path) -> dict[str, Any]:
    if run_kind(run_dir) == "sweep":
        meta = read_config(run_dir)
        assert meta is not None  # run_kind saw the file
        return meta
    return search_store.read_meta(run_dir)


@runs_model
def reproduce_sweep_point(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    run_dir: Path,
    layout: ModelLayout,
    *,
    point: str | None = None,
) -> Reproduction:
    """Measure a recorded sweep point again (module docstring).

    Args:
        model, tokenizer: the run's model (nothing active on it).
        run_dir: the sweep folder.
        layout: the model's layout.
        point: "METHOD:STRENGTH" or "random:STRENGTH:SEED" (default: the first recorded point
            that steers, else the baseline).

    Raises:
        InputError: no such point, its answers file missing, or prompts whose hashes differ
            from the record.
    """
    meta = _meta(run_dir)
    config = SweepConfig.from_dict(meta["settings"])
    record = _pick_point(read_results(run_dir), point)
    rows = read_answers(run_dir, record["answers_file"])
    sets = {
        name: [r["prompt"] for r in rows if r["set"] == name] for name in ("harmful", "harmless")
    }
    for name, prompts in sets.items():
        if prompt_hash(prompts) != meta["prompts"][name]["sha256"]:
            raise InputError(
                f"the {name} prompts of {record['answers_file']} are not those config.json "
                "records; the folder was changed by hand"
            )
    fitted = fit_methods(
        model, tokenizer, config, [], [], run_dir, judge=get_judge(config.judge), layout=layout
    )
    key = point_key(record)
    now, now_rows = measure_point(model, tokenizer, config, sets, fitted, layout, key)
    checks = [_answers_check(rows, now_rows)]
    for name in ("harmful", "harmless"):
        for field, value in record[name].items():
            checks.append(_check(f"{name}.{field}", value, now[name][field], exact=True))
    for field in ("first_token", "mean"):
        checks.append(_check(f"kl.{field}", record["kl"][field], now["kl"][field], exact=False))
    if record.get("mmlu"):
        checks.append(
            _check("mmlu.accuracy", record["mmlu"]["accuracy"], now["mmlu"]["accuracy"], True)
        )
    method, strength, seed = key
    return Reproduction(
        what=f"{point_label(method, seed)} at s = {strength:g}",
        checks=tuple(checks),
        environment=tuple(_environment(meta, model)),
    )


@runs_model
def reproduce_trial(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    run_dir: Path,
    layout: ModelLayout,
    *,
    trial: int | None = None,
) -> Reproduction:
    """Measure a recorded search trial again (module docstring).

    Args:
        trial: the trial number (default: the first finished one).

    Raises:
        InputError: no such finished trial, or a folder without its table or reference.
    """
    optuna = optuna_module()
    meta = _meta(run_dir)
    config = OptimizeConfig.from_dict(meta["settings"])
    reference = search_store.load_reference(run_dir)
    table_dir = run_dir / search_store.TABLE_DIR
    if reference is None or not table_dir.exists():
        raise InputError(f"'{run_dir}' lacks its table or reference; it cannot be reproduced")
    held_out = list(reference.unchanged.prompts)
    if prompt_hash(held_out) != meta["prompts"]["held_out_positive"]["sha256"]:
        raise InputError(
            f"the held-out prompts of '{run_dir}' are not those optimize.json records; the "
            "folder was changed by hand"
        )
    table = Circuit.load(table_dir)
    table.check_fits(layout)
    recorded = _measured_trial(run_dir, trial)
    n_neurons = table.model.n_layers * table.model.d_mlp
    params = suggest(optuna.trial.FixedTrial(recorded.params), config.space, n_neurons)
    circuit = build_circuit(table, params)
    judge = get_judge(config.judge)
    objectives = Objectives(model, tokenizer, held_out, judge, config, reference)
    pruned = recorded.state == optuna.trial.TrialState.PRUNED
    outcome = objectives.measure(circuit, params.multiplier, prune=pruned)
    attrs = recorded.user_attrs
    checks = [
        _check("k", attrs["k"], len(circuit), exact=True),
        _check("pruned", pruned, outcome.pruned, exact=True),
    ]
    for name in ("refusal", "degenerate", "compliance"):
        if name in attrs:
            checks.append(_check(name, attrs[name], getattr(outcome, name), exact=True))
    for name in ("kl", "kl_first_token", "kl_mean", "refusal_mass"):
        if name in attrs:
            checks.append(_check(name, attrs[name], getattr(outcome, name), exact=False))
    return Reproduction(
        what=f"trial {recorded.number}",
        checks=tuple(checks),
        environment=tuple(_environment(meta, model)),
    )


def _measured_trial(run_dir: Path, trial: int | None) -> Any:
    """The study's measured trial `trial` (an optuna `FrozenTrial`; None: the first one).

    Raises:
        InputError: no such measured trial (the message lists those there are).
    """
    optuna = optuna_module()
    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    trials = [t for t in load_study(run_dir).trials if t.state in done and "k" in t.user_attrs]
    chosen = [t for t in trials if trial is None or t.number == trial][:1]
    if not chosen:
        numbers = ", ".join(str(t.number) for t in trials) or "none"
        raise InputError(f"no measured trial {trial} in '{run_dir}' (measured: {numbers})")
    return chosen[0]


def _pick_point(records: list[dict[str, Any]], point: str | None) -> dict[str, Any]:
    """The record `point` names ("METHOD:STRENGTH[:SEED]"), or the first steered one."""
    if not records:
        raise InputError("the sweep folder holds no finished point yet")
    if point is None:
        steered = [r for r in records if r["method"] != "baseline"]
        return (steered or records)[0]
    parts = point.split(":")
    try:
        method, strength = parts[0], float(parts[1])
        seed = int(parts[2]) if len(parts) > 2 else None
    except (IndexError, ValueError):
        raise InputError(
            f"--point {point!r} is not METHOD:STRENGTH or random:STRENGTH:SEED (e.g. cna:0.5)"
        ) from None
    for record in records:
        if point_key(record) == (method, strength, seed):
            return record
    known = ", ".join(
        f"{r['method']}:{r['strength']:g}" + (f":{r['seed']}" if r["seed"] is not None else "")
        for r in records
    )
    raise InputError(f"the sweep recorded no point {point}; recorded: {known}")


def _answers_check(recorded: list[dict[str, Any]], now: list[dict[str, Any]]) -> Check:
    """The answers and labels, compared row by row; the values are the counts that differ."""
    pairs = list(zip(recorded, now, strict=False))
    differ = sum((a["answer"], a["label"]) != (b["answer"], b["label"]) for a, b in pairs) + abs(
        len(recorded) - len(now)
    )
    return Check("answers differing", 0, differ, exact=True, matches=differ == 0)


def _check(name: str, recorded: Any, now: Any, exact: bool) -> Check:
    if exact or not isinstance(recorded, (int, float)) or not isinstance(now, (int, float)):
        return Check(name, recorded, now, exact=True, matches=recorded == now)
    allowed = TOLERANCE["absolute"] + TOLERANCE["relative"] * abs(recorded)
    close = math.isfinite(now) and abs(now - recorded) <= allowed
    return Check(name, recorded, now, exact=False, matches=close)


def _environment(meta: dict[str, Any], model: PreTrainedModel) -> list[str]:
    return environment_differences(meta.get("environment"), environment(model))
