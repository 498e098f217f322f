"""The `neurosteer` command: parses options, calls the library, prints and writes files.

Errors the user can fix (`NeurosteerError`) become one line on stderr and exit code 2; any
other exception is reported in one line with exit code 1. `--debug` shows tracebacks.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import click

from neurosteer._io import check_writable
from neurosteer._version import __version__
from neurosteer.cli.modes import deprecated_spelling
from neurosteer.cli.options import (
    ModelSettings,
    OptionalContrastSettings,
    UniversalFilterSettings,
    circuit_layout,
    circuit_output_options,
    load,
    model_options,
    optional,
    optional_contrast_options,
    parse_layers,
    show_progress,
    template_option,
    universal_filter_options,
)
from neurosteer.cli.probe_cmd import parse_multipliers
from neurosteer.cli.relp_cmds import Pairs, PairSettings, pair_options, read_pairs
from neurosteer.cli.settings import parsed, settings_command
from neurosteer.errors import InputError, NeurosteerError
from neurosteer.prompts.rendering import Rendering

if TYPE_CHECKING:
    from neurosteer.methods.circuit import Circuit


class _Group(click.Group):
    """A click group that turns our errors into one clear line."""

    def invoke(self, ctx: click.Context) -> Any:
        debug = bool(ctx.params.get("debug"))
        try:
            return super().invoke(ctx)
        except NeurosteerError as err:
            if debug:
                raise
            click.echo(f"error: {_printable(err)}", err=True)
            ctx.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)
        except BrokenPipeError:  # the reader of our output left (`| head`): stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(141)  # 128 + SIGPIPE, as a shell reports a command killed by it
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as err:
            if debug:
                raise
            from neurosteer.model.runtime import is_out_of_memory

            if is_out_of_memory(err):
                click.echo(f"error: {_out_of_memory(err)}", err=True)
                ctx.exit(2)
            click.echo(
                f"error: unexpected {type(err).__name__}: {_printable(err)} (run with --debug "
                "for the traceback, and please report it)",
                err=True,
            )
            ctx.exit(1)


def _out_of_memory(err: Exception) -> str:
    """One line for memory that ran out where no smaller batch could help: batched passes
    already retry at half the size, so this was one prompt at a time, loading, or baking."""
    first = _printable(err).splitlines()[0] if str(err).strip() else type(err).__name__
    return (
        f"out of memory ({first[:160]}), even where batches were halved down to one prompt; "
        "the model and its work do not fit here: try a smaller --dtype (bfloat16 needs half of "
        "float32's memory), fewer --max-new-tokens or shorter prompts, or a machine with more "
        "memory (--debug shows where it ran out)"
    )


def _printable(err: Exception) -> str:
    """The message, with anything a terminal cannot print (lone surrogates) escaped."""
    return str(err).encode("utf-8", "backslashreplace").decode("utf-8")


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="neurosteer")
@click.option("--debug", is_flag=True, help="Show full tracebacks and debug logs.")
def cli(debug: bool) -> None:
    """Contrastive Neuron Attribution: find, steer and bake the MLP neurons behind a behaviour."""
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not debug:
        # transformers' and the hub's own notes (load reports, retries) drown our output.
        import transformers

        quiet: tuple[Callable[[], None], ...] = (
            transformers.utils.logging.set_verbosity_error,
            transformers.utils.logging.disable_progress_bar,
        )
        for call in quiet:  # through a typed name: transformers' functions are untyped
            call()
        logging.getLogger("huggingface_hub").setLevel(logging.ERROR)


@dataclass(frozen=True, kw_only=True)
class DiscoverSettings:
    """The options of `neurosteer discover` (both modes)."""

    loading: ModelSettings
    contrast: OptionalContrastSettings
    relp: bool
    pairs: PairSettings
    positions: Literal["last", "prompt"] | None
    output: Path
    top_k: int | None
    fraction: float
    skip_layers: tuple[int, ...] = parsed(parse_layers)
    universal: UniversalFilterSettings
    positive_only: bool
    batch_size: int | None
    keep_table: bool
    force: bool
    template: Rendering


@cli.command()
@model_options
@optional_contrast_options
@click.option(
    "--relp",
    is_flag=True,
    help="RelP mode: the neurons with the largest attribution to each --prompt's --target "
    "token, instead of the contrast of --positive and --negative.",
)
@pair_options
@click.option(
    "--positions",
    type=click.Choice(["last", "prompt"]),
    default=None,
    help="RelP: attribute at the last prompt position (default) or sum over every prompt position.",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(path_type=Path),
    required=True,
    help="Circuit folder to write (e.g. refusal.circuit).",
)
@click.option("--top-k", type=int, default=None, help="Number of neurons (overrides --fraction).")
@click.option(
    "--fraction",
    type=float,
    default=0.001,
    show_default=True,
    help="Share of all MLP neurons to keep.",
)
@click.option(
    "--skip-layers",
    default="0,1",
    show_default=True,
    help="Layers that are not candidates; '' for none.",
)
@universal_filter_options
@click.option("--positive-only", is_flag=True, help="Keep only neurons with δ > 0.")
@click.option("--batch-size", type=int, default=None, help="Prompts per forward pass.")
@click.option(
    "--keep-table",
    is_flag=True,
    help="Store the full δ table so k can be changed later without re-recording.",
)
@click.option("--force", is_flag=True, help="Replace OUTPUT if it exists.")
@template_option
@settings_command(DiscoverSettings)
def discover(settings: DiscoverSettings) -> None:
    """Find the neurons that separate POSITIVE from NEGATIVE prompts in MODEL (contrastive),
    or, with --relp and --prompt/--target pairs, the neurons with the largest RelP
    attribution to each prompt's next token."""
    from neurosteer.cli.render import print_circuit_summary

    check_writable(settings.output, force=settings.force)
    pairs = read_pairs(settings.pairs)
    contrast = settings.contrast
    contrastive = contrast.positive is not None or contrast.negative is not None
    if (settings.relp or pairs is not None) and contrastive:
        raise InputError(
            "discover takes --positive/--negative (contrastive) or --prompt/--target (RelP), "
            "not both"
        )
    if pairs is None:
        if settings.relp:
            raise InputError("--relp needs --prompt/--target pairs (or --pairs FILE)")
        circuit = _discover_contrastive(settings)
    else:
        if not settings.relp:
            deprecated_spelling(
                "discover's RelP mode without --relp (chosen by --prompt/--target or --pairs)",
                "add --relp",
            )
        circuit = discover_relp(settings, pairs)
    circuit.save(settings.output, force=settings.force)
    print_circuit_summary(circuit, top=10, settings=True)
    click.echo(f"wrote {settings.output}")


