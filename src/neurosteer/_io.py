"""File helpers: text files read by one decoding rule, atomic output folders.

Reading (`read_text`): every text file a user hands us (prompts, benchmark tables, phrase
lists, judge prompts, MMLU csv files) is decoded by one rule, so no file kind fails differently:

    1. a byte-order mark decides: UTF-8, UTF-16 (LE/BE) or UTF-32 (LE/BE); the mark is dropped;
    2. otherwise the bytes must be UTF-8 (strict);
    3. bytes that are not UTF-8, and hold fewer well-formed UTF-8 multi-byte sequences than
       invalid bytes, are read as Windows-1252 (what Excel and older Windows tools write; it
       reads Latin-1 text the same), with a logged warning;
    4. anything else (NUL bytes without a mark, mostly-UTF-8 with damaged bytes, bytes that
       Windows-1252 does not define) is an `InputError` naming the file, the guessed encoding
       and the fix.

Writing (`check_writable`, `atomic_directory`, `atomic_file`): every output path is checked in
one place (it exists only with `force`, its folder exists, it is not an input of the writer),
then everything is written to a hidden sibling and renamed into place. An interrupted write
never leaves a half-written circuit or checkpoint under the real name, and an existing output
is only replaced when the caller says so (`force`).
"""

from __future__ import annotations

import codecs
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from neurosteer.errors import InputError

logger = logging.getLogger(__name__)

#: Byte-order marks, longest first (the UTF-32-LE mark starts with the UTF-16-LE one).
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le", "UTF-32-LE"),
    (codecs.BOM_UTF32_BE, "utf-32-be", "UTF-32-BE"),
    (codecs.BOM_UTF8, "utf-8", "UTF-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le", "UTF-16-LE"),
    (codecs.BOM_UTF16_BE, "utf-16-be", "UTF-16-BE"),
)
#: A well-formed UTF-8 multi-byte sequence: its presence means the file was meant as UTF-8.
_UTF8_MULTIBYTE = re.compile(
    rb"[\xc2-\xdf][\x80-\xbf]|[\xe0-\xef][\x80-\xbf]{2}|[\xf0-\xf4][\x80-\xbf]{3}"
)


