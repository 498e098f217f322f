"""CLI commands for the built-in organism: `neurosteer demo` and `neurosteer organism train`,
`export` and `path`."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from neurosteer.errors import InputError, UnsupportedModelError

if TYPE_CHECKING:  # imported inside the commands: `--help` stays fast
    from neurosteer.workflows.organism.demo_result import DemoResult

console = Console()


@click.command("demo")
@click.option(
    "-o",
    "--out",
    "out",
    type=click.Path(path_type=Path),
    default=Path("neurosteer-demo"),
    show_default=True,
    help="Report folder (report.md and PNG plots).",
)
@click.option(
    "--top-k",
    type=int,
    default=None,
    help="Circuit size in neurons. Default: the organism's documented DEMO_TOP_K.",
)
@click.option("--force", is_flag=True, help="Overwrite a non-empty report folder.")
@click.option(
    "--moe",
    is_flag=True,
    help="Run on the mixture-of-experts organism: a per-expert circuit against a random "
    "per-expert circuit of the same size.",
)
def demo_command(out: Path, top_k: int | None, force: bool, moe: bool) -> None:
    """Find the refusal circuit of the built-in organism, ablate and amplify it, and report.

    Runs offline on the shipped instruct model (a few minutes on a 2-core CPU).
    """
    from neurosteer.workflows.organism.demo import DEMO_TOP_K, MOE_DEMO_TOP_K

    if out.exists() and any(out.iterdir()) and not force:
        raise InputError(f"{out} is not empty; pass --force to overwrite it or choose another -o")
    default_k = MOE_DEMO_TOP_K if moe else DEMO_TOP_K
    k = default_k if top_k is None else top_k
    if k < 1:
        raise InputError(f"--top-k must be a positive number of neurons, got {k}")
    result = _run_demo(out, k, moe)
    _print_circuit(result)
    console.print(_examples_table(result))
    console.print(_rates_table(result))
    console.print(
        f"Report: {result.html_path} (and {result.report_path.name})  ({result.seconds:.0f} s)"
    )


def _run_demo(out: Path, k: int, moe: bool) -> DemoResult:
    """`run_demo` under a status line (a line a step off a terminal); a build without
    per-expert support says so for --moe."""
    from neurosteer.workflows.organism.demo import run_demo
    from neurosteer.workflows.organism.paths import MOE_INSTRUCT_DIR

    with console.status("Starting...") as status:

        def step(what: str) -> None:
            if console.is_terminal:
                status.update(f"{what}...")
            else:  # no spinner off a terminal: a line a step, so a log shows progress
                click.echo(f"demo: {what}", err=True)

        try:
            if moe:
                return run_demo(out, top_k=k, progress=step, model_dir=MOE_INSTRUCT_DIR)
            return run_demo(out, top_k=k, progress=step)
        except UnsupportedModelError as err:
            if not moe:
                raise
            raise UnsupportedModelError(
                f"demo --moe needs per-expert neuron support (issue 19), which this build "
                f"lacks: {err}; `neurosteer demo` without --moe runs the dense organism"
            ) from None


def _print_circuit(result: DemoResult) -> None:
    """The circuit's size and where its neurons sit (layers; experts of a MoE model)."""
    console.print(
        f"[bold]Refusal circuit[/bold]: {result.n_neurons} of {result.total_neurons} MLP neurons "
        f"({100 * result.n_neurons / result.total_neurons:.2f}%), "
        f"discovered on {result.n_discover}+{result.n_discover} training prompts"
    )
    console.print(
        "Neurons per layer: "
        + ", ".join(f"L{layer}: {n}" for layer, n in sorted(result.neurons_per_layer.items()))
    )
    if result.neurons_per_expert:
        console.print(
            "Neurons per expert: "
            + ", ".join(f"L{lay} {ex}: {n}" for (lay, ex), n in result.neurons_per_expert.items())
        )


def _examples_table(result: DemoResult) -> Table:
    """The held-out example prompts and the three answers, each with its verdict."""
    from neurosteer.workflows.organism.demo_report import VERDICTS

    examples = Table(title="Held-out prompts (the judge's verdict in brackets)", show_lines=True)
    for col in ("prompt", "unchanged (m=1)", "ablated (m=0)", f"amplified (m={result.amplify:g})"):
        examples.add_column(col, overflow="fold")
    for ex in result.examples:
        answers = (ex.unchanged, ex.ablated, ex.amplified)
        examples.add_row(
            Text(f"{ex.kind}: {ex.prompt}"),
            *(Text(f"[{VERDICTS[v]}] {a}") for a, v in zip(answers, ex.labels, strict=True)),
        )
    return examples


