"""`neurosteer export-lora MODEL --circuit C [-m M] -o OUT`: a circuit as a LoRA adapter.

OUT is a folder (a PEFT adapter, for PEFT, vLLM, SGLang) or a .gguf file (a llama.cpp adapter
for `--lora-scaled`). The library does the work (`neurosteer.export.lora`,
`neurosteer.export.lora_gguf`); this file parses, checks the output first and prints what was
written, with the rank an engine must allow.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click

from neurosteer._io import check_writable
from neurosteer.cli.options import ModelSettings, circuit_output_options, load, model_options
from neurosteer.cli.settings import settings_command

if TYPE_CHECKING:  # imported inside the command: `--help` stays fast
    from neurosteer.export.lora import LoraReport
    from neurosteer.methods.circuit import Circuit


@dataclass(frozen=True, kw_only=True)
class ExportLoraSettings:
    """The options of `neurosteer export-lora`."""

    loading: ModelSettings
    circuit_path: Path
    multiplier: float | None
    output: Path
    force: bool


@click.command("export-lora")
@model_options
@circuit_output_options(
    multiplier_help="The multiplier m the adapter applies at scale 1 (default: the circuit's "
    "stored multiplier, else 0); at scale s the neurons are scaled by 1 + s(m - 1).",
    output_help="A folder for a PEFT adapter (PEFT, vLLM, SGLang), or a .gguf file for a "
    "llama.cpp adapter (--lora-scaled).",
)
@settings_command(ExportLoraSettings)
def export_lora_command(settings: ExportLoraSettings) -> None:
    """Write the circuit as a LoRA adapter on MODEL's down projections (rank per layer = its
    circuit neurons): served at scale s, it scales them by 1 + s(m - 1), exactly."""
    from neurosteer.methods.circuit import Circuit
    from neurosteer.model.gguf.loading import find_gguf

    model_path = Path(settings.loading.model).expanduser()
    gguf_source = find_gguf(model_path) if model_path.exists() else None
    inputs = [settings.loading.model] if model_path.exists() else []
    check_writable(settings.output, force=settings.force, inputs=inputs)
    circuit = Circuit.load(settings.circuit_path)
    m = circuit.default_strength if settings.multiplier is None else settings.multiplier
    if settings.output.suffix.lower() == ".gguf":
        report = _export_gguf(settings, circuit, m, gguf_source)
        kind = "llama.cpp LoRA adapter"
    else:
        from neurosteer.export.lora import save_lora

        model, _, layout = load(settings.loading, circuit)
        report = save_lora(model, circuit, m, settings.output, force=settings.force, layout=layout)
        kind = "PEFT LoRA adapter"
    _print_report(report, kind)


def _export_gguf(
    settings: ExportLoraSettings, circuit: Circuit, m: float, gguf_source: Path | None
) -> LoraReport:
    """A .gguf output: read a GGUF MODEL's own down projections, else load the model."""
    from neurosteer.export.lora_gguf import save_lora_gguf

    if gguf_source is not None:
        return save_lora_gguf(gguf_source, circuit, m, settings.output, force=settings.force)
    model, _, layout = load(settings.loading, circuit)
    return save_lora_gguf(model, circuit, m, settings.output, force=settings.force, layout=layout)


def _print_report(report: LoraReport, kind: str) -> None:
    from neurosteer.export.lora import rank_notes

    ranks = ", ".join(f"{layer}: {r}" for layer, r in sorted(report.ranks.items()))
    m = report.multiplier
    click.echo(
        f"wrote {report.path}: a {kind} of rank {report.rank} on {len(report.ranks)} down "
        f"projections (neurons per layer {ranks}), {report.nbytes / 2**10:.1f} KiB"
    )
    click.echo(
        f"  at scale s it scales the {sum(report.ranks.values())} neurons by 1 + s({m:g} - 1): "
        f"s = 1 gives m = {m:g}, s = 0 the unchanged model"
    )
    if m == 1.0:
        click.echo("  m = 1 leaves the neurons as they are: this adapter changes nothing")
    for note in rank_notes(report.rank):
        click.echo(f"  {note}")
