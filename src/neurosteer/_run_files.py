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
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

from neurosteer.errors import InputError

logger = logging.getLogger(__name__)


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


def append_json_line(file: Path, record: dict[str, Any]) -> None:
    """Append `record` to a JSON-lines file as one line, durable before returning.

    A last line without its newline (an append cut off by a kill) is cut first, so the new line
    starts whole; the line is written in one call, flushed and fsynced.
    """
    _drop_torn_tail(file)
    line = json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n"
    with file.open("a", encoding="utf-8") as handle:
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())


def _drop_torn_tail(file: Path) -> None:
    """Cut a last line that has no newline (an interrupted append) so the next line is whole."""
    if not file.is_file() or file.stat().st_size == 0:
        return
    with file.open("rb+") as handle:
        data = handle.read()
        if data.endswith(b"\n"):
            return
        keep = data.rfind(b"\n") + 1
        logger.warning("%s: dropping a torn last line before appending", file)
        handle.truncate(keep)


def read_lines(file: Path, fix: str) -> list[str]:
    """The lines of a run folder's text file, split at "\\n" ([] when absent).

    Raises:
        InputError: a folder at its name, an unreadable file, or bytes that are not UTF-8
            (`fix` says what to do).
    """
    if not check_regular(file, fix):
        return []
    try:
        return file.read_bytes().decode("utf-8").split("\n")
    except OSError as err:
        raise InputError(f"cannot read '{file}' ({err.strerror or err}); {fix}") from None
    except UnicodeDecodeError as err:
        raise InputError(f"'{file}' is not UTF-8 text (byte {err.start}); {fix}") from None


#: What `json_lines` gives for a whole line that is not JSON (None is JSON's null).
NOT_JSON: Final = object()


def json_lines(file: Path, fix: str) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) of each non-blank line of a JSON-lines file written by
    `append_json_line` (nothing when absent); a line that does not parse gives `NOT_JSON`,
    except a last line without its newline (a kill during the append): skipped with a
    warning, since the next append cuts it. The callers say what a bad line is.

    Raises:
        InputError: as `read_lines`.
    """
    lines = read_lines(file, fix)
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):  # no newline after it: the write was cut off
                logger.warning("%s: ignoring a torn last line (an interrupted write)", file)
                continue
            yield number, NOT_JSON


def read_json_lines(file: Path, fix: str) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file written by `append_json_line` ([] when absent;
    a torn last line skipped, see `json_lines`).

    Raises:
        InputError: a folder at its name, an unreadable file, bytes that are not UTF-8, or a
            whole line that is not a JSON object (the message names file:line; `fix` says what
            to do).
    """
    records = []
    for number, record in json_lines(file, fix):
        if not isinstance(record, dict):
            raise InputError(f"{file}:{number} is not a JSON object (damaged); {fix}")
        records.append(record)
    return records
