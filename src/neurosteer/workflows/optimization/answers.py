"""Every measured point's judged answers, kept in the run folder so another judge can re-score
them without generating again (`neurosteer judge RUN/`).

    RUN/answers.jsonl      one JSON line per measured point, appended as soon as its answers
                           are judged (before the trial is told to the study), fsynced:

    {"format": "neurosteer.optimize.answers", "format_version": 1,
     "point": "trial", "trial": 3, "params": {...the trial's params...},
     "judge": "sweep", "max_new_tokens": 24,
     "rows": [{"prompt": "...", "answer": "...", "label": "refusal"}, ...]}

A baseline's line has "point": "baseline", "method" and "s" instead of "trial" and "params".
The unchanged model's answers are in reference/unchanged.json. A killed run loses no line
already written (a line torn by the kill itself is skipped, and cut by the next append); a
trial killed after its line but before the study recorded it runs again under a new number,
so the study's finished trials, matched by number and params, pick the lines that count.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from neurosteer import _run_files
from neurosteer.errors import InputError
from neurosteer.evaluation.judges import LABELS, Label, refusal_rates
from neurosteer.evaluation.refusal import JudgedAnswers

ANSWERS_FILE = "answers.jsonl"
FORMAT = "neurosteer.optimize.answers"
FORMAT_VERSION = 1


def trial_record(
    number: int, params: Mapping[str, Any], judge: str, max_new_tokens: int, judged: JudgedAnswers
) -> dict[str, Any]:
    """The line of trial `number` (its Optuna `params`), judged by the judge named `judge`."""
    head = {"point": "trial", "trial": int(number), "params": dict(params)}
    return _record(head, judge, max_new_tokens, judged)


def baseline_record(
    method: str, s: float, judge: str, max_new_tokens: int, judged: JudgedAnswers
) -> dict[str, Any]:
    """The line of baseline `method` ("caa", "direction") at normalised strength `s`."""
    head = {"point": "baseline", "method": method, "s": float(s)}
    return _record(head, judge, max_new_tokens, judged)


def _record(
    head: dict[str, Any], judge: str, max_new_tokens: int, judged: JudgedAnswers
) -> dict[str, Any]:
    rows = [
        {"prompt": p, "answer": a, "label": lab}
        for p, a, lab in zip(judged.prompts, judged.answers, judged.labels, strict=True)
    ]
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **head,
        "judge": judge,
        "max_new_tokens": int(max_new_tokens),
        "rows": rows,
    }


def append_answers(run_dir: Path, record: dict[str, Any]) -> None:
    """Append one point's line to RUN/answers.jsonl, durable before returning."""
    _run_files.append_json_line(run_dir / ANSWERS_FILE, record)


def read_answers(run_dir: Path) -> list[dict[str, Any]] | None:
    """The lines of RUN/answers.jsonl in the order written; None when the file is absent
    (a search made before answers were kept, or one that has judged nothing yet).

    Raises:
        InputError: the file is damaged, or a line is of another format or version, or lacks
            its rows (the message names the file and line).
    """
    file = run_dir / ANSWERS_FILE
    fix = f"move '{file}' away to re-score without the damaged answers"
    if not _run_files.check_regular(file, fix):
        return None
    records = _run_files.read_json_lines(file, fix)
    for number, record in enumerate(records, start=1):
        _check_record(record, f"{file} (record {number})", fix)
    return records


def _check_record(record: dict[str, Any], where: str, fix: str) -> None:
    """Refuse a line this neurosteer cannot read (another format, version or shape)."""
    if record.get("format") != FORMAT:
        raise InputError(f"{where} is not a search's answers record; {fix}")
    if record.get("format_version") != FORMAT_VERSION:
        raise InputError(
            f"{where} has answers format version {record.get('format_version')}; this "
            f"neurosteer reads version {FORMAT_VERSION}"
        )
    rows = record.get("rows")
    if not isinstance(rows, list) or not rows or not all(_is_row(r) for r in rows):
        raise InputError(f"{where} lacks its rows of prompt, answer and known label; {fix}")


def _is_row(row: Any) -> bool:
    return (
        isinstance(row, dict)
        and isinstance(row.get("prompt"), str)
        and isinstance(row.get("answer"), str)
        and row.get("label") in LABELS
    )


def judged_of(rows: Sequence[Mapping[str, Any]], where: str) -> JudgedAnswers:
    """Stored answer rows ({"prompt", "answer", "label"} each: an answers line's, the
    unchanged model's, a sweep point's) as `JudgedAnswers` with their shares.

    Raises:
        InputError: no rows, or a row without text prompt and answer or a known label (the
            message names `where`).
    """
    if not rows or not all(_is_row(r) for r in rows):
        raise InputError(f"{where} lacks its rows of prompt, answer and known label")
    labels: tuple[Label, ...] = tuple(r["label"] for r in rows)
    return JudgedAnswers(
        tuple(r["prompt"] for r in rows),
        tuple(r["answer"] for r in rows),
        labels,
        refusal_rates(labels),
    )
