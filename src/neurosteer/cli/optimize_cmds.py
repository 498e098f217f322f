"""CLI command `neurosteer optimize`: search, show and export circuits with their multiplier.

    neurosteer optimize MODEL -p harmful.txt -n benign.txt --trials 80 -o search/   # resumable
    neurosteer optimize search/ --show
    neurosteer optimize search/ --export best.circuit [--trial N] [--target-refusal 0.1]

It parses options, calls `neurosteer.workflows.optimization` and prints rich tables; bad input
raises
`InputError`, which the group prints as one line.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import click
from rich.table import Table

from neurosteer.cli.options import (
    JudgeModelSettings,
    ModelSettings,
    OptionalContrastSettings,
    UniversalFilterSettings,
    floats,
    judge_model_options,
    load,
    model_options,
    names,
    pair,
    template_option,
    universal_filter_options,
)
from neurosteer.cli.render import print_table
from neurosteer.cli.settings import parsed, settings_command
from neurosteer.errors import InputError
from neurosteer.prompts.rendering import Rendering

if TYPE_CHECKING:  # imported at run time inside the command: `--help` stays fast
    from neurosteer.workflows.optimization import OptimizeConfig, SearchResult
    from neurosteer.workflows.optimization.baselines import BaselinePoint
    from neurosteer.workflows.optimization.study import TrialResult


@dataclass(frozen=True, kw_only=True)
class OptimizeSettings:
    """The options of `neurosteer optimize` (`_config` makes its `OptimizeConfig`)."""

    loading: ModelSettings
    contrast: OptionalContrastSettings
    output: Path | None
    trials: int
    show: bool
    export_path: Path | None
    trial: int | None
    target_refusal: float
    force: bool
    held_out_positive: int
    held_out_negative: int
    split_seed: int
    judge: str
    judging: JudgeModelSettings
    max_new_tokens: int
    batch_size: int
    kl: Literal["first_token", "mean"]
    kl_tokens: int
    sampler: Literal["tpe", "nsga2"]
    seed: int
    startup_trials: int
    prune: bool
    prune_ratio: float
    k_range: tuple[float, float] = parsed(pair("--k-range"))
    multiplier_range: tuple[float, float] = parsed(pair("--multiplier-range"))
    signs: tuple[str, ...] = parsed(names)
    scores: tuple[str, ...] = parsed(names)
    first_layer_range: tuple[float, float] = parsed(pair("--first-layer-range"))
    universal: UniversalFilterSettings
    no_baselines: bool
    baseline_strengths: tuple[float, ...] = parsed(floats("--baseline-strengths"))
    baseline_layer: int | None
    template: Rendering

    def search_only_given(self) -> list[str]:
        """The options given that only a search reads (a run folder's --show/--export
        refuses them)."""
        given = {
            "--positive": self.contrast.positive,
            "--negative": self.contrast.negative,
            "--output": self.output,
            "--neutral": self.universal.neutral,
        }
        return [flag for flag, value in given.items() if value]


@click.command("optimize")
@model_options
@click.option("--positive", "-p", type=click.Path(path_type=Path), help="Positive prompts.")
@click.option("--negative", "-n", type=click.Path(path_type=Path), help="Negative prompts.")
@click.option(
    "--output",
    "-o",
    type=click.Path(path_type=Path),
    help="Run folder (created, or resumed when it holds the same search).",
)
@click.option(
    "--trials",
    type=int,
    default=40,
    show_default=True,
    help="Finished trials the study should hold (a resumed run adds the rest).",
)
@click.option("--show", is_flag=True, help="MODEL is a run folder: print its Pareto front, plot.")
@click.option(
    "--export",
    "export_path",
    type=click.Path(path_type=Path),
    default=None,
    help="MODEL is a run folder: write the chosen trial's circuit here.",
)
@click.option("--trial", type=int, default=None, help="With --export: this trial.")
@click.option(
    "--target-refusal",
    type=float,
    default=0.1,
    show_default=True,
    help="With --export: the lowest-KL trial with refused + degenerate share at most this.",
)
@click.option("--force", is_flag=True, help="With --export: replace the circuit folder.")
@click.option(
    "--held-out-positive",
    type=int,
    default=16,
    show_default=True,
    help="Positive prompts split off for the refusal objective (never used for discovery).",
)
@click.option(
    "--held-out-negative",
    type=int,
    default=16,
    show_default=True,
    help="Negative prompts split off for the KL objective (never used for discovery).",
)
@click.option(
    "--split-seed", type=int, default=0, show_default=True, help="Seed of the held-out split."
)
@click.option(
    "--judge",
    default="sweep",
    show_default=True,
    help="Refusal judge: strict, sweep, patterns, organism, a phrase-list .json, model (the "
    "model of --judge-model) or model:PATH.",
)
@judge_model_options
@click.option(
    "--max-new-tokens",
    type=int,
    default=24,
    show_default=True,
    help="Length of the answers the refusal objective judges.",
)
@click.option(
    "--batch-size", type=int, default=16, show_default=True, help="Prompts per forward pass."
)
@click.option(
    "--kl",
    type=click.Choice(["first_token", "mean"]),
    default="first_token",
    show_default=True,
    help="KL at the first answer token, or the mean over --kl-tokens continuation tokens.",
)
@click.option(
    "--kl-tokens",
    type=int,
    default=24,
    show_default=True,
    help="Continuation length scored with --kl mean.",
)
@click.option("--sampler", type=click.Choice(["tpe", "nsga2"]), default="tpe", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="The sampler's seed.")
@click.option(
    "--startup-trials",
    type=int,
    default=10,
    show_default=True,
    help="Random trials before the sampler starts modelling the objectives.",
)
@click.option(
    "--prune",
    is_flag=True,
    help="Skip the answers of trials whose first-token refusal stays near the unchanged model's.",
)
@click.option(
    "--prune-ratio",
    type=float,
    default=0.9,
    show_default=True,
    help="With --prune: skip a trial keeping at least this share of the refusal-token mass.",
)
@click.option(
    "--k-range",
    default="0.0002,0.05",
    show_default=True,
    help="Circuit size as shares of all MLP neurons (log scale).",
)
@click.option(
    "--multiplier-range",
    default="-2,1",
    show_default=True,
    help="Lowest,highest multiplier m (1 is unchanged, 0 ablates, below 0 flips).",
)
@click.option("--signs", default="both,positive", show_default=True, help="Sign rules to try.")
@click.option(
    "--scores", default="diff,standardized", show_default=True, help="Neuron scores to try."
)
@click.option(
    "--first-layer-range",
    default="0,0.9",
    show_default=True,
    help="First candidate layer, as shares of depth.",
)
@universal_filter_options
@click.option("--no-baselines", is_flag=True, help="Skip the CAA / ablation comparison.")
@click.option("--baseline-strengths", default="0.25,0.5,0.75,1", show_default=True)
@click.option("--baseline-layer", type=int, default=None, help="Default: a heuristic layer.")
@template_option
@settings_command(OptimizeSettings)
def optimize_command(settings: OptimizeSettings) -> None:
    """Search circuit size, multiplier, sign rule, score and first layer for the least KL at
    the least refusal on held-out prompts. MODEL is a model, or with --show / --export a run
    folder."""
    if settings.show and settings.export_path is not None:
        raise InputError("give --show or --export, not both")
    if settings.show or settings.export_path is not None:
        _folder_mode(settings)
        return
    _search(settings)


def _search(settings: OptimizeSettings) -> None:
    """The search into --output (resumed when it holds the same search), then its front.

    Raises:
        InputError: --positive, --negative or --output missing, or a folder of another search.
    """
    _quiet_optuna()
    contrast, output, model_name = settings.contrast, settings.output, settings.loading.model
    missing = [
        flag
        for flag, value in (
            ("--positive", contrast.positive),
            ("--negative", contrast.negative),
            ("--output", output),
        )
        if not value
    ]
    if missing or contrast.positive is None or contrast.negative is None or output is None:
        hint = ""
        if (Path(model_name) / "optimize.json").is_file():
            hint = f"; '{model_name}' is a search folder: add --show or --export FILE"
        raise InputError(f"a search needs {', '.join(missing)}{hint}")
    from neurosteer.prompts.render import load_prompts
    from neurosteer.workflows.judges import get_judge
    from neurosteer.workflows.optimization import optimize, read_search
    from neurosteer.workflows.optimization.run import check_resumable

    config = _config(settings)
    positive, negative = load_prompts(contrast.positive), load_prompts(contrast.negative)
    neutral_file = settings.universal.neutral
    neutral = load_prompts(neutral_file) if neutral_file else None
    # too few prompts, or a folder with other settings, fail here, before the model loads
    check_resumable(output, positive, negative, config=config, neutral=neutral)
    judging = settings.judging
    # a model judge without its model fails here, before the model to steer loads
    get_judge(config.judge, judge_model=judging.judge_model, judge_prompts=judging.judge_prompts)
    model, tokenizer, layout = load(settings.loading)
    optimize(
        model,
        tokenizer,
        positive,
        negative,
        config=config,
        run_dir=output,
        neutral=neutral,
        layout=layout,
        progress=True,
        judge_model=judging.judge_model,
        judge_prompts=judging.judge_prompts,
    )
    search = read_search(output)
    _show(search)
    click.echo(_export_hint(output, search.trials, search.baselines, _held_out(search)))


def _held_out(result: SearchResult) -> int:
    """The search's held-out positive prompts (0 when unknown: a search kept in memory)."""
    from neurosteer.workflows.optimization.export import held_out_count
    from neurosteer.workflows.optimization.store import read_meta

    return 0 if result.run_dir is None else held_out_count(read_meta(result.run_dir))


