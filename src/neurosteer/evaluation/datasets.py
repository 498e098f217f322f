"""Evaluation prompt sets from files or dataset ids.

One entry point, `load_dataset_prompts`, reads the formats the refusal literature ships:

    JailbreakBench behaviours CSV   column `Goal`
    AdvBench harmful_behaviors.csv  column `goal`
    HarmBench behaviours CSV        column `Behavior`; contextual and copyright rows skipped
    refusal_direction JSON splits   records with an `instruction` field (a folder + split works)
    plain .txt                      one prompt per line (.tsv, .jsonl work too)
    a Hugging Face datasets id      "owner/name" or "owner/name:config", when `datasets` is
                                    installed and the hub is reachable

Files go through `prompt_files.load_prompts`, the one reader of every prompt file (decoding,
column rule, HarmBench filter); this module adds folders of splits, dataset ids and `limit`.
"""

from __future__ import annotations

from pathlib import Path

from neurosteer.errors import InputError
from neurosteer.prompts.files import FILE_KINDS, load_prompts, prompts_from_rows


def load_dataset_prompts(
    source: str | Path,
    *,
    split: str | None = None,
    column: str | None = None,
    limit: int | None = None,
) -> list[str]:
    """Prompts from a benchmark file, a folder of split files, or a Hugging Face datasets id.

    Args:
        source: a file (.csv, .tsv, .json, .jsonl, .txt), a folder holding `<split>.<kind>`
            files, or a datasets id ("JailbreakBench/JBB-Behaviors:behaviors").
        split: the split file in a folder ("harmful_test") or the dataset split ("harmful");
            a dataset id defaults to "train".
        column: the prompt field; by default the first of `prompt_files.PROMPT_FIELDS` present.
        limit: keep only the first `limit` prompts (after HarmBench filtering).

    Example:
        >>> load_dataset_prompts("data/refusal_direction/splits", split="harmful_test", limit=2)
    """
    if limit is not None and limit < 1:
        raise InputError(f"limit must be at least 1, got {limit}")
    path = Path(source).expanduser()
    if path.is_dir():
        prompts = load_prompts(_split_file(path, split), column=column)
    elif path.is_file():
        if split is not None:
            raise InputError(
                f"split={split!r} applies to folders and dataset ids, not to the file '{path}'"
            )
        prompts = load_prompts(path, column=column)
    elif _looks_local(str(source)):
        raise InputError(f"dataset file '{path}' does not exist")
    else:
        prompts = _from_hub(str(source), split, column, limit)
    if not prompts:
        raise InputError(f"'{source}' holds no prompts")
    return prompts[:limit] if limit is not None else prompts


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
    where = f"{source}:{split or 'train'}"
    rows = ((f"{where} row {i + 1}", row) for i, row in enumerate(data))
    return list(prompts_from_rows(rows, list(data.column_names), column, source, limit))