# over 60 lines (61) for its 13-line docstring; the body is 47 lines
def read_text(path: str | Path, what: str = "file") -> str:
    """The text of a user's file, decoded by the module's rule (see the module docstring).

    Args:
        path: the file.
        what: what the file is, for error messages ("prompt file", "judge prompt file").

    Returns:
        The decoded text, without a byte-order mark; line endings are left as they are.

    Raises:
        InputError: the file is missing or unreadable, or its bytes fit none of the encodings
            the rule accepts (the message names the file, the guessed encoding and the fix).
    """
    file = Path(path)
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{what} '{file}' does not exist") from None
    except OSError as err:
        raise InputError(f"cannot read {what} '{file}': {err.strerror or err}") from None
    for bom, codec, name in _BOMS:
        if data.startswith(bom):
            try:
                return data[len(bom) :].decode(codec)
            except UnicodeDecodeError as err:
                raise InputError(
                    f"'{file}' starts with a {name} byte-order mark but is not valid {name} "
                    f"(byte {err.start + len(bom)}); re-save it as UTF-8"
                ) from None
    if b"\x00" in data:
        raise InputError(
            f"'{file}' holds NUL bytes: it looks like {_nul_guess(data)} without a byte-order "
            "mark, or is not a text file; re-save it as UTF-8"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        bad = err.start
    line = _line_of(data, bad)
    invalid = data.decode("utf-8", errors="replace").count("\ufffd")
    if len(_UTF8_MULTIBYTE.findall(data)) >= invalid:  # mostly UTF-8: a damaged UTF-8 file
        raise InputError(
            f"'{file}' is UTF-8 but for an invalid byte 0x{data[bad]:02x} on line {line}; "
            "fix that line or re-save the file as UTF-8"
        )
    try:
        text = data.decode("cp1252")
    except UnicodeDecodeError as err:
        undefined, where = data[err.start], _line_of(data, err.start)
        raise InputError(
            f"'{file}' is not UTF-8, UTF-16 or Windows-1252 (byte 0x{undefined:02x} on line "
            f"{where}); convert it to UTF-8, e.g. iconv -f ENCODING -t UTF-8 '{file}'"
        ) from None
    logger.warning(
        "'%s' is not UTF-8 (byte 0x%02x on line %d); read it as Windows-1252",
        file,
        data[bad],
        line,
    )
    return text


def _line_of(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def _nul_guess(data: bytes) -> str:
    """UTF-16-LE text has its NULs at odd offsets (ASCII 'a' is 61 00), UTF-16-BE at even."""
    odd = data[1::2].count(0)
    even = data[0::2].count(0)
    if odd > 4 * even:
        return "UTF-16-LE"
    if even > 4 * odd:
        return "UTF-16-BE"
    return "UTF-32 or a binary file"


def check_writable(path: str | Path, *, force: bool, inputs: Sequence[str | Path] = ()) -> Path:
    """The one check of an output path, made by every writer before any expensive work.

    Every writer of this package (a circuit or vectors file, `save_baked`, `bake_streaming`,
    a GGUF bake, an organism export) checks its output here, through `atomic_directory` /
    `atomic_file` or directly (the CLI, to fail before loading a model).

    Args:
        path: the file or folder to write.
        force: replace an existing `path` (never one of `inputs`).
        inputs: the files or folders the writer reads: the output may not be one of them,
            lie inside one, or hold one, since replacing it would destroy what is being read.

    Returns:
        `path` as a `Path`.

    Raises:
        InputError: `path` exists and `force` is not given, its parent folder does not
            exist, or it overlaps an input.
    """
    target = Path(path)
    resolved = target.resolve()
    for source in inputs:
        read = Path(source).resolve()
        if resolved == read or read in resolved.parents or resolved in read.parents:
            raise InputError(
                f"the output '{target}' would overwrite the input '{source}' it is made from; "
                "choose another output path"
            )
    if target.exists() and not force:
        raise InputError(f"'{target}' already exists; choose another path or pass --force")
    if not target.parent.exists():
        raise InputError(f"the folder '{target.parent}' does not exist; create it first")
    return target


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def atomic_directory(
    path: str | Path, *, force: bool = False, inputs: Sequence[str | Path] = ()
) -> AbstractContextManager[Path]:
    """Yield a temporary folder; on success it replaces `path` in one rename.

    `path` is checked first by `check_writable(path, force=force, inputs=inputs)`.
    """
    return _staged(check_writable(path, force=force, inputs=inputs), folder=True)


def atomic_file(
    path: str | Path, *, force: bool = False, inputs: Sequence[str | Path] = ()
) -> AbstractContextManager[Path]:
    """Yield a temporary file path beside `path`; on success it replaces `path` in one rename.

    `path` is checked first by `check_writable(path, force=force, inputs=inputs)`.
    """
    return _staged(check_writable(path, force=force, inputs=inputs), folder=False)


@contextmanager
def _staged(target: Path, *, folder: bool) -> Iterator[Path]:
    """A hidden sibling of `target` to write; renamed over `target` on success, else removed."""
    prefix = f".{target.name}.tmp-"
    if folder:
        staging = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
    else:
        handle, name = tempfile.mkstemp(prefix=prefix, dir=target.parent)
        os.close(handle)
        staging = Path(name)
    try:
        yield staging
        # mkdtemp/mkstemp make it private (0700/0600); give the result the usual permissions.
        staging.chmod((0o777 if folder else 0o666) & ~_umask())
        if folder and target.exists():  # a folder cannot be renamed over another one
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old / target.name)
            os.replace(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, target)
    finally:
        if staging.is_dir():
            shutil.rmtree(staging, ignore_errors=True)
        else:
            staging.unlink(missing_ok=True)
