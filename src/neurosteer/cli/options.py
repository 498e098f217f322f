"""Option groups shared by the CLI's commands, each a frozen settings dataclass beside the
decorator that declares its options (model loading, prompt rendering, the contrastive prompt
sets, the universal filter), and the parsers of comma-separated values. Parsing only; the
library does the work."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from neurosteer.errors import InputError

if TYPE_CHECKING:  # imported inside the functions at run time: `--help` stays fast
    from torch import nn
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from neurosteer.methods.circuit import Circuit
    from neurosteer.model.layout import ModelLayout

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class ModelSettings:
    """The options of `model_options`: MODEL and how it is loaded and laid out."""

    model: str
    dtype: str
    device: str | None
    device_map: str | None
    max_memory: dict[int | str, str] | None
    offload_folder: Path | None
    revision: str | None
    trust_remote_code: bool
    layers_path: str | None
    site_path: str | None


def model_options(fn: F) -> F:
    """Options shared by every command that loads a model (read as `ModelSettings`)."""
    options = [
        click.argument("model"),
        click.option(
            "--dtype", default="auto", show_default=True, help="auto, float32, bfloat16 or float16."
        ),
        click.option("--device", default=None, help="cpu, cuda, cuda:N or mps (default: cpu)."),
        click.option(
            "--device-map",
            default=None,
            help="Spread layers over devices, e.g. 'auto' (accelerate).",
        ),
        click.option(
            "--max-memory",
            default=None,
            callback=_parse_memory,
            help="Per-device caps for --device-map auto, e.g. '0=70GiB,1=70GiB,cpu=200GiB'.",
        ),
        click.option(
            "--offload-folder",
            type=click.Path(path_type=Path),
            default=None,
            help="Offload layers that fit nowhere else to this folder.",
        ),
        click.option("--revision", default=None, help="Hub revision of MODEL."),
        click.option(
            "--trust-remote-code",
            is_flag=True,
            help="Allow custom modelling code from the checkpoint.",
        ),
        click.option(
            "--layers-path",
            default=None,
            help="Override: path to the decoder layers, e.g. model.layers.",
        ),
        click.option(
            "--site",
            "site_path",
            default=None,
            help="Override: path from a layer to the MLP output projection (e.g. mlp.down_proj); "
            "for a mixture-of-experts model, to the MLP block holding the experts (e.g. mlp).",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def circuit_output_options(*, multiplier_help: str, output_help: str) -> Callable[[F], F]:
    """`--circuit`, `--multiplier/-m`, `--output/-o` and `--force`: the options of a command
    that writes a circuit, edited in at a multiplier, to OUTPUT (`bake`, `export-lora`); read
    as the settings fields `circuit_path`, `multiplier`, `output` and `force`. The commands
    word what the multiplier and the output are."""

    def decorate(fn: F) -> F:
        options = [
            click.option(
                "--circuit", "circuit_path", type=click.Path(path_type=Path), required=True
            ),
            click.option("--multiplier", "-m", type=float, default=None, help=multiplier_help),
            click.option(
                "--output", "-o", type=click.Path(path_type=Path), required=True, help=output_help
            ),
            click.option("--force", is_flag=True, help="Replace OUTPUT if it exists."),
        ]
        for option in reversed(options):
            fn = option(fn)
        return fn

    return decorate


def show_progress() -> bool:
    """Whether long steps show progress bars: when stderr is a terminal (not in logs/pipes)."""
    return sys.stderr.isatty()


def load(
    settings: ModelSettings, circuit: Circuit | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, ModelLayout]:
    """Load the model named in the shared options; returns (model, tokenizer, layout).

    With a circuit, the layout is the circuit's own (its recorded paths, see `circuit_layout`).
    """
    from neurosteer.model.layout import resolve_layout
    from neurosteer.model.loading import load_model

    if circuit is not None:
        check_before_loading(circuit, settings)
    model, tokenizer = load_model(
        settings.model,
        dtype=settings.dtype,
        device=settings.device,
        device_map=settings.device_map,
        max_memory=settings.max_memory,
        offload_folder=settings.offload_folder,
        revision=settings.revision,
        trust_remote_code=settings.trust_remote_code,
        progress=show_progress(),
    )
    if circuit is not None:
        return model, tokenizer, circuit_layout(model, circuit, settings)
    layout = resolve_layout(model, layers_path=settings.layers_path, site_path=settings.site_path)
    return model, tokenizer, layout


def check_before_loading(circuit: Circuit, settings: ModelSettings) -> None:
    """Refuse, from a local MODEL's files alone, a circuit that does not fit its shape or is
    already baked into it (the checks `bake` makes on a GGUF header), so that no load is
    waited for; a hub id, or a model whose config cannot be built here, is checked once
    loaded."""
    from neurosteer.model.fingerprint import baked_record
    from neurosteer.model.gguf.loading import find_gguf

    path = Path(settings.model).expanduser()
    if not path.exists():
        return
    gguf_file = find_gguf(path)
    if gguf_file is not None:
        from neurosteer.export.gguf import bake_targets
        from neurosteer.model.fingerprint import gguf_header

        bake_targets(gguf_header(gguf_file), circuit)
        circuit.refuse_baked(baked_record(gguf_file), f"'{gguf_file}'", warn=False)
        return
    if settings.trust_remote_code or not (path / "config.json").is_file():
        return  # custom code is not built without the load; the load reports a bad folder
    from neurosteer.export.streaming import skeleton

    circuit_layout(skeleton(path), circuit, settings)
    circuit.refuse_baked(baked_record(path), f"'{path}'", warn=False)


def circuit_layout(model: nn.Module, circuit: Circuit, settings: ModelSettings) -> ModelLayout:
    """The circuit's layout on `model`: its recorded paths, or --layers-path/--site if given
    (a path left out is taken from the circuit), which must then agree with the circuit."""
    from neurosteer.model.layout import resolve_layout

    layout = None
    if settings.layers_path is not None or settings.site_path is not None:
        layout = resolve_layout(
            model,
            layers_path=settings.layers_path or circuit.model.layers_path,
            site_path=settings.site_path or circuit.model.site_path,
        )
    return circuit.layout_on(model, layout)


def _parse_memory(
    _ctx: click.Context, _param: click.Parameter, text: str | None
) -> dict[int | str, str] | None:
    """'0=70GiB,cpu=200GiB' → {0: '70GiB', 'cpu': '200GiB'} (accelerate's max_memory)."""
    if not text:
        return None
    caps: dict[int | str, str] = {}
    for part in text.split(","):
        device, sep, amount = part.partition("=")
        if not sep or not amount.strip():
            raise click.BadParameter(f"expected DEVICE=AMOUNT pairs, got {part!r}")
        device = device.strip()
        caps[int(device) if device.isdigit() else device] = amount.strip()
    return caps


def parse_layers(text: str) -> tuple[int, ...]:
    """'0,1' → (0, 1); '' → ().

    Raises:
        click.BadParameter: an item that is not a whole number.
    """
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated layer numbers, got {text!r}") from None


def floats(option: str) -> Callable[[str], tuple[float, ...]]:
    """The parser of `option`'s comma-separated numbers: '0,0.5' → (0.0, 0.5); '' → ().

    The parser raises `InputError` naming `option` on an item that is not a number."""

    def parse(text: str) -> tuple[float, ...]:
        try:
            return tuple(float(part) for part in text.split(",") if part.strip())
        except ValueError:
            raise InputError(f"{option} takes comma-separated numbers, got {text!r}") from None

    return parse


def ints(option: str) -> Callable[[str], tuple[int, ...]]:
    """The parser of `option`'s comma-separated whole numbers: '0,3' → (0, 3); '' → ().

    The parser raises `InputError` naming `option` on an item that is not a whole number."""

    def parse(text: str) -> tuple[int, ...]:
        try:
            return tuple(int(part) for part in text.split(",") if part.strip())
        except ValueError:
            raise InputError(
                f"{option} takes comma-separated whole numbers, got {text!r}"
            ) from None

    return parse


def optional(parse: Callable[[str], T]) -> Callable[[str | None], T | None]:
    """`parse` for an option that may be left out: None or '' stays None."""

    def parse_given(text: str | None) -> T | None:
        return parse(text) if text else None

    return parse_given


def names(text: str) -> tuple[str, ...]:
    """'cna, caa' → ('cna', 'caa'): comma-separated names, blanks dropped."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def pair(option: str) -> Callable[[str], tuple[float, float]]:
    """The parser of `option`'s LOW,HIGH: '-2,1' → (-2.0, 1.0).

    The parser raises `InputError` naming `option` unless the text is two numbers."""
    parse_floats = floats(option)

    def parse(text: str) -> tuple[float, float]:
        values = parse_floats(text)
        if len(values) != 2:
            raise InputError(f"{option} takes two numbers, LOW,HIGH; got {text!r}")
        return values[0], values[1]

    return parse


def template_option(fn: F) -> F:
    """How prompts are rendered: the chat-template switch, the system turn and the template
    variables (read as `neurosteer.prompts.rendering.Rendering`)."""
    fn = template_vars_option(fn)
    fn = click.option(
        "--system",
        default=None,
        metavar="TEXT",
        callback=check_system,
        help="System turn before every prompt (chat templates only; `discover` records it in "
        "the circuit, `sweep` in its config). "
        "Default: the template's own.",
    )(fn)
    return click.option(
        "--chat-template/--raw",
        "chat_template",
        default=None,
        help="Force the chat template on or off (default: on when the tokenizer has one).",
    )(fn)


def check_system(_ctx: click.Context, _param: click.Parameter, text: str | None) -> str | None:
    """--system, refused before any model loads when it is not valid text."""
    if text is not None:
        from neurosteer.prompts.text_check import check_text

        check_text(text, "--system")
    return text


def template_vars_option(fn: F) -> F:
    """`--template-var KEY=VALUE` (repeatable) → the `template_vars` value: dict or None."""
    return click.option(
        "--template-var",
        "template_vars",
        multiple=True,
        metavar="KEY=VALUE",
        callback=_parse_template_vars,
        help="A variable the chat template reads, e.g. enable_thinking=false (true/false, "
        "numbers, else text; repeatable). strftime_now=YYYY-MM-DD fixes the date a template "
        "reads (default: today, fixed per run). Recorded like --system.",
    )(fn)


def _parse_template_vars(
    _ctx: click.Context, _param: click.Parameter, items: tuple[str, ...]
) -> dict[str, Any] | None:
    from neurosteer.prompts.template_vars import parse_template_vars

    return parse_template_vars(items)


@dataclass(frozen=True, kw_only=True)
class UniversalFilterSettings:
    """The options of `universal_filter_options`."""

    no_universal_filter: bool
    neutral: Path | None

    @property
    def universal_filter(self) -> bool:
        """Whether the universal-neuron filter runs."""
        return not self.no_universal_filter


def universal_filter_options(fn: F) -> F:
    """The universal-neuron filter's switch and its neutral prompts (discover, sweep,
    optimize; read as `UniversalFilterSettings`)."""
    fn = click.option(
        "--neutral",
        type=click.Path(path_type=Path),
        default=None,
        help="Neutral prompts for the universal filter (default: built-in set).",
    )(fn)
    return click.option(
        "--no-universal-filter",
        is_flag=True,
        help="Skip the universal-neuron filter (keep neurons highly active on most neutral "
        "prompts).",
    )(fn)


@dataclass(frozen=True, kw_only=True)
class ContrastSettings:
    """The options of `contrast_options`: the two prompt files."""

    positive: Path
    negative: Path


@dataclass(frozen=True, kw_only=True)
class OptionalContrastSettings:
    """The options of `optional_contrast_options`: the two prompt files, either left out."""

    positive: Path | None
    negative: Path | None


def contrast_options(fn: F) -> F:
    """The two prompt sets a circuit (and the baselines) are found from (read as
    `ContrastSettings`)."""
    return _contrast_options(fn, required=True)


def optional_contrast_options(fn: F) -> F:
    """The two prompt sets, optional: for a command with another mode (read as
    `OptionalContrastSettings`)."""
    return _contrast_options(fn, required=False)


def _contrast_options(fn: F, *, required: bool) -> F:
    fn = click.option(
        "--negative",
        "-n",
        type=click.Path(path_type=Path),
        required=required,
        default=None,
        help="Prompts not showing the behaviour.",
    )(fn)
    return click.option(
        "--positive",
        "-p",
        type=click.Path(path_type=Path),
        required=required,
        default=None,
        help="Prompts showing the behaviour (.txt, .jsonl, .json, .csv).",
    )(fn)


@dataclass(frozen=True, kw_only=True)
class JudgeModelSettings:
    """The options of `judge_model_options`: what a model judge (`--judge model...`) reads."""

    judge_model: Path | None
    judge_prompts: Path | None


def judge_model_options(fn: F) -> F:
    """The model judge's model and prompt file (judge, sweep, optimize; read as
    `JudgeModelSettings`); both default to their environment variables."""
    fn = click.option(
        "--judge-prompts",
        type=click.Path(path_type=Path),
        default=None,
        help="JSON file of judge prompts for model#ENTRY, e.g. refusal_judges/llm_judges.json "
        "(default: $NEUROSTEER_JUDGE_PROMPTS).",
    )(fn)
    return click.option(
        "--judge-model",
        type=click.Path(path_type=Path),
        default=None,
        help="Judge model for model judges: a folder or .gguf file "
        "(default: $NEUROSTEER_JUDGE_MODEL).",
    )(fn)