def _discover_contrastive(settings: DiscoverSettings) -> Circuit:
    """`discover`'s contrastive mode: the circuit of `neurosteer.discover` (not yet saved).

    Raises:
        InputError: a prompt file missing, or --positions (RelP's) given.
    """
    from neurosteer.methods.discovery import discover as run_discover
    from neurosteer.prompts.render import load_prompts

    positive_file, negative_file = settings.contrast.positive, settings.contrast.negative
    if positive_file is None or negative_file is None:
        raise InputError(
            "discover needs --positive and --negative prompt files (contrastive), or "
            "--prompt and --target pairs (RelP)"
        )
    if settings.positions is not None:
        raise InputError("--positions is for RelP (--prompt/--target); drop it")
    positive, negative = load_prompts(positive_file), load_prompts(negative_file)
    universal, template = settings.universal, settings.template
    neutral = load_prompts(universal.neutral) if universal.neutral else None
    model, tokenizer, layout = load(settings.loading)
    return run_discover(
        model,
        tokenizer,
        positive,
        negative,
        top_k=settings.top_k,
        fraction=settings.fraction,
        skip_layers=settings.skip_layers,
        universal_filter=universal.universal_filter,
        neutral=neutral,
        positive_only=settings.positive_only,
        batch_size=settings.batch_size,
        **template.as_kwargs(),
        keep_table=settings.keep_table,
        layout=layout,
        progress=True,
    )


