"""CLI for RelP: the prompt/target options of `discover`'s RelP mode (the mode itself runs in
`cli.main`), and `neurosteer faithfulness`. Parses, calls `neurosteer.evaluation.faithfulness`,
prints, writes files.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import click
from rich.table import Table

from neurosteer.cli.options import (
    F,
    ModelSettings,
    ints,
    load,
    model_options,
    optional,
    template_option,
)
from neurosteer.cli.render import console, print_table
from neurosteer.cli.settings import parsed, settings_command
from neurosteer.errors import InputError
from neurosteer.prompts.rendering import Rendering
from neurosteer.prompts.text_check import check_text

if TYPE_CHECKING:
    from neurosteer.evaluation.faithfulness import FaithfulnessResult

Pairs = tuple[list[str], list[str], list[str] | None]

FAITHFULNESS_FILES = (
    "faithfulness.csv",
    "faithfulness.json",
    "faithfulness.png",
    "faithfulness.svg",
)


@dataclass(frozen=True, kw_only=True)
class PairSettings:
    """The options of `pair_options`, as given (`read_pairs` checks and reads them)."""

    pair_prompts: tuple[str, ...]
    pair_targets: tuple[str, ...]
    pair_contrasts: tuple[str, ...]
    pairs: Path | None


def pair_options(fn: F) -> F:
    """--prompt/--target/--contrast (repeatable, in pairs) or --pairs FILE (read as
    `PairSettings`)."""
    options = [
        click.option(
            "--prompt",
            "pair_prompts",
            multiple=True,
            help="A prompt (repeatable; one --target each).",
        ),
        click.option(
            "--target",
            "pair_targets",
            multiple=True,
            help="The next token to explain, e.g. ' Paris' (its first token is scored).",
        ),
        click.option(
            "--contrast",
            "pair_contrasts",
            multiple=True,
            help="A competing token per prompt: the metric is target − contrast logit.",
        ),
        click.option(
            "--pairs",
            type=click.Path(path_type=Path),
            default=None,
            help="File of prompt/target[/contrast] records (.jsonl, .json, .csv, .tsv).",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def read_pairs(settings: PairSettings) -> Pairs | None:
    """The pairs the options give, or None when no pair option was given.

    Raises:
        InputError: --pairs mixed with --prompt/--target, or counts that differ.
    """
    prompts, targets = list(settings.pair_prompts), list(settings.pair_targets)
    contrasts = list(settings.pair_contrasts)
    if settings.pairs is not None:
        if prompts or targets or contrasts:
            raise InputError("give the pairs with --pairs FILE or with --prompt/--target, not both")
        from neurosteer.prompts.targets import load_pairs

        return load_pairs(settings.pairs)
    if not (prompts or targets or contrasts):
        return None
    if not prompts:
        raise InputError("--target and --contrast need a --prompt each")
    if len(targets) != len(prompts):
        raise InputError(
            f"{len(prompts)} --prompt but {len(targets)} --target; give one --target per --prompt"
        )
    if contrasts and len(contrasts) != len(prompts):
        raise InputError(
            f"{len(prompts)} --prompt but {len(contrasts)} --contrast; give one --contrast per "
            "--prompt, or none"
        )
    for flag, values in (("--prompt", prompts), ("--target", targets), ("--contrast", contrasts)):
        for i, value in enumerate(values, 1):
            check_text(value, f"{flag} {i}" if len(values) > 1 else flag)
    return prompts, targets, contrasts or None


@dataclass(frozen=True, kw_only=True)
class FaithfulnessSettings:
    """The options of `neurosteer faithfulness`."""

    loading: ModelSettings
    circuit_path: Path
    pairs: PairSettings
    negative: Path
    ks: tuple[int, ...] | None = parsed(optional(ints("--k")))
    positions: Literal["all", "last"]
    batch_size: int
    output: Path | None
    force: bool
    template: Rendering


@click.command("faithfulness")
@model_options
@click.option("--circuit", "circuit_path", type=click.Path(path_type=Path), required=True)
@pair_options
@click.option(
    "--negative",
    "-n",
    type=click.Path(path_type=Path),
    required=True,
    help="Prompts whose mean activations replace the ablated neurons.",
)
@click.option(
    "--k",
    "ks",
    default=None,
    help="Comma-separated circuit sizes (default: 0, 1, 2, 5, 10, ... and the circuit's size).",
)
@click.option(
    "--positions",
    type=click.Choice(["all", "last"]),
    default="all",
    show_default=True,
    help="Mean-ablate every position, or the last prompt position only.",
)
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option(
    "--output",
    "-o",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder to write faithfulness.csv, .json, .png and .svg into.",
)
@click.option("--force", is_flag=True, help="Replace OUTPUT if it exists.")
@template_option
@settings_command(FaithfulnessSettings)
def faithfulness_command(settings: FaithfulnessSettings) -> None:
    """Faithfulness and completeness of a circuit's top-k neurons under mean ablation."""
    from neurosteer._io import check_writable
    from neurosteer.evaluation.faithfulness import measure_faithfulness
    from neurosteer.methods.circuit import Circuit
    from neurosteer.prompts.render import load_prompts

    if settings.output is not None:
        check_writable(settings.output, force=settings.force)
    pairs = read_pairs(settings.pairs)
    if pairs is None:
        raise InputError("give the pairs to measure on: --prompt/--target (or --pairs FILE)")
    circuit = Circuit.load(settings.circuit_path)
    negative = load_prompts(settings.negative)
    model, tokenizer, layout = load(settings.loading, circuit)
    prompts, targets, contrasts = pairs
    template = settings.template
    result = measure_faithfulness(
        model,
        tokenizer,
        circuit,
        prompts,
        targets,
        negative,
        contrasts=contrasts,
        ks=settings.ks,
        positions=settings.positions,
        batch_size=settings.batch_size,
        **template.as_kwargs(),
        layout=layout,
        progress=True,
    )
    _print_result(result)
    if settings.output is not None:
        _write(result, settings.output, force=settings.force)
        click.echo(f"wrote {settings.output}/ ({', '.join(FAITHFULNESS_FILES)})")


