"""Re-scoring a run folder's stored answers with another judge, without generating again.

A search (`neurosteer optimize -o RUN`) keeps the unchanged model's answers in
reference/unchanged.json and every trial's and baseline's in answers.jsonl
(`optimization.answers`); a sweep keeps every point's in answers/*.jsonl. `rescore_run` reads
them all, asks the new judge once over every answer (a model judge batches them and caches its
verdicts), and returns each point's shares under the judge that measured it and under the new
one, side by side. Nothing in the folder changes but a model judge's verdict cache.

    result = rescore_run("search/", get_judge("patterns"), "patterns")
    [(p.name, p.old.refusal, p.new.refusal) for p in result.points]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from neurosteer.errors import InputError
from neurosteer.evaluation.judges import Judge, Label, refusal_rates
from neurosteer.evaluation.refusal import JudgedAnswers
from neurosteer.workflows.optimization import store as search_store
from neurosteer.workflows.optimization.answers import judged_of, read_answers
from neurosteer.workflows.optimization.baselines import read_cached
from neurosteer.workflows.optimization.study import (
    TrialResult,
    check_database,
    database_errors,
    load_study,
    optuna_module,
    pareto_front,
    trial_results,
)
from neurosteer.workflows.sweep import store as sweep_store


@dataclass(frozen=True)
class RescoredPoint:
    """One measured point's answers under the judge that measured it and the new one.

    Attributes:
        name: "unchanged", "trial 3", "caa s=0.5" (a search); "cna s=0.5 harmful" (a sweep:
            one point per evaluation set).
        old: the stored answers with their stored labels and shares.
        new: the same answers with the new judge's labels and shares.
        kl: the point's KL objective in nats (a search's; None for a sweep's).
        trial: the study's trial number (None for other points).
    """

    name: str
    old: JudgedAnswers
    new: JudgedAnswers
    kl: float | None = None
    trial: int | None = None


@dataclass(frozen=True)
class Rescore:
    """A run folder re-scored.

    Attributes:
        kind: "search" or "sweep".
        run_dir: the folder.
        old_judge: the judge the run measured with (its recorded name).
        new_judge: the judge that re-scored it.
        model: the run's model (its recorded name or path; None when not recorded).
        points: every point whose answers the folder holds, in the run's order.
        left_out: points the folder has results but no stored answers for (measured before
            answers were kept).
        front_old, front_new: a search's Pareto front (trial numbers, among the re-scored
            trials) by the stored labels and by the new ones; empty for a sweep.
    """

    kind: str
    run_dir: Path
    old_judge: str
    new_judge: str
    model: str | None
    points: tuple[RescoredPoint, ...]
    left_out: int
    front_old: frozenset[int] = frozenset()
    front_new: frozenset[int] = frozenset()


#: (name, stored answers, KL, trial number) of one point before re-judging.
_Stored = tuple[str, JudgedAnswers, float | None, int | None]


@dataclass(frozen=True)
class _Found:
    """What a run folder holds for re-scoring: its judge and model, the stored points, the
    points without stored answers, and (a search's) its finished trials."""

    judge: str
    model: str | None
    stored: list[_Stored]
    left_out: int
    results: list[TrialResult]


def rescore_run(run_dir: str | Path, judge: Judge, judge_name: str) -> Rescore:
    """Re-judge every stored answer of a search or sweep folder with `judge`.

    Args:
        run_dir: the output folder of `neurosteer optimize` or `neurosteer sweep`.
        judge: the new judge (`workflows.judges.get_judge`).
        judge_name: its name, for the report.

    Returns:
        A `Rescore`: each point's old and new shares.

    Raises:
        InputError: not a search or sweep folder; a run made before answers were stored (or
            one that has judged nothing yet); a damaged answers file.
    """
    folder = Path(run_dir)
    if not folder.is_dir():
        raise InputError(f"'{folder}' is not a folder")
    if (folder / search_store.META_FILE).is_file():
        kind, found = "search", _search_points(folder)
    elif (folder / sweep_store.CONFIG_FILE).is_file():
        kind, found = "sweep", _sweep_points(folder)
    else:
        raise InputError(
            f"'{folder}' is not a run folder (no {search_store.META_FILE} or "
            f"{sweep_store.CONFIG_FILE}); give the output folder of `neurosteer optimize` or "
            "`neurosteer sweep`, or a JSONL/CSV file of answers"
        )
    points = _judge_all(found.stored, judge)
    old = _front(found.results, {p.trial: p.old.rates for p in points if p.trial is not None})
    new = _front(found.results, {p.trial: p.new.rates for p in points if p.trial is not None})
    return Rescore(
        kind=kind,
        run_dir=folder,
        old_judge=found.judge,
        new_judge=judge_name,
        model=found.model,
        points=tuple(points),
        left_out=found.left_out,
        front_old=old,
        front_new=new,
    )


def _judge_all(stored: Sequence[_Stored], judge: Judge) -> list[RescoredPoint]:
    """One judge call over every stored answer, split back into the points."""
    prompts = [p for _, old, _, _ in stored for p in old.prompts]
    answers = [a for _, old, _, _ in stored for a in old.answers]
    labels = judge(prompts, answers)
    points, start = [], 0
    for name, old, kl, trial in stored:
        mine = tuple(labels[start : start + len(old.answers)])
        start += len(old.answers)
        new = JudgedAnswers(old.prompts, old.answers, mine, refusal_rates(mine))
        points.append(RescoredPoint(name, old, new, kl, trial))
    return points


def _front(results: Sequence[TrialResult], rates: dict[int, dict[Label, float]]) -> frozenset[int]:
    """The Pareto front of the trials in `rates`, each with those shares."""
    kept = [
        replace(r, refusal=rates[r.number]["refusal"], degenerate=rates[r.number]["degenerate"])
        for r in results
        if r.number in rates
    ]
    return frozenset(r.number for r in pareto_front(kept))


def _search_points(folder: Path) -> _Found:
    """A search folder's unchanged answers, then its complete trials', then its baselines'.

    A trial's line counts when its number and params match the study's (a line of a trial
    killed before the study recorded it, or of a study since moved away, does not).
    """
    meta = search_store.read_meta(folder)
    judge, model = _recorded(meta)
    records = read_answers(folder)
    with database_errors(folder):
        study = load_study(folder) if check_database(folder) else None
        trials = [] if study is None else _complete(study)
        results = [] if study is None else trial_results(study)
    if records is None:
        raise InputError(_no_answers(folder, bool(trials), "neurosteer optimize"))
    stored: list[_Stored] = []
    unchanged = _unchanged(folder)
    if unchanged is not None:
        stored.append(("unchanged", unchanged, 0.0, None))
    lines = {int(r["trial"]): r for r in records if r.get("point") == "trial"}
    left_out = 0
    for number, params, kl in trials:
        record = lines.get(number)
        if record is None or record.get("params") != params:
            left_out += 1
            continue
        stored.append((f"trial {number}", judged_of(record["rows"], f"trial {number}"), kl, number))
    baselines = {
        (str(r["method"]), float(r["s"])): r for r in records if r.get("point") == "baseline"
    }
    for point in read_cached(folder)[1]:
        record = baselines.get((point.method, float(point.s)))
        if record is None:
            left_out += 1
            continue
        name = f"{point.method} s={point.s:g}"
        stored.append((name, judged_of(record["rows"], name), point.kl, None))
    return _Found(judge, model, stored, left_out, results)


def _complete(study: Any) -> list[tuple[int, dict[str, Any], float]]:
    """(number, params, KL) of each complete trial of the study."""
    optuna = optuna_module()
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return [(t.number, dict(t.params), float(t.user_attrs["kl"])) for t in complete]


def _unchanged(folder: Path) -> JudgedAnswers | None:
    """The unchanged model's stored answers (None before the reference was written)."""
    file = folder / search_store.REFERENCE_DIR / "unchanged.json"
    data = search_store.read_json(file, "the unchanged model's answers and KL reference")
    if data is None:
        return None
    try:
        rows = [
            {"prompt": p, "answer": a, "label": lab}
            for p, a, lab in zip(data["prompts"], data["answers"], data["labels"], strict=True)
        ]
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(
            f"'{file}' lacks readable answers ({err}); delete it and the next run of the search "
            "measures the unchanged model again"
        ) from None
    return judged_of(rows, f"'{file}'")


def _sweep_points(folder: Path) -> _Found:
    """A sweep folder's points in the order they finished: one per finished (method,
    strength, seed) and evaluation set."""
    judge, model = _recorded(sweep_store.read_config(folder) or {})
    stored: list[_Stored] = []
    left_out = 0
    for record in sweep_store.read_results(folder):
        label = sweep_store.point_label(str(record["method"]), record.get("seed"))
        file = record.get("answers_file")
        rows = sweep_store.read_answers(folder, str(file)) if file else []
        if not rows:
            left_out += 1
            continue
        for split in dict.fromkeys(str(r.get("set")) for r in rows):
            name = f"{label} s={float(record['strength']):g} {split}"
            mine = [r for r in rows if str(r.get("set")) == split]
            stored.append((name, judged_of(mine, f"{folder / str(file)} ({split})"), None, None))
    if not stored:
        if left_out:
            raise InputError(
                f"'{folder}' holds no answers for its {left_out} finished points (the files "
                f"under {sweep_store.ANSWERS_DIR}/ are gone), so there is nothing to re-score; "
                "run `neurosteer sweep` again into a new folder"
            )
        raise InputError(_no_answers(folder, False, "neurosteer sweep"))
    return _Found(judge, model, stored, left_out, [])


def _recorded(meta: dict[str, Any]) -> tuple[str, str | None]:
    """(judge, model) a run folder's settings file records ("sweep" for no judge)."""
    settings, model = meta.get("settings"), meta.get("model")
    judge = settings.get("judge") if isinstance(settings, dict) else None
    name = model.get("name_or_path") if isinstance(model, dict) else None
    return str(judge or "sweep"), str(name) if name else None


def _no_answers(folder: Path, measured: bool, command: str) -> str:
    """The one-line error of a folder without stored answers."""
    if measured:
        return (
            f"'{folder}' was made before neurosteer stored each point's answers, so there is "
            f"nothing to re-score; run `{command}` again into a new folder to keep them"
        )
    return f"'{folder}' holds no judged answers yet; run `{command}` into it first"
