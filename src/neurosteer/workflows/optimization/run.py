"""The loop: `optimize()` runs (or resumes) a search and returns its front.

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
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from neurosteer._version import __version__
from neurosteer.errors import CircuitFormatError, InputError
from neurosteer.methods.circuit import Circuit
from neurosteer.methods.discovery import discover, model_info
from neurosteer.model.environment import environment
from neurosteer.model.layout import ModelLayout, resolve_layout
from neurosteer.model.runtime import runs_model
from neurosteer.prompts.render import prompt_hash, uses_chat_template
from neurosteer.prompts.template_vars import pin_clock
from neurosteer.workflows.judges import run_judge
from neurosteer.workflows.optimization import baselines as baseline_points
from neurosteer.workflows.optimization import store
from neurosteer.workflows.optimization.baselines import BaselinePoint, cached_baselines
from neurosteer.workflows.optimization.config import OptimizeConfig
from neurosteer.workflows.optimization.objectives import (
    MIN_REFUSAL_MASS,
    Objectives,
    Reference,
    build_reference,
)
from neurosteer.workflows.optimization.split import Split, split_prompts
from neurosteer.workflows.optimization.study import (
    TrialResult,
    database_errors,
    load_study,
    open_study,
    optuna_module,
    pareto_front,
    recover_interrupted,
    trial_results,
)
from neurosteer.workflows.optimization.trials import run_trials
from neurosteer.workflows.prompt_sets import check_sets_fit

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


# over 60 lines: a 14-line signature and 34-line docstring of public arguments; body 48 lines
@runs_model
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
    judge_model: str | Path | None = None,
    judge_prompts: str | Path | None = None,
) -> SearchResult:
    """Search circuits and multipliers that remove the positive set's behaviour at least cost.

    Splits off held-out prompts (`config.held_out_positive` / `held_out_negative`), records the
    neuron table once on the rest, then runs `config.trials` Optuna trials minimising
    (refusal + degenerate share on the held-out positives, KL to the unchanged model on the
    held-out negatives); see `neurosteer.workflows.optimization` for the search space and
    objectives.

    Args:
        model, tokenizer: the unchanged model (nothing active on it).
        positive, negative: prompts showing the behaviour and not; both are split.
        config: the search's settings (default `OptimizeConfig()`).
        run_dir: the run folder (created; resumed when it holds the same search). None keeps
            the study in memory.
        neutral: prompts for the universal-neuron filter (default: the built-in set).
        layout: a `ModelLayout` to use instead of resolving one.
        progress: progress bars on stderr (the trial bar shows the best point so far).
        judge_model, judge_prompts: for a model judge (`workflows.judges.get_judge`): its
            model (else $NEUROSTEER_JUDGE_MODEL) and prompt file; its verdicts are cached in
            RUN/judge-cache.jsonl.

    Returns:
        A `SearchResult`: the Pareto front and every trial as frozen dataclasses.

    Raises:
        InputError: too few prompts to split, a prompt too long for the model, a run folder
            holding another search (the message names the difference) or in use, an
            unknown judge (or a model judge without a model), or Optuna missing.

    Example:
        >>> result = optimize(model, tok, harmful, benign, config=OptimizeConfig(trials=40),
        ...                   run_dir="search")
        >>> [(p.refusal, p.kl, p.k, p.multiplier) for p in result.pareto]
    """
    config = config or OptimizeConfig()
    optuna_module()
    split = _split(positive, negative, config)
    folder = None if run_dir is None else Path(run_dir)
    if folder is not None:
        store.check_folder(folder)
    judge = run_judge(
        config.judge,
        folder,
        judge_model=judge_model,
        judge_prompts=judge_prompts,
        progress=progress,
    )
    layout = layout or resolve_layout(model)
    if uses_chat_template(tokenizer, config.chat_template):
        stored = _stored_template_vars(folder)
        config = replace(config, template_vars=pin_clock(tokenizer, config.template_vars, stored))
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
        study, interrupted = _open(folder, config, progress)
        run_trials(study, table, objectives, config, progress, folder)
        points = cached_baselines(
            model, tokenizer, split, objectives, config, layout, folder, progress
        )
        results = trial_results(study)
        return SearchResult(
            pareto=tuple(pareto_front(results)),
            trials=tuple(results),
            unchanged={str(k): v for k, v in reference.unchanged.rates.items()},
            baselines=tuple(points),
            interrupted=_failed(study) if folder is not None else len(interrupted),
            run_dir=folder,
        )


def _open(folder: Path | None, config: OptimizeConfig, progress: bool) -> tuple[Any, list[int]]:
    """The study, opened (or created) with a one-step bar: Optuna's database set-up takes
    seconds; and the trials a killed run left, run again first (see `recover_interrupted`)."""
    where = "in memory" if folder is None else f"{folder / store.STUDY_FILE}"
    with tqdm(total=1, desc="study", unit="step", disable=not progress, leave=False) as bar:
        bar.set_postfix_str(f"opening {where}")
        study = open_study(folder, config)
        interrupted = recover_interrupted(study) if folder is not None else []
        bar.update()
    return study, interrupted


def read_search(run_dir: str | Path) -> SearchResult:
    """A search folder's result without a model (for `--show`).

    Raises:
        InputError: the folder holds no search or no study yet.
    """
    folder = Path(run_dir)
    store.read_meta(folder)
    with database_errors(folder):
        study = load_study(folder)
        results = trial_results(study)
        interrupted = _failed(study)
    _, cached = baseline_points.read_cached(folder)
    return SearchResult(
        pareto=tuple(pareto_front(results)),
        trials=tuple(results),
        unchanged=store.unchanged_rates(folder),
        baselines=tuple(cached),
        interrupted=interrupted,
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
    check_sets_fit(
        model,
        tokenizer,
        sets,
        **config.rendering.as_kwargs(),
    )


def check_resumable(
    run_dir: str | Path,
    positive: Sequence[str],
    negative: Sequence[str],
    *,
    config: OptimizeConfig,
    neutral: Sequence[str] | None = None,
) -> None:
    """Refuse, without a model, a run folder whose search has other settings or prompts
    (`optimize` checks the model too, once it is loaded); a new folder passes.

    Raises:
        InputError: as `optimize` for the split and the folder.
    """
    folder = Path(run_dir)
    store.check_folder(folder)
    split = _split(positive, negative, config)
    # a search resumed on another day reuses the date its template was given
    config = replace(
        config, template_vars=pin_clock(None, config.template_vars, _stored_template_vars(folder))
    )
    meta = _sections(config, split, neutral)
    store.check_or_write_meta(folder, meta, sections=tuple(meta), write=False)


def _split(positive: Sequence[str], negative: Sequence[str], config: OptimizeConfig) -> Split:
    """`split_prompts` with the search's held-out sizes and seed (raises as it does)."""
    return split_prompts(
        positive,
        negative,
        held_out_positive=config.held_out_positive,
        held_out_negative=config.held_out_negative,
        seed=config.split_seed,
    )