def _print_result(result: FaithfulnessResult) -> None:
    console.print(
        f"metric {result.metric} at the last prompt position, mean over {result.n_pairs} "
        f"pairs; m(M) = {result.metric_full:.4g} (unchanged), m(∅) = {result.metric_empty:.4g} "
        f"(all {result.total_neurons} neurons mean-ablated at {result.positions} positions, "
        f"means over {result.n_negative} negative prompts)"
    )
    table = Table(title="faithfulness and completeness", show_edge=False)
    for name in ("k", "faithfulness", "completeness", "m(C_k)", "m(M ∖ C_k)"):
        table.add_column(name, justify="right")
    for p in result.points:
        table.add_row(
            str(p.k),
            _cell(p.faithfulness),
            _cell(p.completeness),
            f"{p.metric_circuit:.4g}",
            f"{p.metric_without:.4g}",
        )
    print_table(table)


def _cell(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def _write(result: FaithfulnessResult, folder: Path, *, force: bool) -> None:
    from neurosteer._io import atomic_directory
    from neurosteer.workflows.report.plots import faithfulness_figure

    rows = result.rows()
    with atomic_directory(folder, force=force) as staging:
        with (staging / "faithfulness.csv").open("w", newline="", encoding="utf-8") as out:
            writer = csv.DictWriter(out, fieldnames=list(rows[0]) if rows else ["k"])
            writer.writeheader()
            writer.writerows(rows)
        text = json.dumps(result.to_dict(), indent=2)
        (staging / "faithfulness.json").write_text(text + "\n", encoding="utf-8")
        figure = faithfulness_figure(result)
        figure.tight_layout()
        figure.savefig(staging / "faithfulness.png", dpi=100)
        figure.savefig(staging / "faithfulness.svg")
