"""Stage 9 (search), the loop: `optimize()` runs (or resumes) a search and returns its front.

    split prompts → record the table once → the unchanged reference once → trials (ask a
    point, re-select its circuit from the table, measure, tell) → baselines once → result

With a run folder every stage's product is kept there (`store`), so running the same search
again continues it: the table and the reference are read back, interrupted trials run again
first (`study.recover_interrupted`), and only the missing trials run.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from neurosteer._version import __version__
from neurosteer.circuit import Circuit
from neurosteer.discovery import discover, model_info
from neurosteer.errors import InputError
from neurosteer.evaluation.judges import get_judge
from neurosteer.layout import ModelLayout, resolve_layout
from neurosteer.optimization import baselines as baseline_points
from neurosteer.optimization import store
from neurosteer.optimization.baselines import BaselinePoint
from neurosteer.optimization.config import OptimizeConfig
from neurosteer.optimization.objectives import (
    MIN_REFUSAL_MASS,
    Objectives,
    Outcome,
    Reference,
    build_reference,
)
from neurosteer.optimization.space import NoCandidates, build_circuit, suggest
from neurosteer.optimization.split import Split, split_prompts
from neurosteer.optimization.study import (
    TrialResult,
    finished,
    load_study,
    open_study,
    optuna_module,
    pareto_front,
    recover_interrupted,
    requeue,
    result_of,
    trial_results,
)
from neurosteer.prompts import encode_for_model, prompt_hash

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchResult:
    """A search's outcome as plain data.

    Attributes:
        pareto: the Pareto front of the complete trials (by KL, then refusal + degenerate).
        trials: every finished trial (complete and pruned), by number.
        unchanged: the unchanged model's {"refusal", "compliance", "degenerate"} shares on
            the held-out positive prompts (None when not measured yet).
        baselines: CAA and directional ablation on the same terms (empty when not measured).
        interrupted: trials that were killed mid-run (marked failed; their points ran again).
        run_dir: the run folder (None for a search kept in memory).
    """

    pareto: tuple[TrialResult, ...]
    trials: tuple[TrialResult, ...]
    unchanged: dict[str, float] | None
    baselines: tuple[BaselinePoint, ...]
    interrupted: int
    run_dir: Path | None


def optimize(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    positive: Sequence[str],
    negative: Sequence[str],
    *,
    config: OptimizeConfig | None = None,
    run_dir: str | Path | None = None,
    neutral: Sequence[str] | None = None,
    layout: ModelLayout | None = None,
    progress: bool = False,
) -> SearchResult:
    """Search circuits and multipliers that remove the positive set's behaviour at least cost.

    Splits off held-out prompts (`config.held_out_positive` / `held_out_negative`), records the
    neuron table once on the rest, then runs `config.trials` Optuna trials minimising
    (refusal + degenerate share on the held-out positives, KL to the unchanged model on the
    held-out negatives); see `neurosteer.optimization` for the search space and objectives.

    Args:
        model, tokenizer: the unchanged model (nothing active on it).
        positive, negative: prompts showing the behaviour and not; both are split.
        config: the search's settings (default `OptimizeConfig()`).
        run_dir: the run folder (created; resumed when it holds the same search). None keeps
            the study in memory.
        neutral: prompts for the universal-neuron filter (default: the built-in set).
        layout: a `ModelLayout` to use instead of resolving one.
        progress: progress bars on stderr (the trial bar shows the best point so far).

    Returns:
        A `SearchResult`: the Pareto front and every trial as frozen dataclasses.

    Raises:
        InputError: too few prompts to split, a prompt too long for the model, a run folder
            holding another search (the message names the difference) or in use, an
            unknown judge, or Optuna missing.

    Example:
        >>> result = optimize(model, tok, harmful, benign, config=OptimizeConfig(trials=40),
        ...                   run_dir="search")
        >>> [(p.refusal, p.kl, p.k, p.multiplier) for p in result.pareto]
    """
    config = config or OptimizeConfig()
    optuna_module()
    split = split_prompts(
        positive,
        negative,
        held_out_positive=config.held_out_positive,
        held_out_negative=config.held_out_negative,
        seed=config.split_seed,
    )
    judge = get_judge(config.judge)
    layout = layout or resolve_layout(model)
    folder = None if run_dir is None else Path(run_dir)
    if folder is not None:
        store.check_folder(folder)
    _check_fits(model, tokenizer, split, config, neutral)
    meta = _meta(model, layout, config, split, neutral)
    with contextlib.ExitStack() as stack:
        if folder is not None:
            folder.mkdir(exist_ok=True)
            stack.enter_context(store.locked(folder))
            store.check_or_write_meta(folder, meta)
        table = _table(model, tokenizer, split, config, neutral, layout, folder, progress)
        reference = _reference(model, tokenizer, split, judge, config, folder, progress)
        objectives = Objectives(model, tokenizer, split.held_out_positive, judge, config, reference)
        if config.prune and not reference.can_prune:
            logger.warning(
                "pruning is off: the unchanged model's first answer token hardly tells its "
                "refusals from its other answers (refusal-token mass %.3f < %.2f)",
                reference.refusal_mass,
                MIN_REFUSAL_MASS,
            )
        study = open_study(folder, config)
        interrupted = recover_interrupted(study) if folder is not None else []
        _run_trials(study, table, objectives, config, progress)
        points = _baselines(model, tokenizer, split, objectives, config, layout, folder, progress)
        results = trial_results(study)
        return SearchResult(
            pareto=tuple(pareto_front(results)),
            trials=tuple(results),
            unchanged={str(k): v for k, v in reference.unchanged.rates.items()},
            baselines=tuple(points),
            interrupted=_failed(study) if folder is not None else len(interrupted),
            run_dir=folder,
        )


def read_search(run_dir: str | Path) -> SearchResult:
    """A search folder's result without a model (for `--show`).

    Raises:
        InputError: the folder holds no search or no study yet.
    """
    folder = Path(run_dir)
    store.read_meta(folder)
    study = load_study(folder)
    results = trial_results(study)
    cached = baseline_points.from_json(store.read_json(folder / store.BASELINES_FILE))
    return SearchResult(
        pareto=tuple(pareto_front(results)),
        trials=tuple(results),
        unchanged=store.unchanged_rates(folder),
        baselines=tuple(cached),
        interrupted=_failed(study),
        run_dir=folder,
    )


def _failed(study: Any) -> int:
    optuna = optuna_module()
    return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,)))


def _check_fits(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    split: Split,
    config: OptimizeConfig,
    neutral: Sequence[str] | None,
) -> None:
    """Render every set once and refuse prompts too long for the model, before any work."""
    sets = {
        "positive": (split.positive, 0),
        "negative": (split.negative, 0),
        "held-out positive": (split.held_out_positive, 1),
        "held-out negative": (split.held_out_negative, 1),
    }
    if neutral is not None:
        sets["neutral"] = (tuple(neutral), 0)
    for name, (prompts, reserve) in sets.items():
        encode_for_model(
            model,
            tokenizer,
            prompts,
            chat_template=config.chat_template,
            system=config.system,
            reserve=reserve,
            what=f"{name} prompt",
        )


def _meta(
    model: PreTrainedModel,
    layout: ModelLayout,
    config: OptimizeConfig,
    split: Split,
    neutral: Sequence[str] | None,
) -> dict[str, Any]:
    """What optimize.json records: the sections a resumed run must match, and the rest."""
    info = model_info(model, layout)
    sets = {
        "positive": split.positive,
        "negative": split.negative,
        "held_out_positive": split.held_out_positive,
        "held_out_negative": split.held_out_negative,
    }
    if neutral is not None:
        sets["neutral"] = tuple(neutral)
    return {
        "model": {
            "name_or_path": info.name_or_path,
            "config_hash": info.config_hash,
            "model_type": info.model_type,
            "n_layers": info.n_layers,
            "d_mlp": info.d_mlp,
        },
        "settings": config.identity(),
        "prompts": {k: {"count": len(v), "sha256": prompt_hash(v)} for k, v in sets.items()},
        "library_version": __version__,
    }


def _table(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    split: Split,
    config: OptimizeConfig,
    neutral: Sequence[str] | None,
    layout: ModelLayout,
    folder: Path | None,
    progress: bool,
) -> Circuit:
    """The statistics every trial selects from: read back, or recorded once (and saved)."""
    path = None if folder is None else folder / store.TABLE_DIR
    if path is not None and path.exists():
        table = Circuit.load(path)
        logger.info("resuming with the table in %s", path)
    else:
        table = discover(
            model,
            tokenizer,
            split.positive,
            split.negative,
            top_k=1,
            skip_layers=(),
            universal_filter=config.universal_filter,
            neutral=neutral,
            batch_size=config.batch_size,
            chat_template=config.chat_template,
            system=config.system,
            keep_table=True,
            layout=layout,
            progress=progress,
        )
        if path is not None:
            table.save(path)
    table.check_fits(layout)
    return table


def _reference(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    split: Split,
    judge: Any,
    config: OptimizeConfig,
    folder: Path | None,
    progress: bool,
) -> Reference:
    """The unchanged model's side of the objectives: read back, or measured once (and saved)."""
    if folder is not None:
        stored = store.load_reference(folder)
        if stored is not None:
            return stored
    reference = build_reference(
        model,
        tokenizer,
        split.held_out_positive,
        split.held_out_negative,
        judge,
        config,
        progress=progress,
    )
    if folder is not None:
        store.save_reference(folder, reference)
    return reference


