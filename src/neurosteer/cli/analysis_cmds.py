"""CLI commands for sweeps and analyses: `neurosteer sweep`, `report` and `compare`.

They parse options, call `neurosteer.workflows.sweep`, `neurosteer.workflows.report` and
`neurosteer.evaluation.comparison`, and
print rich tables; bad input raises `InputError`, which the group prints as one line.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.table import Table

from neurosteer.cli.options import (
    ContrastSettings,
    JudgeModelSettings,
    ModelSettings,
    UniversalFilterSettings,
    contrast_options,
    floats,
    ints,
    judge_model_options,
    load,
    model_options,
    names,
    parse_layers,
    template_option,
    universal_filter_options,
)
from neurosteer.cli.render import console, print_table
from neurosteer.cli.settings import parsed, settings_command
from neurosteer.errors import InputError
from neurosteer.prompts.rendering import Rendering

if TYPE_CHECKING:  # imported at run time inside the commands: `--help` stays fast
    from neurosteer.evaluation.comparison import Comparison
    from neurosteer.methods.circuit import Circuit
    from neurosteer.workflows.sweep import SweepConfig


@dataclass(frozen=True, kw_only=True)
class SweepSettings:
    """The options of `neurosteer sweep` (`_sweep_config` makes its `SweepConfig`)."""

    loading: ModelSettings
    contrast: ContrastSettings
    eval_harmful: Path
    eval_harmless: Path
    methods: tuple[str, ...] = parsed(names)
    strengths: tuple[float, ...] = parsed(floats("--strengths"))
    output: Path
    judge: str
    judging: JudgeModelSettings
    max_new_tokens: int
    batch_size: int
    mmlu: Path | None
    mmlu_shots: int
    mmlu_limit: int | None
    kl_limit: int
    kl_tokens: int
    eval_limit: int | None
    top_k: int | None
    skip_layers: tuple[int, ...] = parsed(parse_layers)
    universal: UniversalFilterSettings
    caa_layer: int | None
    layer_scan_prompts: int
    caa_normalize: bool
    seeds: tuple[int, ...] = parsed(ints("--seeds"))
    template: Rendering


@click.command("sweep")
@model_options
@contrast_options
@click.option(
    "--eval-harmful",
    type=click.Path(path_type=Path),
    required=True,
    help="Harmful evaluation prompts (JailbreakBench/AdvBench/HarmBench csv, .txt, ...).",
)
@click.option(
    "--eval-harmless",
    type=click.Path(path_type=Path),
    required=True,
    help="Harmless evaluation prompts (refusal should stay low; KL is measured here).",
)
@click.option(
    "--methods",
    default="cna,caa,direction,random",
    show_default=True,
    help="Comma-separated: cna, caa, mlp_output, direction, random.",
)
@click.option(
    "--strengths",
    default="0,0.25,0.5,0.75,1",
    show_default=True,
    help="Strengths s: CNA m = 1 - s, CAA α = -s, direction removes a share s.",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(path_type=Path),
    required=True,
    help="Run folder (created, or resumed when it holds the same sweep).",
)
@click.option(
    "--judge",
    default="sweep",
    show_default=True,
    help="Refusal judge: strict, sweep, patterns, organism (the built-in organism's own "
    "judge, as in `neurosteer demo`), a phrase-list .json, model (the model of --judge-model) "
    "or model:PATH.",
)
@judge_model_options
@click.option("--max-new-tokens", type=int, default=150, show_default=True)
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option(
    "--mmlu",
    type=click.Path(path_type=Path),
    default=None,
    help="MMLU folder or csv (local files) to score at every point.",
)
@click.option("--mmlu-shots", type=int, default=5, show_default=True)
@click.option("--mmlu-limit", type=int, default=None, help="Questions per MMLU subject.")
@click.option(
    "--kl-limit",
    type=int,
    default=32,
    show_default=True,
    help="Harmless prompts the KL is measured on.",
)
@click.option(
    "--kl-tokens",
    type=int,
    default=32,
    show_default=True,
    help="Length of the unsteered continuation scored for KL.",
)
@click.option(
    "--eval-limit",
    type=int,
    default=None,
    help="Use only the first N harmful and N harmless evaluation prompts.",
)
@click.option("--top-k", type=int, default=None, help="Circuit size (default 0.1% of neurons).")
@click.option(
    "--skip-layers",
    default="0,1",
    show_default=True,
    help="Layers that are not circuit candidates; '' for none.",
)
@universal_filter_options
@click.option(
    "--caa-layer",
    type=int,
    default=None,
    help="Layer of the CAA vector and the ablated direction (default: each scanned).",
)
@click.option(
    "--layer-scan-prompts",
    type=int,
    default=16,
    show_default=True,
    help="Positive prompts the layer scans judge; the layer with the most well-formed "
    "compliance wins (0: a cheap heuristic instead).",
)
@click.option(
    "--caa-normalize", is_flag=True, help="Scale the CAA vector to the layer's mean residual norm."
)
@click.option(
    "--seeds",
    default="0,1,2",
    show_default=True,
    help="Seeds of the random control circuits (one set of points each).",
)
@template_option
@settings_command(SweepSettings)
def sweep_command(settings: SweepSettings) -> None:
    """Sweep CNA and its baselines over strengths on MODEL; resumable into OUTPUT."""
    from neurosteer.evaluation.datasets import load_dataset_prompts
    from neurosteer.evaluation.judge_accuracy import judge_caption
    from neurosteer.prompts.render import load_prompts
    from neurosteer.workflows.judges import get_judge
    from neurosteer.workflows.report import plots, summarise
    from neurosteer.workflows.sweep import run_sweep

    config = _sweep_config(settings)
    positive = load_prompts(settings.contrast.positive)
    negative = load_prompts(settings.contrast.negative)
    harmful = load_dataset_prompts(settings.eval_harmful)
    harmless = load_dataset_prompts(settings.eval_harmless)
    neutral = settings.universal.neutral
    judging = settings.judging
    # a model judge without its model fails here, before the model to steer loads
    get_judge(settings.judge, judge_model=judging.judge_model, judge_prompts=judging.judge_prompts)
    model, tokenizer, layout = load(settings.loading)
    run_sweep(
        model,
        tokenizer,
        config,
        positive,
        negative,
        harmful,
        harmless,
        settings.output,
        neutral=load_prompts(neutral) if neutral else None,
        layout=layout,
        progress=True,
        judge_model=judging.judge_model,
        judge_prompts=judging.judge_prompts,
    )
    rows = summarise(settings.output)
    figures = plots(settings.output, rows)
    print_summary(rows)
    click.echo(judge_caption(settings.judge, settings.loading.model))
    click.echo(
        f"wrote {settings.output}/results.jsonl, summary.csv and {len(figures)} figures; "
        f"`neurosteer report {settings.output}` writes the HTML and Markdown report"
    )


def _sweep_config(settings: SweepSettings) -> SweepConfig:
    """The `SweepConfig` of the sweep command's options."""
    from neurosteer.workflows.sweep import SweepConfig

    template = settings.template
    return SweepConfig(
        methods=settings.methods,
        strengths=settings.strengths,
        max_new_tokens=settings.max_new_tokens,
        batch_size=settings.batch_size,
        judge=settings.judge,
        **template.as_kwargs(),
        eval_limit=settings.eval_limit,
        kl_limit=settings.kl_limit,
        kl_max_new_tokens=settings.kl_tokens,
        mmlu=str(settings.mmlu) if settings.mmlu else None,
        mmlu_shots=settings.mmlu_shots,
        mmlu_limit=settings.mmlu_limit,
        top_k=settings.top_k,
        skip_layers=settings.skip_layers,
        universal_filter=settings.universal.universal_filter,
        caa_layer=settings.caa_layer,
        layer_scan_prompts=settings.layer_scan_prompts,
        caa_normalize=settings.caa_normalize,
        random_seeds=settings.seeds,
    )