def _judge_line(folder: Path) -> str:
    """The search's judge and its measured accuracy on real answers (`judge_caption`), as
    its optimize.json records the judge ("sweep" for a file that names none) and the model
    (the caption says when the accuracy was measured on another model's answers)."""
    from neurosteer.evaluation.judge_accuracy import judge_caption
    from neurosteer.workflows.optimization.store import read_meta

    meta = read_meta(folder)
    settings, model = meta.get("settings"), meta.get("model")
    judge = settings.get("judge") if isinstance(settings, dict) else None
    name = model.get("name_or_path") if isinstance(model, dict) else None
    return "refusal by " + judge_caption(str(judge or "sweep"), str(name) if name else None)


def _export_hint(
    folder: Path,
    trials: Sequence[TrialResult],
    baselines: Sequence[BaselinePoint] = (),
    held_out: int = 0,
) -> str:
    """The closing hint: first whether a baseline beats the CNA front (in words), then the
    export command that works on this study: the default rule where a trial meets the
    default target, else the closest trial by number."""
    from neurosteer.workflows.optimization.export import (
        DEFAULT_TARGET,
        baseline_verdict,
        choose_trial,
        target_in_answers,
    )
    from neurosteer.workflows.optimization.study import pareto_front

    verdict = baseline_verdict(pareto_front(list(trials)), baselines)
    lead = "" if verdict is None else f"{verdict}. To export the best CNA trial anyway: "
    try:
        chosen, _ = choose_trial(list(trials))
        how = "--export best.circuit"
        target = (
            f"trial {chosen.number}, the lowest KL at refused + degenerate <= {DEFAULT_TARGET:g}"
        )
    except InputError:
        complete = [t for t in trials if t.not_success is not None]
        if not complete:
            return "no trial is complete yet; the same command again continues the search"
        closest = min(complete, key=lambda t: (t.not_success or 0.0, t.kl, t.number))
        how = f"--export best.circuit --trial {closest.number}"
        target = (
            f"no trial meets --target-refusal {DEFAULT_TARGET:g}; trial {closest.number} "
            "comes closest"
        )
    if held_out:
        target += f"; {target_in_answers(DEFAULT_TARGET, held_out)}"
    return (
        f"{lead}`neurosteer optimize {folder} {how}` writes the circuit ({target}; the same "
        "command again continues the search; raise --trials for more)"
    )