def _stored_template_vars(folder: Path | None) -> dict[str, Any] | None:
    """The template variables a search folder recorded (None: no search there yet)."""
    if folder is None or not (folder / store.META_FILE).is_file():
        return None
    stored = store.read_meta(folder).get("settings", {}).get("template_vars")
    return dict(stored) if isinstance(stored, dict) else None


def _sections(
    config: OptimizeConfig, split: Split, neutral: Sequence[str] | None
) -> dict[str, Any]:
    """The identity sections known without a model: settings and prompt hashes."""
    sets = {
        "positive": split.positive,
        "negative": split.negative,
        "held_out_positive": split.held_out_positive,
        "held_out_negative": split.held_out_negative,
    }
    if neutral is not None:
        sets["neutral"] = tuple(neutral)
    return {
        "settings": config.identity(),
        "prompts": {k: {"count": len(v), "sha256": prompt_hash(v)} for k, v in sets.items()},
    }


def _meta(
    model: PreTrainedModel,
    layout: ModelLayout,
    config: OptimizeConfig,
    split: Split,
    neutral: Sequence[str] | None,
) -> dict[str, Any]:
    """What optimize.json records: the sections a resumed run must match, and the rest."""
    info = model_info(model, layout)
    return {
        "model": {
            "name_or_path": info.name_or_path,
            "config_hash": info.config_hash,
            "model_type": info.model_type,
            "n_layers": info.n_layers,
            "d_mlp": info.d_mlp,
            "weights": None if info.weights is None else asdict(info.weights),
        },
        **_sections(config, split, neutral),
        "library_version": __version__,
        "environment": environment(model),
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
        try:
            table = Circuit.load(path)
        except CircuitFormatError as err:
            raise InputError(f"{err}; delete it and the next run records the table again") from None
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
            **config.rendering.as_kwargs(),
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
