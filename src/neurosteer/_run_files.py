"""Reading back the files of a run folder (a search's or a sweep's), whatever state they are in.

A run folder is written by a process that can be killed at any moment, and read back by the
next run, `--show`, `--export` or `report`. Every file it holds may be missing, empty,
truncated, a folder, unreadable, or something else under the same name. One rule for all of
them: a file that records nothing yet (absent, or only the hidden lock and staging files a
killed run leaves) means a fresh start; anything else that cannot be read is one
`InputError` naming the file, what is wrong with it and what to do.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from neurosteer.errors import InputError


def recorded(run_dir: Path) -> list[Path]:
    """The entries of `run_dir` that hold something a run recorded: everything but hidden
    names (the lock file, and staging files a run killed mid-write leaves, `.NAME.tmp-*`).

    Returns [] for a folder that does not exist.
    """
    if not run_dir.is_dir():
        return []
    return sorted(p for p in run_dir.iterdir() if not p.name.startswith("."))


def check_regular(file: Path, fix: str) -> bool:
    """Whether `file` exists as a regular file (False when absent).

    Raises:
        InputError: something else (a folder, a device) stands at its name; `fix` says what to
            do.
    """
    if not file.exists() and not file.is_symlink():
        return False
    if not file.is_file():
        raise InputError(f"'{file}' is not a file (a folder or other entry has its name); {fix}")
    return True


def read_json(file: Path, fix: str) -> Any | None:
    """The JSON value of a run folder's file, or None when the file is absent.

    Args:
        file: the file.
        fix: what to do when it cannot be read ("delete it; the next run measures ... again").

    Raises:
        InputError: a folder at its name, an unreadable file (permissions, I/O), bytes that are
            not UTF-8, or text that is not JSON (empty or truncated included).
    """
    if not check_regular(file, fix):
        return None
    try:
        text = file.read_bytes().decode("utf-8")
    except OSError as err:
        raise InputError(f"cannot read '{file}' ({err.strerror or err}); {fix}") from None
    except UnicodeDecodeError as err:
        raise InputError(f"'{file}' is not UTF-8 text (byte {err.start}); {fix}") from None
    if not text.strip():
        raise InputError(f"'{file}' is empty; {fix}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(
            f"'{file}' is not valid JSON ({err.msg}, line {err.lineno}: truncated or "
            f"damaged); {fix}"
        ) from None


def read_object(file: Path, fix: str) -> dict[str, Any] | None:
    """`read_json` for a file that must hold a JSON object.

    Raises:
        InputError: as `read_json`, or the value is not an object.
    """
    data = read_json(file, fix)
    if data is not None and not isinstance(data, dict):
        raise InputError(f"'{file}' holds a JSON {type(data).__name__}, not an object; {fix}")
    return data
