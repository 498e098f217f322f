"""Stage 8 of the pipeline (evaluation): evaluation prompt sets from files or dataset ids.

One entry point, `load_dataset_prompts`, reads the formats the refusal literature ships:

    JailbreakBench behaviours CSV   column `Goal`
    AdvBench harmful_behaviors.csv  column `goal`
    HarmBench behaviours CSV        column `Behavior`; contextual and copyright rows skipped
    refusal_direction JSON splits   records with an `instruction` field (a folder + split works)
    plain .txt                      one prompt per line
    a Hugging Face datasets id      "owner/name" or "owner/name:config", when `datasets` is
                                    installed and the hub is reachable

Plain files go through `prompts.load_prompts`; this module adds column choice, the HarmBench
filter, folders of splits and dataset ids.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from neurosteer.errors import InputError
from neurosteer.prompts import PROMPT_FIELDS, load_prompts

logger = logging.getLogger(__name__)

#: HarmBench's `FunctionalCategory` values whose behaviour text is not a self-contained request:
#: "contextual" rows need their `ContextString`, "copyright" rows ask for song lyrics or book
#: passages and are judged by hashing, not by refusal.
SKIPPED_CATEGORIES = frozenset({"contextual", "copyright"})
CATEGORY_COLUMN = "functionalcategory"
FILE_KINDS = (".json", ".jsonl", ".csv", ".txt")


def load_dataset_prompts(
    source: str | Path,
    *,
    split: str | None = None,
    column: str | None = None,
    limit: int | None = None,
) -> list[str]:
    """Prompts from a benchmark file, a folder of split files, or a Hugging Face datasets id.

    Args:
        source: a file (.csv, .json, .jsonl, .txt), a folder holding `<split>.<kind>` files, or a
            datasets id ("JailbreakBench/JBB-Behaviors:behaviors").
        split: the split file in a folder ("harmful_test") or the dataset split ("harmful");
            a dataset id defaults to "train".
        column: the prompt field; by default the first of `prompts.PROMPT_FIELDS` present.
        limit: keep only the first `limit` prompts (after HarmBench filtering).

    Example:
        >>> load_dataset_prompts("data/refusal_direction/splits", split="harmful_test", limit=2)
    """
    if limit is not None and limit < 1:
        raise InputError(f"limit must be at least 1, got {limit}")
    path = Path(source).expanduser()
    if path.is_dir():
        prompts = _from_file(_split_file(path, split), column)
    elif path.is_file():
        if split is not None:
            raise InputError(
                f"split={split!r} applies to folders and dataset ids, not to the file '{path}'"
            )
        prompts = _from_file(path, column)
    elif _looks_local(str(source)):
        raise InputError(f"dataset file '{path}' does not exist")
    else:
        prompts = _from_hub(str(source), split, column, limit)
    if not prompts:
        raise InputError(f"'{source}' holds no prompts")
    return prompts[:limit] if limit is not None else prompts


def _from_file(file: Path, column: str | None) -> list[str]:
    suffix = file.suffix.lower()
    if suffix == ".csv":
        with file.open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            return _from_rows(reader, reader.fieldnames or [], column, str(file))
    if column is None:
        return load_prompts(file)
    if suffix == ".txt":
        raise InputError(f"column={column!r} does not apply to the text file '{file}'")
    if suffix not in (".json", ".jsonl"):
        raise InputError(f"'{file}': unknown file kind '{suffix}'; use {', '.join(FILE_KINDS)}")
    text = file.read_text(encoding="utf-8")
    try:
        if suffix == ".json":
            records = json.loads(text)
        else:
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as err:
        raise InputError(f"'{file}' is not valid JSON (line {err.lineno}): {err.msg}") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise InputError(f"'{file}' must hold records (JSON objects) to pick column={column!r}")
    fields = list(dict.fromkeys(k for r in records for k in r))
    return _from_rows(records, fields, column, str(file))


def _from_rows(
    rows: Iterable[Mapping[str, Any]],
    fields: Sequence[str],
    column: str | None,
    where: str,
    limit: int | None = None,
) -> list[str]:
    """The prompt column of table rows, without HarmBench's contextual and copyright rows."""
    by_lower = {str(f).strip().lower(): f for f in fields}
    if column is not None:
        chosen = by_lower.get(column.strip().lower())
        if chosen is None:
            raise InputError(f"'{where}' has no column '{column}'; it has {', '.join(fields)}")
    else:
        chosen = next((by_lower[f] for f in PROMPT_FIELDS if f in by_lower), None)
        if chosen is None:
            raise InputError(
                f"'{where}' has no prompt column (looked for {', '.join(PROMPT_FIELDS)}); "
                f"its columns are {', '.join(fields)}; pass column="
            )
    category = by_lower.get(CATEGORY_COLUMN)
    prompts: list[str] = []
    skipped = 0
    for row in rows:
        if category is not None and str(row.get(category) or "").lower() in SKIPPED_CATEGORIES:
            skipped += 1
            continue
        value = row.get(chosen)
        if isinstance(value, str) and value.strip():
            prompts.append(value.strip())
            if limit is not None and len(prompts) >= limit:
                break
    if skipped:
        logger.info("%s: skipped %d contextual/copyright rows", where, skipped)
    return prompts


def _split_file(folder: Path, split: str | None) -> Path:
    candidates = sorted(p for p in folder.iterdir() if p.suffix.lower() in FILE_KINDS)
    names = ", ".join(p.stem for p in candidates) or "no prompt files"
    if split is None:
        raise InputError(f"'{folder}' is a folder; pick a split file with split= (it has {names})")
    for file in candidates:
        if file.stem == split:
            return file
    raise InputError(f"'{folder}' has no split '{split}' (it has {names})")


def _looks_local(source: str) -> bool:
    """A path-like string (not a hub id such as "owner/name")."""
    return (
        source.startswith((".", "/", "~", "\\"))
        or Path(source).suffix.lower() in FILE_KINDS
        or source.count("/") > 1
    )


def _from_hub(source: str, split: str | None, column: str | None, limit: int | None) -> list[str]:
    try:
        import datasets  # optional dependency, only for dataset ids
    except ImportError:
        raise InputError(
            f"'{source}' is not a local file; install datasets and be online, or pass a file"
        ) from None
    name, _, config = source.partition(":")
    try:
        data = datasets.load_dataset(name, config or None, split=split or "train")
    except Exception as err:  # network, unknown id, unknown split: all user-fixable
        raise InputError(
            f"cannot load dataset '{source}' (split {split or 'train'}): {err}; "
            "check the id and split, be online, or pass a file"
        ) from None
    return _from_rows(data, list(data.column_names), column, source, limit)