@cli.command()
@click.argument("circuit", type=click.Path(path_type=Path))
@click.option("--top", type=int, default=20, show_default=True, help="Top neurons to list.")
@click.option(
    "--html",
    "html_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Write the neuron browser (a self-contained HTML page) to this file.",
)
@click.option("--model", default=None, help="With --html: the model, for the logit lens.")
@click.option("--dtype", default="auto", show_default=True, help="With --model: its dtype.")
@click.option("--device", default=None, help="With --model: cpu, cuda, cuda:N or mps.")
def inspect(
    circuit: Path,
    top: int,
    html_path: Path | None,
    model: str | None,
    dtype: str,
    device: str | None,
) -> None:
    """Show where a circuit's neurons sit, its strongest neurons and its settings; with
    --html, write its neuron browser."""
    from neurosteer.cli import inspect_cmd
    from neurosteer.cli.render import print_circuit_summary
    from neurosteer.methods.circuit import Circuit

    inspect_cmd.check_browser_options(html_path, model)
    loaded = Circuit.load(circuit)
    print_circuit_summary(loaded, top=top, settings=True)
    if html_path is not None:
        written = inspect_cmd.write_browser(loaded, html_path, model, dtype=dtype, device=device)
        inspect_cmd.echo_written(written, model is not None)


def discover_relp(settings: DiscoverSettings, pairs: Pairs) -> Circuit:
    """`discover`'s RelP mode: the circuit of `neurosteer.attribute` (not yet saved)."""
    from neurosteer.methods.relp import attribute

    if settings.universal.neutral is not None:
        raise InputError("--neutral is for contrastive discovery; RelP has no universal filter")
    prompts, targets, contrasts = pairs
    model, tokenizer, layout = load(settings.loading)
    template = settings.template
    return attribute(
        model,
        tokenizer,
        prompts,
        targets,
        contrasts=contrasts,
        positions=settings.positions or "last",
        top_k=settings.top_k,
        fraction=settings.fraction,
        skip_layers=settings.skip_layers,
        positive_only=settings.positive_only,
        batch_size=settings.batch_size,
        **template.as_kwargs(),
        keep_table=settings.keep_table,
        layout=layout,
        progress=True,
    )


@dataclass(frozen=True, kw_only=True)
class GenerateSettings:
    """The options of `neurosteer generate`."""

    loading: ModelSettings
    prompts: tuple[str, ...]
    circuit_path: Path | None
    multipliers: tuple[float, ...] | None = parsed(optional(parse_multipliers))
    positions: Literal["all", "generated"]
    max_new_tokens: int
    template: Rendering


@cli.command()
@model_options
@click.argument("prompts", nargs=-1, required=True)
@click.option(
    "--circuit",
    "circuit_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Steer with this circuit and show unsteered and steered side by side.",
)
@click.option(
    "--multiplier",
    "-m",
    "multipliers",
    default=None,
    help="0 ablates, 1 is unchanged, 2 amplifies; several, comma-separated (-m 0,-1), give "
    "one column each from one model load (default: the circuit's stored multiplier, else 0).",
)
@click.option(
    "--positions",
    type=click.Choice(["all", "generated"]),
    default="all",
    show_default=True,
    help="all: steer every position. generated: only the positions that emit the answer "
    "(the last prompt token, which predicts the first answer token, and every new token).",
)
@click.option("--max-new-tokens", type=int, default=64, show_default=True)
@template_option
@settings_command(GenerateSettings)
def generate(settings: GenerateSettings) -> None:
    """Greedy completions of PROMPTS, unsteered and (with --circuit) steered."""
    from neurosteer.cli.render import print_answers
    from neurosteer.evaluation.generation import generate as run_generate
    from neurosteer.methods.circuit import Circuit
    from neurosteer.methods.steering import steer
    from neurosteer.prompts.text_check import check_prompts

    if settings.multipliers is not None and settings.circuit_path is None:
        raise InputError("-m sets the circuit's multipliers; give --circuit too")
    prompts = list(settings.prompts)
    check_prompts(prompts)  # before the model loads
    circuit = Circuit.load(settings.circuit_path) if settings.circuit_path else None
    model, tokenizer, layout = load(settings.loading, circuit)
    template = settings.template

    def answers(desc: str) -> list[str]:
        return run_generate(
            model,
            tokenizer,
            prompts,
            desc=desc,
            max_new_tokens=settings.max_new_tokens,
            chat_template=template.chat_template,
            system=template.system,
            progress=show_progress(),
            template_vars=template.template_vars,
        )

    plain = answers("generating" if circuit is None else "unsteered")
    if circuit is None:
        for prompt, answer in zip(prompts, plain, strict=True):
            click.echo(f"> {prompt}\n{answer}\n")
        return
    columns = [("unsteered", plain)]
    for m in settings.multipliers or (circuit.default_strength,):
        with steer(model, circuit, m, positions=settings.positions, layout=layout):
            label = f"steered (m = {m:g})"
            columns.append((label, answers(label)))
    print_answers(prompts, columns)


