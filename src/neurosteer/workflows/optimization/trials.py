"""The trials: ask a point, re-select its circuit, measure it, tell.

Each trial ends COMPLETE (measured), PRUNED (hopeless by the first token, or no candidate
neuron) or, on any error, FAIL with its point enqueued to run again first (a kill leaves it
RUNNING instead, for `study.recover_interrupted`). The progress bar's note is the lowest
refused + degenerate share so far and the size of the Pareto front.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from neurosteer.methods.circuit import Circuit
from neurosteer.workflows.optimization.answers import append_answers, trial_record
from neurosteer.workflows.optimization.config import OptimizeConfig
from neurosteer.workflows.optimization.objectives import Objectives, Outcome
from neurosteer.workflows.optimization.space import NoCandidates, build_circuit, suggest
from neurosteer.workflows.optimization.study import (
    TrialResult,
    finished,
    optuna_module,
    pareto_front,
    requeue,
    result_of,
    trial_results,
)


def run_trials(
    study: Any,
    table: Circuit,
    objectives: Objectives,
    config: OptimizeConfig,
    progress: bool,
    folder: Path | None = None,
) -> None:
    """Ask, measure and tell trials until the study holds `config.trials` finished ones; with
    a run `folder`, each trial's judged answers are appended to its answers file first."""
    done = finished(study)
    results = trial_results(study)
    with tqdm(
        total=config.trials,
        initial=min(done, config.trials),
        desc="optimize",
        unit="trial",
        disable=not progress,
    ) as bar:
        bar.set_postfix_str(_best(results))
        while done < config.trials:
            result = _one_trial(study, table, objectives, config, folder)
            if result is not None:
                results.append(result)
            done += 1
            bar.update(1)
            bar.set_postfix_str(_best(results))


def _one_trial(
    study: Any,
    table: Circuit,
    objectives: Objectives,
    config: OptimizeConfig,
    folder: Path | None,
) -> TrialResult | None:
    """Run one trial to its end (COMPLETE or PRUNED), its answers kept in `folder` before the
    study hears of it; on any error mark it FAIL, enqueue its point again and re-raise."""
    optuna = optuna_module()
    trial = study.ask()
    try:
        params = suggest(trial, config.space, int(table.model.valid_mask().sum()))
        try:
            circuit = build_circuit(table, params)
        except NoCandidates as err:
            trial.set_user_attr("pruned_reason", str(err))
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return None
        outcome = objectives.measure(circuit, params.multiplier, prune=config.prune)
        if folder is not None and outcome.answers is not None:
            record = trial_record(
                trial.number, trial.params, config.judge, config.max_new_tokens, outcome.answers
            )
            append_answers(folder, record)
        attrs = _attributes(outcome, len(circuit), params.first_layer(table.model.n_layers))
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        if outcome.pruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, [outcome.not_success, outcome.kl])
    except BaseException:
        with contextlib.suppress(Exception):
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            requeue(study, trial.params, trial.number)
        raise
    return result_of(trial.number, not outcome.pruned, trial.params, attrs)


def _attributes(outcome: Outcome, k: int, first_layer: int) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "k": k,
        "first_layer": first_layer,
        "kl": outcome.kl,
        "kl_first_token": outcome.kl_first_token,
        "seconds": round(outcome.seconds, 3),
    }
    optional = {
        "refusal": outcome.refusal,
        "degenerate": outcome.degenerate,
        "compliance": outcome.compliance,
        "kl_mean": outcome.kl_mean,
        "refusal_mass": outcome.refusal_mass,
    }
    attrs.update({key: value for key, value in optional.items() if value is not None})
    return attrs


def _best(results: list[TrialResult]) -> str:
    """The progress bar's note: the lowest refusal + degenerate so far, and the front's size."""
    done = [r for r in results if r.not_success is not None]
    if not done:
        return "no finished trial yet"
    best = min(done, key=lambda r: (r.not_success or 0.0, r.kl, r.number))
    return (
        f"best refusal+degenerate {best.not_success:.2f} at KL {best.kl:.3g} "
        f"(#{best.number}); front {len(pareto_front(results))}"
    )
