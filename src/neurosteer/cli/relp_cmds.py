"""CLI for RelP: the prompt/target options of `discover`'s RelP mode, and `neurosteer
faithfulness`. Parses, calls `neurosteer.methods.relp` / `neurosteer.evaluation.faithfulness`,
prints, writes files.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from neurosteer.cli.options import F, load, model_options, template_option
from neurosteer.cli.render import console, print_table
from neurosteer.errors import InputError
from neurosteer.prompts.text_check import check_text

Pairs = tuple[list[str], list[str], list[str] | None]

FAITHFULNESS_FILES = (
    "faithfulness.csv",
    "faithfulness.json",
    "faithfulness.png",
    "faithfulness.svg",
)


def pair_options(fn: F) -> F:
    """--prompt/--target/--contrast (repeatable, in pairs) or --pairs FILE."""
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


def read_pairs(params: dict[str, Any]) -> Pairs | None:
    """The pairs the options give, or None when no pair option was given.

    Raises:
        InputError: --pairs mixed with --prompt/--target, or counts that differ.
    """
    prompts, targets = list(params["pair_prompts"]), list(params["pair_targets"])
    contrasts = list(params["pair_contrasts"])
    if params["pairs"] is not None:
        if prompts or targets or contrasts:
            raise InputError("give the pairs with --pairs FILE or with --prompt/--target, not both")
        from neurosteer.prompts.targets import load_pairs

        return load_pairs(params["pairs"])
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


def discover_relp(params: dict[str, Any], pairs: Pairs) -> Any:
    """`discover`'s RelP mode: the circuit of `neurosteer.attribute` (not yet saved)."""
    from neurosteer.cli.options import parse_layers
    from neurosteer.methods.relp import attribute

    if params["neutral"] is not None:
        raise InputError("--neutral is for contrastive discovery; RelP has no universal filter")
    prompts, targets, contrasts = pairs
    model, tokenizer, layout = load(params)
    return attribute(
        model,
        tokenizer,
        prompts,
        targets,
        contrasts=contrasts,
        positions=params["positions"] or "last",
        top_k=params["top_k"],
        fraction=params["fraction"],
        skip_layers=parse_layers(params["skip_layers"]),
        positive_only=params["positive_only"],
        batch_size=params["batch_size"],
        chat_template=params["chat_template"],
        system=params["system"],
        template_vars=params["template_vars"],
        keep_table=params["keep_table"],
        layout=layout,
        progress=True,
    )


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
def faithfulness_command(**params: Any) -> None:
    """Faithfulness and completeness of a circuit's top-k neurons under mean ablation."""
    from neurosteer._io import check_writable
    from neurosteer.evaluation.faithfulness import measure_faithfulness
    from neurosteer.methods.circuit import Circuit
    from neurosteer.prompts.render import load_prompts

    if params["output"] is not None:
        check_writable(params["output"], force=params["force"])
    pairs = read_pairs(params)
    if pairs is None:
        raise InputError("give the pairs to measure on: --prompt/--target (or --pairs FILE)")
    ks = _ints(params["ks"]) if params["ks"] else None
    circuit = Circuit.load(params["circuit_path"])
    negative = load_prompts(params["negative"])
    model, tokenizer, layout = load(params, circuit)
    prompts, targets, contrasts = pairs
    result = measure_faithfulness(
        model,
        tokenizer,
        circuit,
        prompts,
        targets,
        negative,
        contrasts=contrasts,
        ks=ks,
        positions=params["positions"],
        batch_size=params["batch_size"],
        chat_template=params["chat_template"],
        system=params["system"],
        template_vars=params["template_vars"],
        layout=layout,
        progress=True,
    )
    _print_result(result)
    if params["output"] is not None:
        _write(result, params["output"], force=params["force"])
        click.echo(f"wrote {params['output']}/ ({', '.join(FAITHFULNESS_FILES)})")


def _ints(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InputError(f"--k takes comma-separated whole numbers, got {text!r}") from None


def _print_result(result: Any) -> None:
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


def _write(result: Any, folder: Path, *, force: bool) -> None:
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
