"""`neurosteer inspect C --html PAGE [--model M]`: the neuron browser of a circuit.

The page is built from the circuit file alone (its discovery record); with `--model`, the
model is loaded to add each neuron's logit lens (`neurosteer.methods.logit_lens`).
"""

from __future__ import annotations

from pathlib import Path

import click

from neurosteer.cli.options import show_progress
from neurosteer.errors import InputError
from neurosteer.methods.circuit import Circuit
from neurosteer.methods.logit_lens import NeuronLens

#: Tokens shown on each side of a neuron's logit lens.
LENS_TOKENS = 8


def write_browser(
    circuit: Circuit,
    html_path: Path,
    model: str | None,
    *,
    dtype: str = "auto",
    device: str | None = None,
) -> Path:
    """Write the neuron browser of `circuit` to `html_path`, with the logit lens when `model`
    names the model (a folder, .gguf file or hub id) the circuit was found on.

    Raises:
        InputError: `html_path` cannot be written (no such folder).
        CircuitMismatchError: the model does not fit the circuit.
    """
    from neurosteer._io import check_writable
    from neurosteer.workflows.report.neuron_page import write_neuron_page

    check_writable(html_path, force=True)  # before loading a model
    lens = None if model is None else _lens(circuit, model, dtype, device)
    return write_neuron_page(circuit, html_path, lens)


def _lens(
    circuit: Circuit, model_name: str, dtype: str, device: str | None
) -> dict[tuple[int, int], NeuronLens]:
    """{(layer, neuron): its logit lens} on the named model, at the circuit's own sites."""
    from neurosteer.methods.logit_lens import lens_for
    from neurosteer.model.loading import load_model

    model, tokenizer = load_model(model_name, dtype=dtype, device=device, progress=show_progress())
    layout = circuit.layout_on(model)
    pairs = list(zip(circuit.layers.tolist(), circuit.neurons.tolist(), strict=True))
    return lens_for(model, tokenizer, layout, pairs, top=LENS_TOKENS)


def check_browser_options(html_path: Path | None, model: str | None) -> None:
    """Raise `InputError` for --model without --html (the lens is shown only on the page)."""
    if model is not None and html_path is None:
        raise InputError("--model adds the logit lens to the --html page; give --html PAGE too")


def echo_written(path: Path, with_lens: bool) -> None:
    """Say what was written, in one line."""
    what = "with the logit lens" if with_lens else "without the logit lens (no --model)"
    click.echo(f"wrote {path}: the neuron browser, {what}")