@dataclass(frozen=True, kw_only=True)
class BakeSettings:
    """The options of `neurosteer bake`."""

    loading: ModelSettings
    circuit_path: Path
    multiplier: float | None
    output: Path
    force: bool
    streaming: bool
    gguf_fallback: Literal["F16", "Q8_0"]
    gguf_keep_type: bool


@cli.command()
@model_options
@circuit_output_options(
    multiplier_help="The multiplier baked in (default: the circuit's stored multiplier, else 0).",
    output_help="Folder for the steered checkpoint (model + tokenizer); a .gguf file for a GGUF "
    "MODEL.",
)
@click.option(
    "--streaming",
    is_flag=True,
    help="Edit a local safetensors checkpoint shard by shard, never loading the model.",
)
@click.option(
    "--gguf-fallback",
    type=click.Choice(["F16", "Q8_0"], case_sensitive=False),
    default="F16",
    show_default=True,
    help="GGUF only: the type of a changed tensor whose own type cannot hold the edit exactly.",
)
@click.option(
    "--gguf-keep-type",
    is_flag=True,
    help="GGUF only: keep each changed tensor's own (quantized) type, with an approximate edit "
    "whose error is printed.",
)
@settings_command(BakeSettings)
def bake(settings: BakeSettings) -> None:
    """Write MODEL with the circuit's neurons scaled into the weights, as a plain checkpoint.

    A GGUF MODEL is always baked tensor by tensor into a new .gguf file.
    """
    from neurosteer.methods.baking import save_baked
    from neurosteer.methods.circuit import Circuit

    model_name = settings.loading.model
    gguf_file = _gguf_model(model_name)
    if gguf_file is None and settings.output.suffix.lower() == ".gguf":
        raise InputError(
            f"{settings.output} names a .gguf file, but bake writes a checkpoint folder from a "
            "folder MODEL; bake a GGUF MODEL to get a .gguf file, or name the output a folder"
        )
    inputs = [model_name] if settings.streaming or gguf_file is not None else []
    check_writable(settings.output, force=settings.force, inputs=inputs)
    circuit = Circuit.load(settings.circuit_path)
    m = circuit.default_strength if settings.multiplier is None else settings.multiplier
    if gguf_file is not None:
        _bake_gguf(gguf_file, circuit, m, settings)
        return
    if settings.streaming:
        _bake_streaming(circuit, m, settings)
        return
    model, tokenizer, layout = load(settings.loading, circuit)
    save_baked(
        model,
        tokenizer,
        circuit,
        m,
        settings.output,
        force=settings.force,
        layout=layout,
    )
    click.echo(
        f"wrote {settings.output}: {len(circuit)} neurons scaled by {m:g}; "
        "it loads with plain transformers"
    )


