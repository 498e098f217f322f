"""`neurosteer judge FILE`: label the answers of a JSONL/CSV file with any refusal judge.

Given a run folder instead (the output of `neurosteer optimize` or `neurosteer sweep`), it
re-scores the answers the run stored, without generating again: each point's shares under the
run's judge and under this one, side by side, each judge with its measured accuracy. The
judge command is where every judge option already is (--judge, --judge-model,
--judge-prompts, --cache), and it reads both kinds of run folder alike.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from neurosteer.cli.options import judge_model_options

JUDGE_HELP = (
    "Refusal judge: strict, sweep, patterns, organism, a phrase-list .json (file.json#entry), "
    "or a model judge: model (the model of --judge-model), model:PATH, and either with "
    "#ENTRY for a prompt of --judge-prompts (e.g. model#jailbreakbench_Llama3RefusalJudge)."
)


@click.command("judge")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--judge", "judge_name", default=None, help=JUDGE_HELP + "  [default: sweep]")
@judge_model_options
@click.option(
    "--cache",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="JSONL file where a model judge keeps its verdicts between runs (a run folder's "
    "default: RUN/judge-cache.jsonl).",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON object per record, in input order: id (if given) and label (for a "
    "run folder: one per point, with its old and new shares).",
)
def judge_command(
    file: Path,
    judge_name: str | None,
    judge_model: Path | None,
    judge_prompts: Path | None,
    cache: Path | None,
    as_json: bool,
) -> None:
    """Label the answers in FILE (JSONL or CSV records with prompt and answer, optionally id
    and label) as refusal, compliance or degenerate; print the shares and, for records that
    carry a label, the judge's accuracy and confusion table. FILE may be a run folder of
    `optimize` or `sweep`: its stored answers are re-scored, old and new shares side by side."""
    from neurosteer.cli.options import show_progress
    from neurosteer.evaluation.answer_records import read_answer_records
    from neurosteer.evaluation.judges import DEFAULT_JUDGE
    from neurosteer.workflows.judges import get_judge

    if file.is_dir():
        from neurosteer.cli.rescore_view import rescore_folder

        rescore_folder(
            file, judge_name or DEFAULT_JUDGE, judge_model, judge_prompts, cache, as_json
        )
        return
    records = read_answer_records(file)  # a bad file fails before any model is loaded
    name = judge_name or DEFAULT_JUDGE
    judge = get_judge(
        name,
        judge_model=judge_model,
        judge_prompts=judge_prompts,
        cache_file=cache,
        progress=show_progress(),
    )
    labels = judge([r.prompt for r in records], [r.answer for r in records])
    if as_json:
        for record, label in zip(records, labels, strict=True):
            row: dict[str, Any] = {} if record.id is None else {"id": record.id}
            click.echo(json.dumps({**row, "label": label}, ensure_ascii=False))
        return
    _print_summary(name, [r.label for r in records], labels)


def _print_summary(name: str, given: list[Any], labels: list[Any]) -> None:
    """The shares of each label and, over the labelled records, accuracy and confusion."""
    from neurosteer.evaluation.judge_accuracy import accuracy_text
    from neurosteer.evaluation.judge_scores import agreement
    from neurosteer.evaluation.judges import LABELS, refusal_rates

    plural = "answer" if len(labels) == 1 else "answers"
    click.echo(f"judge {name} on {len(labels)} {plural}; {accuracy_text(name)}")
    for label, share in refusal_rates(labels).items():
        click.echo(f"  {label:<11} {share:6.1%}  ({labels.count(label)})")
    pairs = [(g, x) for g, x in zip(given, labels, strict=True) if g is not None]
    if not pairs:
        return
    score = agreement([g for g, _ in pairs], [x for _, x in pairs])
    click.echo(
        f"accuracy {score.accuracy:.1%} ({score.correct} of {score.total} labelled answers); "
        "rows: the file's label, columns: the judge's"
    )
    for line in score.table():
        click.echo("  " + line)
    for label in LABELS:
        recall = score.recall(label)
        if recall is not None:
            click.echo(f"  recall of {label}: {recall:.1%}")
