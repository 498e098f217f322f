"""Atomic output folders: everything is written to a hidden sibling, then renamed into place.

An interrupted write never leaves a half-written circuit or checkpoint under the real name,
and an existing output is only replaced when the caller says so (`force`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from neurosteer.errors import InputError


def check_writable(path: Path, *, force: bool) -> None:
    """Refuse an existing output unless `force`; do it before any expensive work."""
    if path.exists() and not force:
        raise InputError(f"'{path}' already exists; choose another path or pass --force")
    if not path.parent.exists():
        raise InputError(f"the folder '{path.parent}' does not exist; create it first")


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


@contextmanager
def atomic_directory(path: str | Path, *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces `path` in one rename."""
    target = Path(path)
    check_writable(target, force=force)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield staging
        # mkdtemp makes the folder private (0700); give the result the usual permissions.
        staging.chmod(0o777 & ~_umask())
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old / target.name)
            os.replace(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


@contextmanager
def atomic_file(path: str | Path, *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary file path beside `path`; on success it replaces `path` in one rename."""
    target = Path(path)
    check_writable(target, force=force)
    handle, name = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
    os.close(handle)
    staging = Path(name)
    try:
        yield staging
        # mkstemp makes the file private (0600); give the result the usual permissions.
        staging.chmod(0o666 & ~_umask())
        os.replace(staging, target)
    finally:
        staging.unlink(missing_ok=True)