def _folder_mode(settings: OptimizeSettings) -> None:
    """--show or --export on a run folder.

    Raises:
        InputError: an option that only a search reads given.
    """
    given = settings.search_only_given()
    if given:
        raise InputError(
            f"{', '.join(given)} start a search; --show and --export read the run folder only"
        )
    from neurosteer.workflows.optimization import export_circuit, read_search

    folder = Path(settings.loading.model)
    if settings.show or settings.export_path is None:
        _show(read_search(folder))
        return
    circuit, trial = export_circuit(
        folder,
        settings.export_path,
        trial=settings.trial,
        target=settings.target_refusal,
        force=settings.force,
    )
    assert circuit.search is not None
    if settings.trial is None:
        from neurosteer.workflows.optimization.export import held_out_count, target_in_answers
        from neurosteer.workflows.optimization.store import read_meta

        held_out = held_out_count(read_meta(folder))
        if held_out:
            click.echo(f"{target_in_answers(settings.target_refusal, held_out)}")
    click.echo(
        f"wrote {settings.export_path}: trial {trial.number} ({circuit.search.rule}), "
        f"{len(circuit)} neurons from layer {trial.first_layer}, m = {trial.multiplier:.3g}, "
        f"sign {trial.sign}, score {trial.score}; held-out refusal {trial.refusal:.2f}, "
        f"degenerate {trial.degenerate:.2f}, KL {trial.kl:.3g}"
    )


