"""The neuron browser as a page of its own: `neurosteer inspect C --html PAGE [--model M]`.

A self-contained HTML file (style, script and histograms inline; nothing fetched): the
circuit's facts, then the browser (`neuron_html.neuron_section`).

    write_neuron_page(circuit, "neurons.html", lens_for(model, tokenizer, layout, pairs))
"""

from __future__ import annotations

from pathlib import Path

from neurosteer._io import atomic_file
from neurosteer.methods.circuit import Circuit
from neurosteer.methods.logit_lens import NeuronLens
from neurosteer.workflows.report.neuron_html import neuron_section
from neurosteer.workflows.report.neurons import circuit_facts
from neurosteer.workflows.report.page import html_document, html_facts


def neuron_page(circuit: Circuit, lens: dict[tuple[int, int], NeuronLens] | None = None) -> str:
    """The browser as a self-contained HTML page: "At a glance", then the neurons."""
    title = f"neurosteer neurons: {circuit.model.name_or_path or circuit.model.architecture}"
    facts = html_facts(circuit_facts(circuit, lens is not None))
    return html_document(title, ["<h2>At a glance</h2>" + facts, neuron_section(circuit, lens)])


def write_neuron_page(
    circuit: Circuit,
    path: str | Path,
    lens: dict[tuple[int, int], NeuronLens] | None = None,
    *,
    force: bool = True,
) -> Path:
    """Write `neuron_page` to `path` atomically; returns the path.

    Raises:
        InputError: `path` exists and `force` is False, or its folder does not exist.
    """
    with atomic_file(path, force=force) as staging:
        staging.write_text(neuron_page(circuit, lens), encoding="utf-8")
    return Path(path)
