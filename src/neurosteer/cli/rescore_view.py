"""`neurosteer judge RUN/`: a run folder's stored answers re-scored by another judge, printed.

re-scored 112 stored answers of 7 points of search RUN (model M), nothing generated
old: judge sweep: right on 78.7% of 600 real answers of ... read twice ...
new: judge patterns: ...
point        answers            refusal         degenerate       KL  front
unchanged         16    93.8% ->  93.8%     0.0% ->   0.0%        0
trial 3           16    12.5% ->  25.0%     6.2% ->   6.2%    0.181  old, new
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:  # imported at run time inside the command: `--help` stays fast
    from neurosteer.evaluation.judges import Label
    from neurosteer.workflows.rescore import Rescore, RescoredPoint

_SHARES: tuple[Label, ...] = ("refusal", "degenerate")


def rescore_folder(
    folder: Path,
    judge_name: str,
    judge_model: Path | None,
    judge_prompts: Path | None,
    cache: Path | None,
    as_json: bool,
) -> None:
    """Re-score the stored answers of a search or sweep folder with the judge `judge_name`
    and print them (`--json`: one object per point).

    A model judge keeps its verdicts in `cache`, else in the folder's judge-cache.jsonl.

    Raises:
        InputError: not a run folder, a run made before answers were stored, a bad judge
            (a model judge without a model: the usual one-line error).
    """
    from neurosteer.cli.options import show_progress
    from neurosteer.workflows.judges import get_judge, run_judge
    from neurosteer.workflows.rescore import rescore_run

    if cache is None:
        judge = run_judge(
            judge_name,
            folder,
            judge_model=judge_model,
            judge_prompts=judge_prompts,
            progress=show_progress(),
        )
    else:
        judge = get_judge(
            judge_name,
            judge_model=judge_model,
            judge_prompts=judge_prompts,
            cache_file=cache,
            progress=show_progress(),
        )
    result = rescore_run(folder, judge, judge_name)
    if as_json:
        for point in result.points:
            click.echo(json.dumps(_json_row(result, point), ensure_ascii=False))
        return
    _print(result)


def _json_row(result: Rescore, point: RescoredPoint) -> dict[str, Any]:
    """One point as JSON: its name, answers, the old and new judges and shares, KL, trial."""
    row: dict[str, Any] = {
        "point": point.name,
        "answers": len(point.new.answers),
        "old": {"judge": result.old_judge, **point.old.rates},
        "new": {"judge": result.new_judge, **point.new.rates},
    }
    if point.kl is not None:
        row["kl"] = point.kl
    if point.trial is not None:
        row["trial"] = point.trial
    return row


def _print(result: Rescore) -> None:
    """The captions, then one line per point (old -> new shares), then what was left out."""
    from neurosteer.evaluation.judge_accuracy import judge_caption

    n_answers = sum(len(p.new.answers) for p in result.points)
    model = f" (model {result.model})" if result.model else ""
    click.echo(
        f"re-scored {n_answers} stored answers of {len(result.points)} points of "
        f"{result.kind} {result.run_dir}{model}, nothing generated"
    )
    click.echo(f"old: {judge_caption(result.old_judge, result.model)}")
    click.echo(f"new: {judge_caption(result.new_judge, result.model)}")
    search = result.kind == "search"
    width = max(len("point"), *(len(p.name) for p in result.points))
    head = f"{'point':<{width}} {'answers':>7}  {'refusal':>16}  {'degenerate':>16}"
    click.echo(head + (f"  {'KL':>8}  front" if search else ""))
    for point in result.points:
        shares = "  ".join(
            f"{point.old.rates[s]:>6.1%} -> {point.new.rates[s]:>6.1%}" for s in _SHARES
        )
        line = f"{point.name:<{width}} {len(point.new.answers):>7}  {shares}"
        if search:
            kl = "" if point.kl is None else f"{point.kl:.3g}"
            line += f"  {kl:>8}  {_front_mark(result, point.trial)}"
        click.echo(line.rstrip())
    if result.left_out:
        click.echo(
            f"{result.left_out} measured points have no stored answers (measured before "
            "neurosteer kept them) and are left out"
        )


def _front_mark(result: Rescore, trial: int | None) -> str:
    """Which Pareto fronts the trial is on: "old", "new", "old, new" or ""."""
    if trial is None:
        return ""
    marks = [
        name
        for name, front in (("old", result.front_old), ("new", result.front_new))
        if trial in front
    ]
    return ", ".join(marks)