def _show(result: SearchResult) -> None:
    """Print the summary, the Pareto table and the baselines; write the plot into the folder."""
    click.echo(_summary_line(result))
    if result.run_dir is not None:
        click.echo(_judge_line(result.run_dir))
    print_table(_pareto_table(result))
    if result.baselines:
        print_table(_baselines_table(result))
    if result.run_dir is not None:
        from neurosteer.workflows.optimization.store import PLOT_FILE
        from neurosteer.workflows.report.pareto import (
            write_pareto_plot,  # matplotlib: after the tables
        )

        path = write_pareto_plot(result, result.run_dir / PLOT_FILE)
        click.echo(f"wrote {path}")


def _summary_line(result: SearchResult) -> str:
    """Trials finished / pruned / interrupted, the held-out count and the unchanged model."""
    pruned = sum(t.state == "pruned" for t in result.trials)
    line = (
        f"{len(result.trials)} finished trials ({pruned} pruned, {result.interrupted} interrupted)"
    )
    held_out = _held_out(result)
    if held_out:
        line += f"; {held_out} held-out positive prompts (one answer = {100 / held_out:.3g}%)"
    unchanged = result.unchanged
    if unchanged is not None:
        line += (
            f"; unchanged model: refusal {unchanged['refusal']:.2f}, degenerate "
            f"{unchanged['degenerate']:.2f}"
        )
    return line


def _pareto_table(result: SearchResult) -> Table:
    """The Pareto-front trials, one row each."""
    table = Table(title="Pareto front (held-out prompts)", show_edge=False)
    columns = ("trial", "refusal", "degenerate", "KL", "k", "m", "sign", "score", "first layer")
    for name in columns:
        table.add_column(name, justify="right")
    for t in result.pareto:
        table.add_row(
            str(t.number),
            f"{t.refusal:.2f}",
            f"{t.degenerate:.2f}",
            f"{t.kl:.3g}",
            str(t.k),
            f"{t.multiplier:.3g}",
            t.sign,
            t.score,
            str(t.first_layer),
        )
    return table


def _baselines_table(result: SearchResult) -> Table:
    """The baselines measured beside the search (same prompts, judge and KL)."""
    base = Table(title="baselines (same prompts, judge and KL)", show_edge=False)
    for name in ("method", "layer", "s", "refusal", "degenerate", "KL"):
        base.add_column(name, justify="right")
    for p in result.baselines:
        base.add_row(
            p.method,
            str(p.layer),
            f"{p.s:g}",
            f"{p.refusal:.2f}",
            f"{p.degenerate:.2f}",
            f"{p.kl:.3g}",
        )
    return base


def _config(settings: OptimizeSettings) -> OptimizeConfig:
    """The `OptimizeConfig` of the search's options."""
    from neurosteer.workflows.optimization import OptimizeConfig, SearchSpace

    space = SearchSpace(
        k_share=settings.k_range,
        multiplier=settings.multiplier_range,
        signs=settings.signs,
        scores=settings.scores,
        first_layer=settings.first_layer_range,
    )
    template = settings.template
    return OptimizeConfig(
        trials=settings.trials,
        held_out_positive=settings.held_out_positive,
        held_out_negative=settings.held_out_negative,
        split_seed=settings.split_seed,
        judge=settings.judge,
        max_new_tokens=settings.max_new_tokens,
        batch_size=settings.batch_size,
        kl=settings.kl,
        kl_tokens=settings.kl_tokens,
        sampler=settings.sampler,
        seed=settings.seed,
        startup_trials=settings.startup_trials,
        prune=settings.prune,
        prune_ratio=settings.prune_ratio,
        space=space,
        universal_filter=settings.universal.universal_filter,
        **template.as_kwargs(),
        baselines=not settings.no_baselines,
        baseline_strengths=settings.baseline_strengths,
        baseline_layer=settings.baseline_layer,
    )


def _quiet_optuna() -> None:
    """Optuna logs every trial at INFO; the progress bar says it already (kept under --debug)."""
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        from neurosteer.workflows.optimization.study import optuna_module

        optuna = optuna_module()
        optuna.logging.set_verbosity(optuna.logging.WARNING)
