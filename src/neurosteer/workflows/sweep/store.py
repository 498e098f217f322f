"""The run folder: what a sweep writes, and how it is read back to resume.

    RUN/
        config.json            settings, prompt-set hashes and model provenance
        circuit.circuit/       the CNA circuit with its full δ table (fitted once)
        vectors.safetensors    the baselines' contrast vectors (`neurosteer.methods.contrast`
        format)
        results.jsonl          one JSON line per finished point, appended as each finishes
        answers/<label>_<s>.jsonl   the prompts and answers of each point

Durability: a point's answers file is written atomically before its result line, and the line
is written in one call, flushed and fsynced. A run killed mid-point loses that point only; a
torn last line (a kill during the write itself) is dropped when the file is read again.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from neurosteer import _run_files
from neurosteer.errors import InputError
from neurosteer.workflows.run_identity import differences_in_words

FORMAT = "neurosteer.sweep"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
RESULTS_FILE = "results.jsonl"
ANSWERS_DIR = "answers"
CIRCUIT_DIR = "circuit.circuit"
VECTORS_FILE = "vectors.safetensors"
#: What to do about a run-folder file that cannot be read.
_FIX = "move it away, or use a new output folder"

PointKey = tuple[str, float, int | None]
"""(method, strength, seed): what identifies one point of a sweep."""


def point_key(record: dict[str, Any]) -> PointKey:
    seed = record.get("seed")
    return str(record["method"]), float(record["strength"]), None if seed is None else int(seed)


def point_label(method: str, seed: int | None) -> str:
    """ "cna", or "random-seed3" for the random control of seed 3."""
    return method if seed is None else f"{method}-seed{seed}"


def answers_name(method: str, strength: float, seed: int | None) -> str:
    """Path of a point's answers file, relative to the run folder."""
    return f"{ANSWERS_DIR}/{point_label(method, seed)}_{strength:g}.jsonl"


def read_results(run_dir: str | Path) -> list[dict[str, Any]]:
    """The finished points of a run, in the order they finished (a torn last line is skipped).

    Raises:
        InputError: the file is unreadable, or a line is not JSON or not a sweep point (names
            file:line).
    """
    file = Path(run_dir) / RESULTS_FILE
    records = []
    for number, record in _run_files.json_lines(file, _FIX):
        if record is _run_files.NOT_JSON:
            raise InputError(f"{file}:{number} is not valid JSON; fix or remove that line")
        if not isinstance(record, dict) or "method" not in record or "strength" not in record:
            raise InputError(f"{file}:{number} is not a sweep point; fix or remove that line")
        records.append(record)
    return records


def append_result(run_dir: str | Path, record: dict[str, Any]) -> None:
    """Append one point to results.jsonl and make it durable before returning."""
    _run_files.append_json_line(Path(run_dir) / RESULTS_FILE, record)


def write_answers(run_dir: str | Path, name: str, rows: Sequence[dict[str, Any]]) -> None:
    """Write a point's answers (one JSON object per line) atomically."""
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    write_atomic(Path(run_dir) / name, text)


def read_answers(run_dir: str | Path, name: str) -> list[dict[str, Any]]:
    """A point's answers ([] when the file is absent).

    Raises:
        InputError: the file is unreadable, or a line is not a JSON object (names file:line).
    """
    file = Path(run_dir) / name
    rows = []
    for number, line in enumerate(_run_files.read_lines(file, _FIX), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not isinstance(row, dict):
            raise InputError(
                f"{file}:{number} is not a JSON object (truncated or damaged); delete the file "
                "and its line in results.jsonl to measure that point again"
            )
        rows.append(row)
    return rows


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to a hidden sibling, fsync it, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_config(run_dir: str | Path) -> dict[str, Any] | None:
    """config.json of a sweep folder, or None when absent.

    Raises:
        InputError: it is damaged, unreadable, a folder, or not a JSON object
            (`_run_files.read_object`).
    """
    file = Path(run_dir) / CONFIG_FILE
    return _run_files.read_object(
        file, "is this a sweep folder? Move the file away, or use a new output folder"
    )


def check_or_write_config(run_dir: str | Path, meta: dict[str, Any]) -> None:
    """Write config.json, or refuse when the folder holds a run with other settings.

    `meta` holds "identity" (settings that change numbers), "prompts" (hashes), "model"
    (provenance), "settings" (everything, for the report) and, once fitted, "fitted" (circuit
    size, layers, scans). Only the first three must match an existing run. The rest is merged
    into what the file holds, never replacing it with less (`merge_stored`): a resumed run
    keeps the fitted layers and any section it does not write itself, and the settings' grid
    grows to cover every point the folder holds.

    Raises:
        InputError: the folder holds another sweep, or a config.json that is not a sweep's.
    """
    folder = Path(run_dir)
    old = read_config(folder)
    full: dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION, **meta}
    if old is not None:
        if old.get("format") != FORMAT:
            raise InputError(f"{folder / CONFIG_FILE} is not a neurosteer sweep config")
        differences = differences_in_words(old, meta, ("model", "prompts", "identity"))
        if differences:
            raise InputError(
                f"'{folder}' holds a sweep from {differences}; use a new output folder, or "
                "rerun with the original model, prompts and settings to resume"
            )
        full = merge_stored(old, full)
    write_atomic(folder / CONFIG_FILE, json.dumps(full, indent=2, sort_keys=True) + "\n")


def store_fitted(run_dir: str | Path, values: dict[str, Any]) -> None:
    """Merge `values` into config.json's "fitted" section at once (`merge_stored`), so work
    such as a finished layer scan survives a run killed before its first point.

    A folder without config.json (fitting outside a sweep) is left alone.
    """
    folder = Path(run_dir)
    old = read_config(folder)
    if old is None:
        return
    full = merge_stored(old, {"fitted": values})
    write_atomic(folder / CONFIG_FILE, json.dumps(full, indent=2, sort_keys=True) + "\n")


def merge_stored(old: Any, new: Any) -> Any:
    """`new` laid over `old` without losing anything `old` had.

    Objects merge key by key (keys only in `old` are kept); None never replaces a value; lists
    become the union, `old`'s items first (numbers sorted), so a grid of methods, strengths or
    seeds covers every run of the folder; any other value is replaced by `new`'s.
    """
    if new is None:
        return old
    if isinstance(old, dict) and isinstance(new, dict):
        merged = dict(old)
        for key, value in new.items():
            merged[key] = merge_stored(old.get(key), value)
        return merged
    if isinstance(old, list) and isinstance(new, list):
        union = list(old) + [item for item in new if item not in old]
        numbers = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in union)
        return sorted(union) if numbers else union
    return new