def _bake_streaming(circuit: Circuit, multiplier: float, settings: BakeSettings) -> None:
    """`bake --streaming`: edit the checkpoint's shards without loading the model."""
    from neurosteer.export.streaming import bake_streaming, skeleton

    _refuse_loading_options(settings.loading)
    layout = circuit_layout(skeleton(settings.loading.model), circuit, settings.loading)
    report = bake_streaming(
        settings.loading.model,
        circuit,
        multiplier,
        settings.output,
        force=settings.force,
        layout=layout,
    )
    click.echo(
        f"wrote {settings.output}: {len(report.tensors)} tensors scaled in "
        f"{len(report.rewritten)} of {report.shards} shards (peak "
        f"{report.peak_bytes / 2**20:.1f} MiB of tensors in memory)"
    )


def _refuse_loading_options(loading: ModelSettings) -> None:
    """--streaming never loads the model: options about loading it would be silently ignored.

    Raises:
        InputError: a loading option given.
    """
    given = [
        flag
        for flag, value in [
            ("--device", loading.device),
            ("--device-map", loading.device_map),
            ("--max-memory", loading.max_memory),
            ("--offload-folder", loading.offload_folder),
            ("--revision", loading.revision),
        ]
        if value is not None
    ]
    if loading.dtype != "auto":
        given.append("--dtype")
    if given:
        raise InputError(
            f"--streaming edits the checkpoint's files without loading the model, so "
            f"{', '.join(given)} would do nothing (the weights keep their dtype); leave "
            f"{'it' if len(given) == 1 else 'them'} out, or bake in memory without --streaming"
        )


def _gguf_model(model: str) -> Path | None:
    from neurosteer.model.gguf.loading import find_gguf

    path = Path(model).expanduser()
    return find_gguf(path) if path.exists() else None


def _bake_gguf(source: Path, circuit: Circuit, multiplier: float, settings: BakeSettings) -> None:
    """`bake` of a GGUF MODEL into a new .gguf file.

    Raises:
        InputError: an output not named .gguf.
    """
    from neurosteer.export.gguf import bake_gguf

    output = settings.output
    if output.suffix.lower() != ".gguf":
        raise InputError(
            f"a GGUF model is baked into a .gguf file; name the output e.g. {output}.gguf"
        )
    report = bake_gguf(
        source,
        circuit,
        multiplier,
        output,
        force=settings.force,
        fallback=settings.gguf_fallback,
        keep_type=settings.gguf_keep_type,
    )
    from neurosteer.cli.gguf_cmds import edit_fidelity

    for line in edit_fidelity(report.changed):
        click.echo(line)
    click.echo(
        f"wrote {output}: {len(report.changed)} tensors changed, {report.copied} copied byte for "
        "byte; it loads in llama.cpp and with neurosteer/transformers"
    )


def _register_commands() -> None:
    """Commands defined in their own files (they import the shared options, not this file)."""
    from neurosteer.cli.analysis_cmds import compare_command, report_command, sweep_command
    from neurosteer.cli.chat_cmd import chat_command
    from neurosteer.cli.gguf_cmds import evaluate_gguf_command
    from neurosteer.cli.judge_cmd import judge_command
    from neurosteer.cli.lora_cmd import export_lora_command
    from neurosteer.cli.models_cmd import models_group
    from neurosteer.cli.optimize_cmds import optimize_command
    from neurosteer.cli.organism_cmds import demo_command, organism_group
    from neurosteer.cli.probe_cmd import probe_command
    from neurosteer.cli.relp_cmds import faithfulness_command
    from neurosteer.cli.reproduce_cmd import reproduce_command

    commands = (sweep_command, report_command, compare_command, demo_command, organism_group)
    for command in (*commands, faithfulness_command, probe_command, chat_command):
        cli.add_command(command)
    cli.add_command(optimize_command)
    cli.add_command(models_group)
    cli.add_command(judge_command)
    cli.add_command(export_lora_command)
    cli.add_command(evaluate_gguf_command)
    cli.add_command(reproduce_command)


_register_commands()


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="neurosteer")


if __name__ == "__main__":  # pragma: no cover
    main()
