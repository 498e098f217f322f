"""The export: one trial of a search as a circuit file with its multiplier.

Which trial (`choose_trial`):

    --trial N           trial N, which must be a complete trial of the study
    default rule        among the complete trials whose refusal + degenerate share is at most
                        the target (`--target-refusal`, default 0.10), the lowest KL; ties go
                        to the lower refusal + degenerate, then to the lower trial number. No
                        such trial is an error that names the closest one.

The rule reads only the study, so the same folder and target always give the same circuit.
The circuit is rebuilt from the search's table (`space.build_circuit`, no model needed) and
records its multiplier (`settings.multiplier`, used by `steer`/`bake`/`generate` when none is
given), its sign rule and score, and the search it came from (`Circuit.search`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from neurosteer.errors import InputError
from neurosteer.methods.circuit import Circuit, PromptInfo, SearchProvenance
from neurosteer.workflows.optimization import store
from neurosteer.workflows.optimization.baselines import BaselinePoint
from neurosteer.workflows.optimization.space import Params, build_circuit
from neurosteer.workflows.optimization.study import (
    TrialResult,
    database_errors,
    load_study,
    trial_results,
)

logger = logging.getLogger(__name__)

DEFAULT_TARGET = 0.10
"""The default `--target-refusal`: at most 10% of held-out answers refused or degenerate."""

METHOD_NAMES = {"caa": "CAA", "direction": "directional ablation"}


def target_in_answers(target: float, held_out: int) -> str:
    """The target refusal in held-out answers, in words: with `held_out` answers the share
    refused + degenerate moves in steps of one answer (1 / held_out), so a target allows
    floor(target · held_out) answers.

    Example: `target_in_answers(0.1, 8)` says 0.1 allows 0 of 8 answers (one = 12.5%).
    """
    allowed = math.floor(target * held_out + 1e-9)
    return (
        f"--target-refusal {target:g} allows {allowed} of {held_out} held-out answers refused "
        f"or degenerate (one answer = {100 / held_out:.3g}%)"
    )


def coarse_target_warning(target: float, held_out: int) -> str | None:
    """A warning when a target above 0 is finer than one held-out answer (it then means
    zero refusals), else None.

    The target is not rounded: rounding up would let the export pick a trial that refuses
    more than the user asked for, and rounding down is what the rule does anyway; so the
    rule keeps the target as given and this says what it amounts to.
    """
    if held_out < 1 or not 0 < target < 1 / held_out - 1e-12:
        return None
    return (
        f"{target_in_answers(target, held_out)}: it asks for no refused answer at all; give "
        f"--target-refusal {1 / held_out:.3g} to allow one, or hold out more prompts"
    )


def dominating_baselines(
    trial: TrialResult, baselines: Sequence[BaselinePoint]
) -> list[BaselinePoint]:
    """The baseline points at least as good as `trial` on both objectives (refusal +
    degenerate, KL) and better on one, best first (lowest refusal + degenerate, then KL)."""
    if trial.not_success is None:
        return []
    a, b = trial.not_success, trial.kl
    better = [
        p
        for p in baselines
        if p.not_success <= a + 1e-12 and p.kl <= b and (p.not_success < a - 1e-12 or p.kl < b)
    ]
    return sorted(better, key=lambda p: (p.not_success, p.kl, p.method, p.s))


def baseline_verdict(
    front: Sequence[TrialResult], baselines: Sequence[BaselinePoint]
) -> str | None:
    """One plain sentence when a baseline beats the CNA search's front, else None.

    "Beats" is Pareto dominance on the search's two objectives: every front trial a
    baseline point dominates is named by the best such point (`dominating_baselines`).
    """
    beaten = [(t, dominating_baselines(t, baselines)) for t in front]
    beaten = [(t, b) for t, b in beaten if b]
    if not beaten:
        return None
    trial, points = min(beaten, key=lambda tb: (tb[0].not_success or 0.0, tb[0].kl))
    best = points[0]
    which = (
        "every trial on the CNA front"
        if len(beaten) == len(front)
        else f"{len(beaten)} of the {len(front)} trials on the CNA front"
    )
    return (
        f"A baseline beats {which}: {METHOD_NAMES.get(best.method, best.method)} at s = "
        f"{best.s:g} (layer {best.layer}) has refused + degenerate {best.not_success:.0%} at "
        f"KL {best.kl:.3g}, where CNA trial {trial.number} has {trial.not_success:.0%} at KL "
        f"{trial.kl:.3g}; on these prompts that baseline is the better choice"
    )


def choose_trial(
    results: list[TrialResult], *, trial: int | None = None, target: float = DEFAULT_TARGET
) -> tuple[TrialResult, str]:
    """The trial to export and the rule that chose it, in words (see the module docstring).

    Raises:
        InputError: `trial` is not a complete trial, `target` is outside [0, 1], or no
            complete trial meets the target.
    """
    complete = [r for r in results if r.not_success is not None]
    if trial is not None:
        found = [r for r in complete if r.number == trial]
        if not found:
            numbers = ", ".join(str(r.number) for r in complete[:20]) or "none"
            raise InputError(
                f"trial {trial} is not a complete trial of this study (complete: {numbers}"
                f"{', ...' if len(complete) > 20 else ''}); `--show` lists them"
            )
        return found[0], f"--trial {trial}"
    if not (isinstance(target, (int, float)) and math.isfinite(target) and 0 <= target <= 1):
        raise InputError(f"the target refusal must be a share in [0, 1], got {target!r}")
    if not complete:
        raise InputError("the study has no complete trial yet; run the search first")
    eligible = [r for r in complete if (r.not_success or 0.0) <= target + 1e-12]
    if not eligible:
        closest = min(complete, key=lambda r: (r.not_success or 0.0, r.kl, r.number))
        raise InputError(
            f"no complete trial has refusal + degenerate <= {target:g} (the lowest is "
            f"{closest.not_success:.3g}, trial {closest.number}); raise --target-refusal or "
            "pick a trial with --trial N"
        )
    chosen = min(eligible, key=lambda r: (r.kl, r.not_success or 0.0, r.number))
    return chosen, f"lowest KL among complete trials with refusal + degenerate <= {target:g}"


def export_circuit(
    run_dir: str | Path,
    out: str | Path,
    *,
    trial: int | None = None,
    target: float = DEFAULT_TARGET,
    force: bool = False,
) -> tuple[Circuit, TrialResult]:
    """Write the chosen trial's circuit to `out` (a circuit folder); returns it and the trial.

    Raises:
        InputError: as `choose_trial`; the folder holds no search; `out` exists without
            `force`.
    """
    folder = Path(run_dir)
    meta = store.read_meta(folder)
    with database_errors(folder):
        results = trial_results(load_study(folder))
    if trial is None:
        warning = coarse_target_warning(target, held_out_count(meta))
        if warning is not None:
            logger.warning("%s", warning)
    chosen, rule = choose_trial(results, trial=trial, target=target)
    table = Circuit.load(folder / store.TABLE_DIR)
    params = Params(
        k=chosen.k_asked,
        multiplier=chosen.multiplier,
        sign=chosen.sign,
        score=chosen.score,
        first_layer_share=chosen.first_layer_share,
    )
    circuit = build_circuit(table, params)
    settings = meta["settings"]
    prompts = meta["prompts"]
    provenance = SearchProvenance(
        study=str(folder),
        trial=chosen.number,
        rule=rule,
        refusal=float(chosen.refusal or 0.0),
        degenerate=float(chosen.degenerate or 0.0),
        kl=chosen.kl,
        kl_measure=str(settings["kl"]),
        judge=str(settings["judge"]),
        max_new_tokens=int(settings["max_new_tokens"]),
        held_out={
            side: PromptInfo(**prompts[f"held_out_{side}"]) for side in ("positive", "negative")
        },
        n_trials=len(results),
        model_name=str(meta["model"]["name_or_path"]),
    )
    circuit = replace(circuit, search=provenance)
    circuit.save(out, force=force)
    return circuit, chosen


def held_out_count(meta: dict[str, object]) -> int:
    """The number of held-out positive prompts a search's optimize.json records (0 if none)."""
    prompts = meta.get("prompts")
    if not isinstance(prompts, dict):
        return 0
    side = prompts.get("held_out_positive")
    count = side.get("count") if isinstance(side, dict) else None
    return count if isinstance(count, int) else 0