@click.command("report")
@click.argument("run", type=click.Path(path_type=Path))
def report_command(run: Path) -> None:
    """Write RUN/report.html (self-contained) and RUN/report.md from a sweep folder (or the
    folder of `neurosteer demo`)."""
    from neurosteer.workflows.organism.demo_report import is_demo_folder, render_demo_report
    from neurosteer.workflows.report import write_report

    if not run.is_dir():
        raise InputError(f"'{run}' is not a folder; give the output folder of `neurosteer sweep`")
    html_path, md_path = render_demo_report(run) if is_demo_folder(run) else write_report(run)
    click.echo(str(html_path))
    click.echo(str(md_path))


@click.command("compare")
@click.argument("circuit_a", type=click.Path(path_type=Path))
@click.argument("circuit_b", type=click.Path(path_type=Path))
@click.option(
    "--ks",
    default=None,
    help="k values for the sparsity sweep of circuits with a kept table "
    "(default: k/4, k/2, k, 2k, 4k).",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Also write the numbers to this JSON file.",
)
def compare_command(
    circuit_a: Path, circuit_b: Path, ks: str | None, json_path: Path | None
) -> None:
    """Overlap, layer localisation and sparsity of two circuits (e.g. base vs instruct)."""
    from neurosteer.evaluation.comparison import compare_circuits, localisation
    from neurosteer.methods.circuit import Circuit

    a, b = Circuit.load(circuit_a), Circuit.load(circuit_b)
    comparison = compare_circuits(a, b)
    _print_overlap(comparison)
    places = {"A": localisation(a), "B": localisation(b)}
    _print_localisation(places)
    sweeps: dict[str, list[dict[str, Any]]] = {}
    for name, circuit in (("A", a), ("B", b)):
        if circuit.table is None:
            console.print(f"circuit {name} has no kept table: no sparsity sweep (--keep-table)")
            continue
        sweeps[name] = _print_sparsity(name, circuit, ks)
    if json_path is not None:
        data = {
            "a": str(circuit_a),
            "b": str(circuit_b),
            "comparison": asdict(comparison),
            "localisation": places,
            "sparsity": sweeps,
        }
        json_path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
        click.echo(f"wrote {json_path}")


