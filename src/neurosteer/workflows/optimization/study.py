"""The Optuna study: storage, resuming after a kill, trials as plain data.

The study lives in RUN/study.db (`optuna.storages.RDBStorage`, SQLite). Its two objectives,
both minimised, are (refusal + degenerate share, KL); each trial's params are `space.Params`
and its measurements are user attributes (`TrialResult` reads them back).

Resuming: a run killed mid-trial leaves that trial RUNNING in the database. Only one run uses a
folder at a time (`store.locked`), so at the start of a run every RUNNING trial is stale:
`recover_interrupted` marks it FAIL and enqueues its params again, so the next trial asked
re-runs exactly that point. Finished trials (COMPLETE or PRUNED) count towards the budget and
are never run again; failed ones do not count. So after any number of kills, the study ends
with exactly `trials` finished trials, each point measured once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neurosteer import _run_files
from neurosteer.errors import InputError
from neurosteer.workflows.optimization.config import OptimizeConfig
from neurosteer.workflows.optimization.objectives import Measurement
from neurosteer.workflows.optimization.store import STUDY_FILE

logger = logging.getLogger(__name__)

STUDY_NAME = "neurosteer-optimize"
OBJECTIVES = ("refusal+degenerate", "kl")
SQLITE_HEADER = b"SQLite format 3\x00"


def optuna_module() -> Any:
    """`optuna`, or the `InputError` that names the extra to install."""
    try:
        import optuna
    except ImportError:
        raise InputError(
            "neurosteer optimize needs Optuna: pip install 'neurosteer[optimize]'"
        ) from None
    return optuna


def storage_url(run_dir: Path) -> str:
    return f"sqlite:///{(run_dir / STUDY_FILE).resolve()}"


def open_study(run_dir: Path | None, config: OptimizeConfig) -> Any:
    """Create or load the study (in memory when `run_dir` is None) with the config's sampler.

    The sampler's seed is `config.seed` plus the number of trials the study already holds: a
    resumed run must not replay the random draws of the run before it (the same seed would
    propose the same first points again), and the same history still gives the same draws.
    """
    optuna = optuna_module()
    storage = None
    existing = 0
    if run_dir is not None:
        with database_errors(run_dir):
            check_database(run_dir)
            storage = optuna.storages.RDBStorage(
                storage_url(run_dir), engine_kwargs={"connect_args": {"timeout": 60}}
            )
            try:
                study_id = storage.get_study_id_from_name(STUDY_NAME)
            except KeyError:  # a run stopped before it created the study: start afresh
                existing = 0
            else:
                existing = len(storage.get_all_trials(study_id, deepcopy=False))
    seed = config.seed + existing
    if config.sampler == "tpe":
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=config.startup_trials)
    else:
        sampler = optuna.samplers.NSGAIISampler(seed=seed)
    with database_errors(run_dir):
        return optuna.create_study(
            study_name=STUDY_NAME,
            storage=storage,
            sampler=sampler,
            directions=["minimize", "minimize"],
            load_if_exists=True,
        )


def load_study(run_dir: Path) -> Any:
    """The study of a search folder, read only (no sampler needed).

    Raises:
        InputError: the folder has no study (no study.db, an empty one, or one a run killed
            before its first trial left without a study), or study.db is damaged, not SQLite,
            unreadable or of another Optuna's schema (`check_database`, `database_errors`).
    """
    optuna = optuna_module()
    none_yet = f"'{run_dir}' holds no study yet ({STUDY_FILE}"
    if not check_database(run_dir):
        raise InputError(f"{none_yet}); run the search first")
    with database_errors(run_dir):
        storage = optuna.storages.RDBStorage(storage_url(run_dir))
        try:
            storage.get_study_id_from_name(STUDY_NAME)
        except KeyError:
            raise InputError(
                f"{none_yet} has none: the search was stopped before it began); run the search "
                "again to start it"
            ) from None
        return optuna.load_study(study_name=STUDY_NAME, storage=storage)


def check_database(run_dir: Path) -> bool:
    """Whether the folder's study.db holds anything (False: absent or zero bytes, which
    SQLite reads as a new database).

    Raises:
        InputError: study.db is a folder, unreadable, or not an SQLite database.
    """
    file = run_dir / STUDY_FILE
    if not _run_files.check_regular(file, _FIX):
        return False
    try:
        with file.open("rb") as handle:
            head = handle.read(len(SQLITE_HEADER))
    except OSError as err:
        raise InputError(f"cannot read '{file}' ({err.strerror or err}); {_FIX}") from None
    if not head:
        return False
    if head != SQLITE_HEADER:
        raise InputError(f"'{file}' is not an SQLite database, so not the search's study; {_FIX}")
    return True


@contextmanager
def database_errors(run_dir: Path | None) -> Iterator[None]:
    """Turn what Optuna and SQLAlchemy raise for a damaged or foreign study.db into one line.

    Raises:
        InputError: for a schema of another Optuna version (Optuna's RuntimeError) or a
            database error (truncated, malformed, locked, unreadable).
    """
    if run_dir is None:
        yield
        return
    from sqlalchemy.exc import SQLAlchemyError

    file = run_dir / STUDY_FILE
    try:
        yield
    except RuntimeError as err:
        if "table schema" not in str(err):
            raise
        optuna = optuna_module()
        fix = (
            f"upgrade it with `optuna storage upgrade --storage {storage_url(run_dir)}`"
            if "upgrade --storage" in str(err)
            else "install the newer Optuna that wrote it (pip install -U optuna)"
        )
        raise InputError(
            f"'{file}' was written by an Optuna whose database schema differs from the "
            f"installed Optuna {optuna.__version__}'s; {fix}, or start the search in a new "
            "output folder"
        ) from None
    except SQLAlchemyError as err:
        reason = str(getattr(err, "orig", None) or err).splitlines()[0]
        raise InputError(
            f"'{file}' cannot be read as the search's study ({reason}); {_FIX}"
        ) from None


_FIX = (
    "move it away (the search then starts afresh, keeping the recorded table and reference), "
    "or start the search in a new output folder"
)


def recover_interrupted(study: Any) -> list[int]:
    """Mark every RUNNING trial FAIL and enqueue its params again; returns their numbers.

    Call only while holding the folder's lock (a RUNNING trial is then a killed run's).
    """
    optuna = optuna_module()
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for trial in running:
        study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
        requeue(study, trial.params, trial.number)
    if running:
        logger.warning(
            "trials %s were interrupted; their points run again first",
            [t.number for t in running],
        )
    return [t.number for t in running]


def requeue(study: Any, params: dict[str, Any], number: int) -> None:
    """Enqueue `params` (a failed trial's) to run again as the next trial."""
    study.enqueue_trial(params, user_attrs={"retry_of": number}, skip_if_exists=False)


def finished(study: Any) -> int:
    """Trials that count towards the budget (COMPLETE or PRUNED)."""
    optuna = optuna_module()
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=states))


