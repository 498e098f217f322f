"""Every writer's output path is checked in one place (`_io.check_writable`): an existing output
only with force, never one that overlaps what the writer reads; atomic files and folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from neurosteer._io import atomic_directory, atomic_file, check_writable
from neurosteer.errors import InputError


def test_an_output_may_not_overlap_an_input_even_with_force(tmp_path: Path) -> None:
    source = tmp_path / "checkpoint"
    source.mkdir()
    (source / "config.json").write_text("{}")
    for out in (source, source / "baked", tmp_path, source / "."):
        for force in (False, True):
            with pytest.raises(InputError, match="would overwrite the input"):
                check_writable(out, force=force, inputs=[source])
    # a sibling is fine, and a file input is compared as a file
    assert check_writable(tmp_path / "baked", force=False, inputs=[source]) == tmp_path / "baked"
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(InputError, match="would overwrite the input"):
        check_writable(gguf, force=True, inputs=[gguf])
    assert check_writable(tmp_path / "steered.gguf", force=False, inputs=[gguf])


def test_existing_outputs_and_missing_folders_are_refused_before_any_work(tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    with pytest.raises(InputError, match="already exists"):
        check_writable(tmp_path / "taken", force=False)
    assert check_writable(tmp_path / "taken", force=True) == tmp_path / "taken"
    with pytest.raises(InputError, match="does not exist"):
        check_writable(tmp_path / "no" / "out", force=True)


def test_atomic_writers_check_the_same_way_and_leave_nothing_on_failure(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    with pytest.raises(InputError, match="would overwrite the input"):
        atomic_directory(source / "out", inputs=[source]).__enter__()
    with pytest.raises(InputError, match="would overwrite the input"):
        atomic_file(source / "x.bin", force=True, inputs=[source]).__enter__()

    def interrupted() -> None:
        with atomic_file(tmp_path / "out.bin") as staging:
            staging.write_bytes(b"half")
            raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        interrupted()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
    with atomic_file(tmp_path / "out.bin") as staging:
        staging.write_bytes(b"whole")
    assert (tmp_path / "out.bin").read_bytes() == b"whole"
    with pytest.raises(InputError, match="already exists"):
        atomic_file(tmp_path / "out.bin").__enter__()
    with atomic_file(tmp_path / "out.bin", force=True) as staging:
        staging.write_bytes(b"new")
    assert (tmp_path / "out.bin").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin", "src"]
