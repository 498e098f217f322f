"""The run folder: what a search writes, and how it is read back to resume.

    RUN/
        optimize.json          format, settings (`OptimizeConfig`), the model, prompt hashes
        study.db               the Optuna study (SQLite): every trial's params and numbers
        table.circuit/         the recorded statistics every trial selects from (full table)
        reference/             the unchanged model, computed once: kl.safetensors,
                               first_token.safetensors, unchanged.json (answers, labels, rates,
                               refusal tokens)
        baselines.json         CAA and directional ablation on the same held-out prompts
        pareto.png             refusal vs KL (written by `--show`)

Everything but the study is written atomically, so a killed run leaves either the whole file or
none; the study survives kills through SQLite's journal (and `study.recover_interrupted`).
A folder is used by one run at a time (a lock file, where the system has `fcntl`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from neurosteer import _run_files
from neurosteer._io import atomic_file
from neurosteer.errors import InputError
from neurosteer.evaluation.kl import KLReference
from neurosteer.evaluation.refusal import JudgedAnswers
from neurosteer.workflows.optimization.objectives import Reference
from neurosteer.workflows.run_identity import differences_in_words

logger = logging.getLogger(__name__)

FORMAT = "neurosteer.optimize"
FORMAT_VERSION = 1
META_FILE = "optimize.json"
STUDY_FILE = "study.db"
TABLE_DIR = "table.circuit"
REFERENCE_DIR = "reference"
BASELINES_FILE = "baselines.json"
PLOT_FILE = "pareto.png"
LOCK_FILE = ".lock"

#: The sections of optimize.json a resumed run must match.
IDENTITY_SECTIONS = ("model", "settings", "prompts")


def check_folder(run_dir: Path) -> None:
    """Refuse, before any work, a path that cannot hold a search.

    A folder holding only hidden entries (the lock file, staging files of a run killed before
    it wrote optimize.json) recorded nothing: it passes, and the search starts afresh.

    Raises:
        InputError: a file at `run_dir`, a folder holding other things, an optimize.json that
            is not a file, or a missing parent folder.
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise InputError(f"'{run_dir}' is a file; give a folder for the search")
    has_meta = _run_files.check_regular(run_dir / META_FILE, _NEW_FOLDER)
    if _run_files.recorded(run_dir) and not has_meta:
        raise InputError(
            f"'{run_dir}' exists and is not a search folder (no {META_FILE}); choose a new or "
            "empty folder"
        )
    if not run_dir.parent.exists():
        raise InputError(f"the folder '{run_dir.parent}' does not exist; create it first")


def read_meta(run_dir: Path) -> dict[str, Any]:
    """optimize.json of a search folder.

    Raises:
        InputError: the folder holds no search, or its optimize.json is unreadable.
    """
    file = run_dir / META_FILE
    data = _run_files.read_object(file, _NEW_FOLDER)
    if data is None:
        raise InputError(
            f"'{run_dir}' is not a search folder (no {META_FILE}); run `neurosteer optimize "
            "MODEL ... -o FOLDER` first"
        )
    if data.get("format") != FORMAT:
        raise InputError(f"{file} is not a neurosteer search file")
    if data.get("format_version") != FORMAT_VERSION:
        raise InputError(
            f"{file} has search format version {data.get('format_version')}; this neurosteer "
            f"reads version {FORMAT_VERSION}"
        )
    return data


def check_or_write_meta(
    run_dir: Path,
    meta: dict[str, Any],
    *,
    sections: tuple[str, ...] = IDENTITY_SECTIONS,
    write: bool = True,
) -> None:
    """Write optimize.json, or refuse when the folder holds a search that differs in any of
    `sections` (the message names each difference). `write=False` only checks (before a
    model is loaded, with the sections known without it).

    Raises:
        InputError: another model, other settings or other prompts.
    """
    full = {"format": FORMAT, "format_version": FORMAT_VERSION, **meta}
    if (run_dir / META_FILE).is_file():
        old = read_meta(run_dir)
        differences = differences_in_words(old, meta, sections)
        if differences:
            raise InputError(
                f"'{run_dir}' holds a search from {differences}; use a new output folder, or "
                "rerun with the original model, prompts and settings to resume"
            )
        full = {**old, **full}
    if write:
        write_json(run_dir / META_FILE, full)


@contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """Hold the folder's lock file while a search runs in it.

    Raises:
        InputError: another process holds it.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - no advisory locks on this system
        yield
        return
    try:
        opened = (run_dir / LOCK_FILE).open("a")
    except OSError as err:
        raise InputError(
            f"cannot open the lock file '{run_dir / LOCK_FILE}' ({err.strerror or err}); "
            "remove it (no run may be using the folder)"
        ) from None
    with opened as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise InputError(
                f"'{run_dir}' is in use by another neurosteer optimize run; wait for it to "
                "finish or use another folder"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def save_reference(run_dir: Path, reference: Reference) -> None:
    """Write the unchanged model's side of the objectives (each file atomically; the JSON,
    written last, marks the whole as complete)."""
    folder = run_dir / REFERENCE_DIR
    folder.mkdir(exist_ok=True)
    reference.kl.save(folder / "kl.safetensors")
    reference.first_token.save(folder / "first_token.safetensors")
    unchanged = reference.unchanged
    write_json(
        folder / "unchanged.json",
        {
            "prompts": list(unchanged.prompts),
            "answers": list(unchanged.answers),
            "labels": list(unchanged.labels),
            "rates": dict(unchanged.rates),
            "refusal_tokens": list(reference.refusal_tokens),
            "refusal_mass": reference.refusal_mass,
        },
    )


def load_reference(run_dir: Path) -> Reference | None:
    """The stored reference, or None when it was not (completely) written."""
    folder = run_dir / REFERENCE_DIR
    file = folder / "unchanged.json"
    fix = _remeasure(folder, "the unchanged model's answers and KL reference")
    data = _run_files.read_object(file, fix)
    if data is None:
        return None
    try:
        unchanged = JudgedAnswers(
            tuple(data["prompts"]), tuple(data["answers"]), tuple(data["labels"]), data["rates"]
        )
        refusal_tokens = tuple(int(t) for t in data["refusal_tokens"])
        refusal_mass = float(data["refusal_mass"])
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(f"'{file}' lacks a readable {err}; {fix}") from None
    try:
        kl = KLReference.load(folder / "kl.safetensors")
        first_token = KLReference.load(folder / "first_token.safetensors")
    except InputError as err:
        raise InputError(f"{err}; {fix}") from None
    return Reference(
        kl=kl,
        first_token=first_token,
        unchanged=unchanged,
        refusal_tokens=refusal_tokens,
        refusal_mass=refusal_mass,
    )


def unchanged_rates(run_dir: Path) -> dict[str, float] | None:
    """The unchanged model's rates on the held-out positives, without loading tensors."""
    folder = run_dir / REFERENCE_DIR
    fix = _remeasure(folder, "the unchanged model's answers and KL reference")
    data = _run_files.read_object(folder / "unchanged.json", fix)
    if data is None:
        return None
    rates = data.get("rates")
    if not isinstance(rates, dict):
        raise InputError(f"'{folder / 'unchanged.json'}' lacks the unchanged rates; {fix}")
    return rates


def read_json(file: Path, what: str = "its contents") -> Any:
    """A JSON file of the folder, or None when absent.

    Args:
        file: the file.
        what: what a run measures again when the file is deleted (for the error's fix).

    Raises:
        InputError: the file is unreadable, not JSON, or a folder (`_run_files.read_json`).
    """
    return _run_files.read_json(file, _remeasure(file, what))


def write_json(file: Path, data: Any) -> None:
    """Write `data` as JSON atomically."""
    with atomic_file(file, force=True) as staging:
        staging.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


_NEW_FOLDER = "move it away, or start the search in a new output folder"


def _remeasure(path: Path, what: str) -> str:
    """The fix for a damaged file that a run can measure again."""
    return f"delete '{path}' and the next run measures {what} again"
