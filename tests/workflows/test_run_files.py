"""Broken run folders: every file of a search's or a sweep's folder may be empty, truncated, a
folder, of another Optuna's schema or not what its name says. Where nothing was recorded the run
starts afresh; otherwise `--show`, `--export` and a resumed run stop with one line naming the
file and what to do (exit 2), never a KeyError or an SQLAlchemy traceback."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from optimize_support import neutral, one_thread, organism, prompts, quick

from neurosteer.cli.main import cli
from neurosteer.errors import InputError
from neurosteer.workflows.optimization import optimize
from neurosteer.workflows.optimization.store import META_FILE, STUDY_FILE, TABLE_DIR
from neurosteer.workflows.sweep import read_answers, read_config, read_results

__all__ = ["one_thread"]  # the module's autouse fixture

TRIALS = 2


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-trial organism search folder (copied by each test before breaking it)."""
    folder = tmp_path_factory.mktemp("base") / "s"
    _search(folder)
    return folder


def _search(folder: Path, trials: int = TRIALS) -> list[int]:
    model, tok = organism()
    harmful, benign = prompts()
    result = optimize(
        model, tok, harmful, benign, config=quick(trials=trials), run_dir=folder, neutral=neutral()
    )
    return [t.number for t in result.trials]


def _copy(finished: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "s"
    shutil.copytree(finished, folder)
    return folder


def _cli_error(folder: Path, tmp_path: Path, *parts: str, export: bool = True) -> None:
    """`--show` and `--export` (unless not `export`) on `folder` end in one line holding
    `parts`, exit 2."""
    modes = [["--show"], ["--export", str(tmp_path / "x.circuit")]]
    for mode in modes if export else modes[:1]:
        result = CliRunner().invoke(cli, ["optimize", str(folder), *mode])
        assert result.exit_code == 2, (mode, result.output, result.exception)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, result.stderr
        assert "unexpected" not in lines[0]
        for part in parts:
            assert part in lines[0], lines[0]


def _sql(file: Path, *statements: str) -> None:
    with sqlite3.connect(file) as db:
        for statement in statements:
            db.execute(statement)


def _no_study(file: Path) -> None:
    """What a run killed while creating the study leaves: Optuna's tables, no study."""
    tables = ("trial_values", "trial_user_attributes", "trial_params", "trials")
    _sql(file, *(f"DELETE FROM {t}" for t in tables), "DELETE FROM study_directions")
    _sql(file, "DELETE FROM studies")


# --- nothing recorded: a fresh start ---------------------------------------------------------

UNRECORDED: dict[str, Callable[[Path], None]] = {
    "zero-byte study.db": lambda f: (f / STUDY_FILE).write_bytes(b""),
    "study.db without a study": lambda f: _no_study(f / STUDY_FILE),
}


@pytest.mark.parametrize("name", list(UNRECORDED))
def test_a_study_db_that_recorded_nothing_starts_afresh(
    name: str, finished: Path, tmp_path: Path
) -> None:
    folder = _copy(finished, tmp_path)
    UNRECORDED[name](folder)
    _cli_error(folder, tmp_path, "holds no study yet", "run the search")
    # the resumed run starts the trials afresh on the recorded table and reference
    assert _search(folder) == list(range(TRIALS))
    assert CliRunner().invoke(cli, ["optimize", str(folder), "--show"]).exit_code == 0


def test_a_folder_killed_before_its_first_file_starts_afresh(tmp_path: Path) -> None:
    folder = tmp_path / "s"
    folder.mkdir()
    (folder / ".lock").write_bytes(b"")
    (folder / f".{META_FILE}.tmp-x1y2").write_text('{"form')  # a staging file cut short
    assert _search(folder) == list(range(TRIALS))


# --- something recorded, or a foreign file: one line ------------------------------------------


def _schema(version: str) -> Callable[[Path], None]:
    return lambda f: _sql(f / STUDY_FILE, f"UPDATE alembic_version SET version_num = '{version}'")


def _replace_with_folder(file: Path) -> None:
    if file.is_dir():
        shutil.rmtree(file)
    else:
        file.unlink()
    file.mkdir()


BROKEN: dict[str, tuple[Callable[[Path], None], tuple[str, ...]]] = {
    "text study.db": (
        lambda f: (f / STUDY_FILE).write_text("not a database\n"),
        ("study.db' is not an SQLite database", "move it away"),
    ),
    "truncated study.db": (
        lambda f: (f / STUDY_FILE).write_bytes((f / STUDY_FILE).read_bytes()[:3000]),
        ("study.db' cannot be read as the search's study", "malformed", "move it away"),
    ),
    "study.db a folder": (
        lambda f: _replace_with_folder(f / STUDY_FILE),
        ("study.db' is not a file", "move it away"),
    ),
    "older Optuna schema": (
        _schema("v2.4.0.a"),
        ("study.db' was written by an Optuna", "optuna storage upgrade --storage sqlite:///"),
    ),
    "newer Optuna schema": (
        _schema("v99.0.0.z"),
        ("study.db' was written by an Optuna", "pip install -U optuna"),
    ),
    "empty optimize.json": (
        lambda f: (f / META_FILE).write_bytes(b""),
        ("optimize.json' is empty", "new output folder"),
    ),
    "truncated optimize.json": (
        lambda f: (f / META_FILE).write_bytes((f / META_FILE).read_bytes()[:200]),
        ("optimize.json' is not valid JSON", "truncated", "new output folder"),
    ),
    "optimize.json a list": (
        lambda f: (f / META_FILE).write_text("[1, 2]\n"),
        ("optimize.json' holds a JSON list, not an object",),
    ),
    "optimize.json not UTF-8": (
        lambda f: (f / META_FILE).write_bytes(b'{"format": "\xff"}'),
        ("optimize.json' is not UTF-8",),
    ),
    "optimize.json a folder": (
        lambda f: _replace_with_folder(f / META_FILE),
        ("optimize.json' is not a file",),
    ),
    "truncated unchanged.json": (
        lambda f: (f / "reference" / "unchanged.json").write_text('{"prompts": ["a'),
        ("unchanged.json' is not valid JSON", "delete", "measures the unchanged model"),
    ),
    "truncated baselines.json": (
        lambda f: (f / "baselines.json").write_text('{"points": [{"method": '),
        ("baselines.json' is not valid JSON", "measures the baselines again"),
    ),
    "baselines.json of another form": (
        lambda f: (f / "baselines.json").write_text('{"points": [{"x": 1}]}'),
        ("baselines.json' does not hold baseline points", "measures the baselines"),
    ),
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_a_damaged_run_file_is_one_line(name: str, finished: Path, tmp_path: Path) -> None:
    folder = _copy(finished, tmp_path)
    breakage, parts = BROKEN[name]
    breakage(folder)
    # the export reads only optimize.json, the study and the table
    _cli_error(folder, tmp_path, *parts, export="unchanged" not in name and "baselines" not in name)
    if "baselines" in name:
        return  # the quick search measures no baselines, so a resumed one never reads them
    with pytest.raises(InputError) as caught:
        _search(folder, TRIALS + 1)
    for part in parts:
        assert part in str(caught.value)


RESUMED: dict[str, tuple[Callable[[Path], None], str]] = {
    "truncated kl.safetensors": (
        lambda f: (f / "reference" / "kl.safetensors").write_bytes(b"\x08\x00"),
        "kl.safetensors' is not a readable KL reference",
    ),
    "truncated table": (
        lambda f: (f / TABLE_DIR / "circuit.json").write_bytes(b""),
        "and the next run records the table again",
    ),
}


@pytest.mark.parametrize("name", list(RESUMED))
def test_a_damaged_stored_product_stops_the_resume_in_one_line(
    name: str, finished: Path, tmp_path: Path
) -> None:
    folder = _copy(finished, tmp_path)
    breakage, part = RESUMED[name]
    breakage(folder)
    with pytest.raises(InputError, match="delete") as caught:
        _search(folder, TRIALS + 1)
    assert part in str(caught.value)


# --- the sweep's run folder ------------------------------------------------------------------


def test_damaged_sweep_files_are_one_line(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    for text, message in (
        ("", "config.json' is empty"),
        ('{"format": "neuro', "config.json' is not valid JSON"),
        ('"a string"', "config.json' holds a JSON str, not an object"),
    ):
        config.write_text(text)
        with pytest.raises(InputError, match="sweep folder"):
            read_config(tmp_path)
        with pytest.raises(InputError) as caught:
            read_config(tmp_path)
        assert message in str(caught.value)
    config.unlink()
    config.mkdir()
    with pytest.raises(InputError, match=r"config\.json' is not a file"):
        read_config(tmp_path)
    results = tmp_path / "results.jsonl"
    results.write_text('{"method": "cna", "strength": 0.0}\n5\n')
    with pytest.raises(InputError, match=r"results.jsonl:2 is not a sweep point"):
        read_results(tmp_path)
    results.write_text('{"method": "cna", "strength": 0.0}\n{"meth\n{"method": "cna", "s')
    with pytest.raises(InputError, match=r"results.jsonl:2 is not valid JSON; fix or remove"):
        read_results(tmp_path)
    results.write_text('{"method": "cna", "strength": 0.0}\n{"method": "cna", "s')  # torn
    assert read_results(tmp_path) == [{"method": "cna", "strength": 0.0}]
    results.write_bytes(b'{"method": "\xff"}\n')
    with pytest.raises(InputError, match=r"results\.jsonl' is not UTF-8"):
        read_results(tmp_path)
    answers = tmp_path / "answers" / "cna_0.jsonl"
    answers.parent.mkdir()
    answers.write_text('{"prompt": "a", "answer": "b"}\n{"prompt": "a", "ans\n')
    with pytest.raises(InputError, match=r"cna_0.jsonl:2 is not a JSON object"):
        read_answers(tmp_path, "answers/cna_0.jsonl")


def test_a_sweep_folder_with_only_a_staging_file_is_a_new_run(tmp_path: Path) -> None:
    from neurosteer.workflows.sweep.runner import _run_folder

    folder = tmp_path / "run"
    folder.mkdir()
    (folder / ".config.json.tmp-abc").write_text("{")
    assert _run_folder(folder) == folder
    (folder / "stray.txt").write_text("x")
    with pytest.raises(InputError, match="not a sweep folder"):
        _run_folder(folder)