@dataclass(frozen=True, kw_only=True)
class TrialResult(Measurement):
    """One finished trial, as plain data: its `objectives.Measurement` and its point.

    Attributes:
        number: the study's trial number.
        state: "complete" (measured) or "pruned" (answers skipped, see `objectives`).
        k: neurons in the circuit (at most `k_asked`: capped at the candidates).
        k_asked, multiplier, sign, score, first_layer_share: the trial's params (`Params`).
        first_layer: the first candidate layer.
    """

    number: int
    state: str
    k: int
    k_asked: int
    multiplier: float
    sign: str
    score: str
    first_layer: int
    first_layer_share: float


def trial_results(study: Any) -> list[TrialResult]:
    """Every finished trial of the study that measured something, by number."""
    optuna = optuna_module()
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    results = []
    for trial in study.get_trials(deepcopy=False, states=states):
        complete = trial.state == optuna.trial.TrialState.COMPLETE
        result = result_of(trial.number, complete, trial.params, trial.user_attrs)
        if result is not None:
            results.append(result)
    return sorted(results, key=lambda r: r.number)


def result_of(
    number: int, complete: bool, params: dict[str, Any], attrs: dict[str, Any]
) -> TrialResult | None:
    """A `TrialResult` from a trial's params and user attributes (None when it measured
    nothing: pruned for lack of candidate neurons)."""
    if "kl" not in attrs:
        return None
    return TrialResult(
        number=number,
        state="complete" if complete else "pruned",
        k=int(attrs["k"]),
        k_asked=int(params["k"]),
        multiplier=float(params["multiplier"]),
        sign=str(params["sign"]),
        score=str(params["score"]),
        first_layer=int(attrs["first_layer"]),
        first_layer_share=float(params["first_layer_share"]),
        refusal=attrs.get("refusal"),
        degenerate=attrs.get("degenerate"),
        compliance=attrs.get("compliance"),
        kl=float(attrs["kl"]),
        kl_first_token=float(attrs["kl_first_token"]),
        kl_mean=attrs.get("kl_mean"),
        refusal_mass=attrs.get("refusal_mass"),
        seconds=float(attrs["seconds"]),
    )


def pareto_front(results: list[TrialResult]) -> list[TrialResult]:
    """The complete trials no other complete trial beats on both objectives (neither worse,
    one better), by KL then refusal + degenerate."""
    done = [r for r in results if r.not_success is not None]

    def dominated(r: TrialResult) -> bool:
        a, b = r.not_success or 0.0, r.kl
        return any(
            (o.not_success or 0.0) <= a and o.kl <= b and ((o.not_success or 0.0) < a or o.kl < b)
            for o in done
        )

    front = [r for r in done if not dominated(r)]
    return sorted(front, key=lambda r: (r.kl, r.not_success or 0.0, r.number))