def _rates_table(result: DemoResult) -> Table:
    """Held-out refusal and compliance rates per condition."""
    rates = Table(title=f"Held-out refusal ({result.n_eval} harmful, {result.n_eval} benign)")
    for col in ("condition", "harmful refused", "benign refused", "harmful complied"):
        rates.add_column(col, justify="right" if col != "condition" else "left")
    for row in result.rows:
        rates.add_row(
            row.condition,
            f"{row.harmful.refusal:.0%}",
            f"{row.benign.refusal:.0%}",
            f"{row.harmful.compliant:.0%}",
        )
    return rates


@click.group("organism")
def organism_group() -> None:
    """The built-in model organism (tiny Llama base/instruct pair with a refusal gate)."""


@organism_group.command("train")
@click.option(
    "-o",
    "--out",
    "out",
    type=click.Path(path_type=Path),
    required=True,
    help="Folder to write base/ and instruct/ into.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Training seed.")
@click.option(
    "--moe",
    is_flag=True,
    help="Train the mixture-of-experts twin (Qwen2-MoE: 8 experts, top-2, one shared expert).",
)
def train_command(out: Path, seed: int, moe: bool) -> None:
    """Rebuild both organism models from scratch on the CPU (about 8 minutes, one thread)."""
    from neurosteer.workflows.organism.train import (
        MoeOrganismConfig,
        OrganismConfig,
        train_organism,
    )

    if out.exists() and not out.is_dir():
        raise InputError(f"{out} is a file; pass a folder to -o")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    started = time.perf_counter()
    config = MoeOrganismConfig(seed=seed) if moe else OrganismConfig(seed=seed)
    result = train_organism(out, config)
    table = Table(title="Held-out metrics")
    table.add_column("model")
    for col in ("harmful refused", "benign refused", "harmful compliant", "benign compliant"):
        table.add_column(col, justify="right")
    for name, m in result.metrics.items():
        table.add_row(
            name,
            f"{m['harmful_refusal']:.0%}",
            f"{m['benign_refusal']:.0%}",
            f"{m['harmful_compliant']:.0%}",
            f"{m['benign_compliant']:.0%}",
        )
    console.print(table)
    console.print(
        f"Wrote {result.base_dir} and {result.instruct_dir} "
        f"in {time.perf_counter() - started:.0f} s"
    )


@organism_group.command("export")
@click.option(
    "-o",
    "--out",
    "out",
    type=click.Path(path_type=Path),
    required=True,
    help="New folder for the prompt files, refusal phrases and MMLU fixture.",
)
@click.option(
    "--n-eval", type=int, default=100, show_default=True, help="Held-out prompts per set."
)
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
def export_command(out: Path, n_eval: int, force: bool) -> None:
    """Write the organism's prompt sets and judge files, for discover/sweep on the command line."""
    from neurosteer.workflows.organism.export import export_organism_data

    if n_eval < 1:
        raise InputError(f"--n-eval must be at least 1, got {n_eval}")
    folder = export_organism_data(out, n_eval=n_eval, force=force)
    for item in sorted(folder.rglob("*")):
        if item.is_file():
            console.print(str(item))


@organism_group.command("path")
@click.option("--moe", is_flag=True, help="The mixture-of-experts twin instead of the dense pair.")
@click.option("--base", is_flag=True, help="The helpful base model instead of the instruct model.")
def path_command(moe: bool, base: bool) -> None:
    """Print the folder of a shipped organism model, to pass as MODEL to the other commands.

    `neurosteer discover $(neurosteer organism path --moe) -p ... -n ...` runs on the MoE twin.
    The MoE base is not shipped: `--moe --base` fails and names the command that rebuilds it.
    """
    from neurosteer.workflows.organism.paths import BASE_DIR, INSTRUCT_DIR, MOE_INSTRUCT_DIR

    if moe and base:
        raise InputError(
            "the MoE organism's base model is not shipped; rebuild it with "
            "`neurosteer organism train --moe -o DIR` and use DIR/base"
        )
    folder = MOE_INSTRUCT_DIR if moe else BASE_DIR if base else INSTRUCT_DIR
    click.echo(str(folder))
