"""MMLU data: questions read from local files in either common layout.

    per-subject   `<subject>_dev.csv` and `<subject>_test.csv` (or `_val`), in the folder or in
                  its `dev/` and `test/` subfolders (the original MMLU tarball); no header;
                  columns question, A, B, C, D, answer letter
    combined      `dev.csv` and `test.csv` (or one `test_*.csv`, e.g. `test_subset.csv`) with a
                  header naming at least subject, question, A, B, C, D, answer; a combined
                  test file may also be given directly, its `dev.csv` read from beside it

`mmlu.py` scores these questions through lm-evaluation-harness.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from neurosteer._io import read_text
from neurosteer.errors import InputError

LETTERS = ("A", "B", "C", "D")

Layout = Literal["per_subject", "combined"]


_PER_SUBJECT_HEADER = ["question", "a", "b", "c", "d", "answer"]


_COMBINED_COLUMNS = ("subject", "question", "a", "b", "c", "d", "answer")


@dataclass(frozen=True)
class MMLUQuestion:
    """One question: its text, four choices and the index (0-3) of the right one."""

    question: str
    choices: tuple[str, str, str, str]
    answer: int


@dataclass(frozen=True)
class MMLUData:
    """MMLU questions per subject, read from local files by `load_mmlu`.

    Attributes:
        dev: {subject: few-shot questions, in file order} (may lack subjects when n_shot is 0).
        test: {subject: evaluated questions, in file order}.
        layout: "per_subject" or "combined".
        source: the folder or file read.
        split: the evaluated split's name ("test", "val", ...).
    """

    dev: dict[str, tuple[MMLUQuestion, ...]]
    test: dict[str, tuple[MMLUQuestion, ...]]
    layout: Layout
    source: str
    split: str

    @property
    def subjects(self) -> tuple[str, ...]:
        """Subjects that have evaluated questions, sorted."""
        return tuple(sorted(self.test))


def load_mmlu(path: str | Path, *, split: str = "test") -> MMLUData:
    """Read MMLU-format questions from a folder (either layout) or a combined test file.

    Args:
        path: a folder of per-subject files, a folder with combined files, or a combined
            test file (its `dev.csv` is read from the same folder when present).
        split: the evaluated split ("test", or "val" for the original tarball's validation).

    Example:
        >>> data = load_mmlu("data/mmlu")  # dev.csv + test_subset.csv
        >>> data.layout, len(data.subjects)
    """
    root = Path(path)
    if not root.exists():
        raise InputError(f"MMLU data not found: {root}; give a folder of MMLU csv files")
    if root.is_file():
        dev_file = root.parent / "dev.csv"
        return _load_combined(root, dev_file if dev_file.is_file() else None, split)
    per_subject = _per_subject_files(root, split)
    combined = _combined_file(root, split)
    if per_subject and combined is not None:
        raise InputError(
            f"{root} holds both per-subject *_{split}.csv files and {combined.name}; "
            "give the combined file itself or a folder with one layout"
        )
    if per_subject:
        return _load_per_subject(root, per_subject, split)
    if combined is not None:
        dev_file = root / "dev.csv"
        return _load_combined(combined, dev_file if dev_file.is_file() else None, split)
    raise InputError(
        f"{root} holds no MMLU files: expected <subject>_{split}.csv files (no header) or a "
        f"combined {split}.csv with a subject column"
    )


def _per_subject_files(root: Path, split: str) -> dict[str, Path]:
    """{subject: <subject>_<split>.csv} found in `root` or `root/<split>`."""
    suffix = f"_{split}.csv"
    found: dict[str, Path] = {}
    for folder in (root, root / split):
        for file in sorted(folder.glob(f"*{suffix}")) if folder.is_dir() else ():
            found.setdefault(file.name[: -len(suffix)], file)
    return found


def _combined_file(root: Path, split: str) -> Path | None:
    """`<split>.csv`, else the one `<split>_*.csv` in `root`."""
    exact = root / f"{split}.csv"
    if exact.is_file():
        return exact
    candidates = sorted(root.glob(f"{split}_*.csv"))
    if len(candidates) > 1:
        names = ", ".join(c.name for c in candidates)
        raise InputError(f"{root} has several {split} files ({names}); give one file as the path")
    return candidates[0] if candidates else None


def _load_per_subject(root: Path, files: Mapping[str, Path], split: str) -> MMLUData:
    test = {subject: _read_per_subject(file) for subject, file in files.items()}
    dev: dict[str, tuple[MMLUQuestion, ...]] = {}
    for subject in files:
        for folder in (root, root / "dev"):
            file = folder / f"{subject}_dev.csv"
            if file.is_file():
                dev[subject] = _read_per_subject(file)
                break
    return MMLUData(dev=dev, test=test, layout="per_subject", source=str(root), split=split)


def _read_per_subject(file: Path) -> tuple[MMLUQuestion, ...]:
    """Rows question, A, B, C, D, answer letter; no header (a literal header row is skipped)."""
    questions = []
    with io.StringIO(read_text(file, "MMLU file"), newline="") as handle:
        for line, row in enumerate(csv.reader(handle), start=1):
            if not row:
                continue
            if line == 1 and [c.strip().lower() for c in row] == _PER_SUBJECT_HEADER:
                continue
            if len(row) != 6:
                raise InputError(
                    f"{file}:{line} has {len(row)} columns; MMLU per-subject files have 6 "
                    "(question, A, B, C, D, answer) and no header"
                )
            questions.append(_question(row[0], row[1:5], row[5], f"{file}:{line}"))
    return tuple(questions)


def _load_combined(test_file: Path, dev_file: Path | None, split: str) -> MMLUData:
    test = _read_combined(test_file)
    dev = _read_combined(dev_file) if dev_file is not None else {}
    return MMLUData(dev=dev, test=test, layout="combined", source=str(test_file), split=split)


def _read_combined(file: Path) -> dict[str, tuple[MMLUQuestion, ...]]:
    """{subject: questions} from a csv whose header names subject, question, A-D, answer."""
    by_subject: dict[str, list[MMLUQuestion]] = {}
    with io.StringIO(read_text(file, "MMLU file"), newline="") as handle:
        reader = csv.DictReader(handle)
        columns = {name.strip().lower(): name for name in reader.fieldnames or ()}
        missing = [c for c in _COMBINED_COLUMNS if c not in columns]
        if missing:
            raise InputError(
                f"{file} lacks the columns {missing} in its header; a combined MMLU file needs "
                "subject, question, A, B, C, D, answer (per-subject files go in a folder)"
            )
        for line, row in enumerate(reader, start=2):
            choices = [row[columns[c]] or "" for c in ("a", "b", "c", "d")]
            where = f"{file}:{line}"
            question = _question(
                row[columns["question"]] or "", choices, row[columns["answer"]], where
            )
            subject = (row[columns["subject"]] or "").strip()
            if not subject:
                raise InputError(f"{where} has an empty subject")
            by_subject.setdefault(subject, []).append(question)
    return {subject: tuple(rows) for subject, rows in by_subject.items()}


def _question(text: str, choices: Sequence[str], answer: str | None, where: str) -> MMLUQuestion:
    letter = (answer or "").strip().upper()
    if letter not in LETTERS:
        raise InputError(f"{where}: the answer must be one of A, B, C, D, got {answer!r}")
    a, b, c, d = choices
    return MMLUQuestion(question=text, choices=(a, b, c, d), answer=LETTERS.index(letter))