def _run_trials(
    study: Any,
    table: Circuit,
    objectives: Objectives,
    config: OptimizeConfig,
    progress: bool,
) -> None:
    """Ask, measure and tell trials until the study holds `config.trials` finished ones."""
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
            result = _one_trial(study, table, objectives, config)
            if result is not None:
                results.append(result)
            done += 1
            bar.update(1)
            bar.set_postfix_str(_best(results))


def _one_trial(
    study: Any, table: Circuit, objectives: Objectives, config: OptimizeConfig
) -> TrialResult | None:
    """Run one trial to its end (COMPLETE or PRUNED); on any error mark it FAIL, enqueue its
    point again and re-raise."""
    optuna = optuna_module()
    trial = study.ask()
    try:
        params = suggest(trial, config.space, table.model.n_layers * table.model.d_mlp)
        try:
            circuit = build_circuit(table, params)
        except NoCandidates as err:
            trial.set_user_attr("pruned_reason", str(err))
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return None
        outcome = objectives.measure(circuit, params.multiplier, prune=config.prune)
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


def _baselines(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    split: Split,
    objectives: Objectives,
    config: OptimizeConfig,
    layout: ModelLayout,
    folder: Path | None,
    progress: bool,
) -> list[BaselinePoint]:
    """The baselines' points: cached ones when their settings match, else measured now."""
    if not config.baselines:
        return []
    file = None if folder is None else folder / store.BASELINES_FILE
    cached = None if file is None else store.read_json(file)
    if isinstance(cached, dict) and cached.get("settings") == baseline_points.baseline_settings(
        config
    ):
        return baseline_points.from_json(cached)
    try:
        points = baseline_points.measure_baselines(
            model,
            tokenizer,
            split.positive,
            split.negative,
            objectives,
            config,
            layout=layout,
            progress=progress,
        )
    except InputError as err:
        raise InputError(f"the baseline comparison failed: {err} (or pass --no-baselines)") from err
    if file is not None:
        store.write_json(file, baseline_points.to_json(points, config))
    return points
