"""benchmarks/common.py's command-line pieces: a bad --data folder is named before any model
loads, and an error neurosteer raises on purpose ends a benchmark in one line, exit code 2."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
import common

from neurosteer import InputError


def test_data_folder_names_what_is_missing_and_what_to_give(tmp_path: Path) -> None:
    (tmp_path / "jailbreakbench").mkdir()
    assert common.data_folder(tmp_path, "jailbreakbench") == tmp_path
    with pytest.raises(InputError, match="no refusal_direction/splits in it; give the shared"):
        common.data_folder(tmp_path, "jailbreakbench", "refusal_direction/splits")


def test_run_main_prints_one_line_and_exits_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def bad() -> None:
        raise InputError("model file 'x.gguf' does not exist")

    monkeypatch.setattr(sys, "argv", ["bench.py"])
    with pytest.raises(SystemExit) as ended:
        common.run_main(bad)
    assert ended.value.code == 2
    assert capsys.readouterr().err == "error: model file 'x.gguf' does not exist\n"
    monkeypatch.setattr(sys, "argv", ["bench.py", "--debug"])
    with pytest.raises(InputError):  # --debug keeps the traceback
        common.run_main(bad)
    assert sys.argv == ["bench.py"]