def _print_overlap(comparison: Comparison) -> None:
    """The shared neurons, then a table of neurons per layer in A, B and both."""
    console.print(
        f"[bold]{comparison.overlap}[/bold] neurons in both: "
        f"{comparison.share_a:.1%} of A ({comparison.n_a}), {comparison.share_b:.1%} of B "
        f"({comparison.n_b}), Jaccard {comparison.jaccard:.3f}"
    )
    layers = Table(title="neurons per layer", show_edge=False)
    for name in ("layer", "A", "B", "both"):
        layers.add_column(name, justify="right")
    for layer, counts in comparison.per_layer.items():
        layers.add_row(str(layer), *map(str, counts))
    print_table(layers)


def _print_localisation(places: dict[str, dict[str, float | int]]) -> None:
    """How late in the model each circuit sits."""
    where = Table(title="layer localisation", show_edge=False)
    for name in ("circuit", "neurons", "last 3 layers", "last quarter", "mean depth"):
        where.add_column(name, justify="right")
    for name, loc in places.items():
        where.add_row(
            name,
            str(loc["n"]),
            f"{loc['last_three']:.1%}",
            f"{loc['last_quarter']:.1%}",
            f"{loc['mean_depth']:.2f}",
        )
    print_table(where)


def _print_sparsity(name: str, circuit: Circuit, ks: str | None) -> list[dict[str, Any]]:
    """The sparsity sweep of a circuit with a kept table, printed; returns its points."""
    from neurosteer.evaluation.comparison import sparsity_sweep

    chosen = ints("--ks")(ks) if ks else _default_ks(len(circuit), circuit.settings.n_candidates)
    points = sparsity_sweep(circuit, chosen)
    table = Table(title=f"sparsity sweep, circuit {name}", show_edge=False)
    for col in ("k", "|δ| mass", "min |δ|", "last 3 layers", "last quarter"):
        table.add_column(col, justify="right")
    for p in points:
        table.add_row(
            str(p.k),
            f"{p.delta_mass:.1%}",
            f"{p.min_abs_delta:.4g}",
            f"{p.last_three:.1%}",
            f"{p.last_quarter:.1%}",
        )
    print_table(table)
    return [asdict(p) for p in points]


def _default_ks(k: int, n_candidates: int) -> list[int]:
    wanted = [max(1, k // 4), max(1, k // 2), k, 2 * k, 4 * k]
    limit = n_candidates or 4 * k
    return sorted({min(x, limit) for x in wanted})


def print_summary(rows: Sequence[dict[str, Any]]) -> None:
    """The sweep summary as a rich table (rates as percentages)."""
    table = Table(title="sweep summary", show_edge=False)
    columns = [
        ("method", "method"),
        ("s", "strength"),
        ("knob", "knob"),
        ("harmful refused", "harmful_refusal"),
        ("harmful degenerate", "harmful_degenerate"),
        ("harmless refused", "harmless_refusal"),
        ("distinct-4", "harmful_distinct4"),
        ("KL first", "kl_first"),
        ("KL mean", "kl_mean"),
        ("MMLU", "mmlu_acc"),
        ("MMLU Δ", "mmlu_delta"),
    ]
    for title, _ in columns:
        table.add_column(title, justify="left" if title == "method" else "right")
    for row in rows:
        cells = []
        for _, key in columns:
            value = row.get(key)
            if value is None:
                cells.append("")
            elif key == "strength":
                cells.append(f"{value:g}")
            elif key.endswith(("_refusal", "_degenerate", "_acc", "_delta")):
                cells.append(f"{100 * value:+.1f}" if key == "mmlu_delta" else f"{value:.0%}")
            elif isinstance(value, float):
                cells.append(f"{value:.3f}")
            else:
                cells.append(str(value))
        if row.get("n_seeds"):
            cells[0] += f" ({row['n_seeds']} seeds)"
        table.add_row(*cells)
    print_table(table)
