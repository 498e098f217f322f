"""Stage 9 (search), the export: one trial of a search as a circuit file with its multiplier.

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

import math
from dataclasses import replace
from pathlib import Path

from neurosteer.circuit import Circuit, PromptInfo, SearchProvenance
from neurosteer.errors import InputError
from neurosteer.optimization import store
from neurosteer.optimization.space import Params, build_circuit
from neurosteer.optimization.study import (
    TrialResult,
    database_errors,
    load_study,
    trial_results,
)

DEFAULT_TARGET = 0.10
"""The default `--target-refusal`: at most 10% of held-out answers refused or degenerate."""


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
