"""Stage 8 of the pipeline (evaluation): answers a user wants judged, read from JSONL or CSV.

Each record has a `prompt` and an `answer` (text), and optionally an `id` and a `label`
("refusal", "compliance" or "degenerate", as a reader gave it). Other fields are kept as they
are (a labelled set's `kind`, `half`, `model`, ...).

    records = read_answer_records("answers.jsonl")    # or .csv, or a .json list of objects
    labels = judge([r.prompt for r in records], [r.answer for r in records])

Files are read by their suffix: `.jsonl`/`.ndjson` one JSON object per line, `.json` a list of
objects (or JSON lines), `.csv` a header row and one record per row.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neurosteer._io import read_text
from neurosteer.errors import InputError
from neurosteer.evaluation.judges import LABELS, Label

REQUIRED = ("prompt", "answer")
_JSON_SUFFIXES = (".jsonl", ".ndjson", ".json")


@dataclass(frozen=True)
class AnswerRecord:
    """One answer to judge, and where it came from.

    Attributes:
        prompt, answer: the request and the model's answer.
        label: the reader's label, if the record has one.
        id: the record's id as text, if it has one.
        where: "line N" (JSONL, CSV) or "record N" (a JSON list), for messages.
        fields: every field of the record, as read.
    """

    prompt: str
    answer: str
    label: Label | None = None
    id: str | None = None
    where: str = ""
    fields: Mapping[str, Any] = field(default_factory=dict)


def read_records(path: str | Path, what: str = "answer file") -> list[tuple[str, dict[str, Any]]]:
    """The raw records of a JSONL, JSON or CSV file, each with where it is ("line 3").

    Raises:
        InputError: a missing or unreadable file, another suffix, a line that is not a JSON
            object, or a file without records.
    """
    file = Path(path).expanduser()
    suffix = file.suffix.lower()
    if suffix != ".csv" and suffix not in _JSON_SUFFIXES:
        raise InputError(f"{what} '{file}' must be a .jsonl, .json or .csv file")
    if file.is_dir():
        raise InputError(f"{what} '{file}' is a folder; give a .jsonl, .json or .csv file")
    text = read_text(file, what)
    rows = _csv_rows(text, file) if suffix == ".csv" else _json_rows(text, file)
    if not rows:
        raise InputError(f"{what} '{file}' holds no records")
    return rows


def read_answer_records(path: str | Path) -> list[AnswerRecord]:
    """The answer records of a file, checked (see the module docstring for the formats).

    Raises:
        InputError: a bad file (see `read_records`), a record without a prompt or answer, a
            prompt or answer that is not text, or a label that is not one of `LABELS`.
    """
    file = Path(path).expanduser()
    return [_answer_record(row, where, file) for where, row in read_records(file)]


def _answer_record(row: dict[str, Any], where: str, file: Path) -> AnswerRecord:
    for name in REQUIRED:
        if name not in row or row[name] is None:
            raise InputError(
                f"'{file}' {where}: the record has no '{name}'; every record needs "
                f"{' and '.join(REQUIRED)} (fields found: {', '.join(map(str, row)) or 'none'})"
            )
        if not isinstance(row[name], str):
            raise InputError(f"'{file}' {where}: '{name}' must be text, got {row[name]!r}")
    raw_id = row.get("id")
    record_id = None if raw_id is None or raw_id == "" else str(raw_id)
    label = parse_label(row.get("label"), f"'{file}' {where}")
    return AnswerRecord(row["prompt"], row["answer"], label, record_id, where, row)


def parse_label(value: Any, where: str) -> Label | None:
    """A reader's label: one of `LABELS` (any case, spaces around), or None for none given.

    Raises:
        InputError: any other value (the message names `where` and the labels allowed).
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    text = value.strip().lower() if isinstance(value, str) else None
    for label in LABELS:
        if text == label:
            return label
    raise InputError(f"{where}: unknown label {value!r}; labels are {', '.join(LABELS)}")


def _json_rows(text: str, file: Path) -> list[tuple[str, dict[str, Any]]]:
    if file.suffix.lower() == ".json" and text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise InputError(f"'{file}' is not valid JSON (line {err.lineno}): {err.msg}") from None
        return [_object(item, f"record {i}", file) for i, item in enumerate(data, 1)]
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(
                f"'{file}' line {number} is not JSON ({err.msg}); give one JSON object per line"
            ) from None
        rows.append(_object(item, f"line {number}", file))
    return rows


def _object(item: Any, where: str, file: Path) -> tuple[str, dict[str, Any]]:
    if not isinstance(item, dict):
        raise InputError(f"'{file}' {where}: expected a JSON object, got {type(item).__name__}")
    return where, item


def _csv_rows(text: str, file: Path) -> list[tuple[str, dict[str, Any]]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = [c for c in reader.fieldnames or [] if c]
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        raise InputError(
            f"'{file}' has no {' or '.join(missing)} column (columns: "
            f"{', '.join(columns) or 'none'}); the first row must name prompt and answer"
        )
    rows = []
    try:
        for row in reader:
            extra = row.pop(None, None)
            if extra:
                raise InputError(
                    f"'{file}' line {reader.line_num} has more cells than the header names"
                )
            rows.append((f"line {reader.line_num}", dict(row)))
    except csv.Error as err:
        raise InputError(f"'{file}' line {reader.line_num} is not valid CSV: {err}") from None
    return rows
