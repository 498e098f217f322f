"""`neurosteer reproduce RUN/`: re-run a recorded sweep point or search trial and say whether
it matches its record (`neurosteer.workflows.reproduce`)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("reproduce")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option(
    "--point",
    default=None,
    help="Sweep only: METHOD:STRENGTH or random:STRENGTH:SEED (default: the first steered point).",
)
@click.option(
    "--trial", type=int, default=None, help="Search only: the trial number (default: the first)."
)
@click.option(
    "--model",
    "model_name",
    default=None,
    help="The model to run (default: the one the run records).",
)
@click.option(
    "--dtype", default=None, help="float32, bfloat16, ... (default: the one the run records)."
)
@click.option("--device", default=None, help="cpu, cuda, cuda:N or mps (default: cpu).")
@click.pass_context
def reproduce_command(
    ctx: click.Context,
    run_dir: Path,
    point: str | None,
    trial: int | None,
    model_name: str | None,
    dtype: str | None,
    device: str | None,
) -> None:
    """Re-run one recorded point of the sweep or search in RUN_DIR and compare it with its
    record: exactly where the computation is deterministic (answers, labels, shares), within
    a stated tolerance for floats (KL). Exit code 1 when it does not match."""
    from neurosteer.errors import InputError
    from neurosteer.model.layout import resolve_layout
    from neurosteer.model.loading import load_model
    from neurosteer.workflows.reproduce import (
        TOLERANCE,
        recorded_model,
        reproduce_sweep_point,
        reproduce_trial,
        run_kind,
    )

    kind = run_kind(run_dir)
    if kind == "sweep" and trial is not None:
        raise InputError("--trial is for search folders; this is a sweep (use --point)")
    if kind == "search" and point is not None:
        raise InputError("--point is for sweep folders; this is a search (use --trial)")
    name, recorded_env = recorded_model(run_dir)
    model, tokenizer = load_model(
        model_name or name, dtype=dtype or recorded_env.get("dtype", "auto"), device=device
    )
    layout = resolve_layout(model)
    if kind == "sweep":
        result = reproduce_sweep_point(model, tokenizer, run_dir, layout, point=point)
    else:
        result = reproduce_trial(model, tokenizer, run_dir, layout, trial=trial)
    click.echo(
        f"{result.what}: exact where deterministic, floats within {TOLERANCE['absolute']:g} + "
        f"{TOLERANCE['relative']:g} x |recorded|"
    )
    for check in result.checks:
        mark = "ok" if check.matches else "DIFFERS"
        rule = "exact" if check.exact else "tolerance"
        click.echo(
            f"  {mark:<7} {check.name:<24} {check.recorded!s:>14} -> {check.now!s:<14} ({rule})"
        )
    for line in result.environment:
        click.echo(f"  environment differs: {line}")
    if result.matches:
        click.echo(f"{result.what} matches its record")
        return
    click.echo(f"{result.what} does NOT match its record", err=True)
    ctx.exit(1)
