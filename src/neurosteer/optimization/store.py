"""Stage 9 (search), the run folder: what a search writes, and how it is read back to resume.

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

from neurosteer._io import atomic_file
from neurosteer.errors import InputError
from neurosteer.evaluation.kl import KLReference
from neurosteer.evaluation.refusal import JudgedAnswers
from neurosteer.optimization.objectives import Reference
from neurosteer.run_identity import differences_in_words

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
    """Refuse, before any work, a path that cannot hold a search."""
    if run_dir.exists() and not run_dir.is_dir():
        raise InputError(f"'{run_dir}' is a file; give a folder for the search")
    if run_dir.is_dir() and any(run_dir.iterdir()) and not (run_dir / META_FILE).is_file():
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
    if not file.is_file():
        raise InputError(
            f"'{run_dir}' is not a search folder (no {META_FILE}); run `neurosteer optimize "
            "MODEL ... -o FOLDER` first"
        )
    try:
        data: dict[str, Any] = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{file} is not valid JSON ({err}); is this a search folder?") from None
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
    with (run_dir / LOCK_FILE).open("a") as handle:
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
    if not (folder / "unchanged.json").is_file():
        return None
    data = json.loads((folder / "unchanged.json").read_text(encoding="utf-8"))
    unchanged = JudgedAnswers(
        tuple(data["prompts"]), tuple(data["answers"]), tuple(data["labels"]), data["rates"]
    )
    return Reference(
        kl=KLReference.load(folder / "kl.safetensors"),
        first_token=KLReference.load(folder / "first_token.safetensors"),
        unchanged=unchanged,
        refusal_tokens=tuple(int(t) for t in data["refusal_tokens"]),
        refusal_mass=float(data["refusal_mass"]),
    )


def unchanged_rates(run_dir: Path) -> dict[str, float] | None:
    """The unchanged model's rates on the held-out positives, without loading tensors."""
    file = run_dir / REFERENCE_DIR / "unchanged.json"
    if not file.is_file():
        return None
    rates: dict[str, float] = json.loads(file.read_text(encoding="utf-8"))["rates"]
    return rates


def read_json(file: Path) -> Any:
    """A JSON file of the folder, or None when absent."""
    if not file.is_file():
        return None
    return json.loads(file.read_text(encoding="utf-8"))


def write_json(file: Path, data: Any) -> None:
    """Write `data` as JSON atomically."""
    with atomic_file(file, force=True) as staging:
        staging.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
