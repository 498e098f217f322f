"""Options and helpers shared by the CLI's commands: model loading options, layer lists,
the chat-template switch. Parsing only; the library does the work."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def model_options(fn: F) -> F:
    """Options shared by every command that loads a model."""
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
            help="Override: path from a layer to the MLP output projection.",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def show_progress() -> bool:
    """Whether long steps show progress bars: when stderr is a terminal (not in logs/pipes)."""
    return sys.stderr.isatty()


def load(params: dict[str, Any], circuit: Any = None) -> tuple[Any, Any, Any]:
    """Load the model named in the shared options; returns (model, tokenizer, layout).

    With a circuit, the layout is the circuit's own (its recorded paths, see `circuit_layout`).
    """
    from neurosteer.model.layout import resolve_layout
    from neurosteer.model.loading import load_model

    if circuit is not None:
        check_before_loading(circuit, params)
    model, tokenizer = load_model(
        params["model"],
        dtype=params["dtype"],
        device=params["device"],
        device_map=params["device_map"],
        max_memory=params["max_memory"],
        offload_folder=params["offload_folder"],
        revision=params["revision"],
        trust_remote_code=params["trust_remote_code"],
        progress=show_progress(),
    )
    if circuit is not None:
        return model, tokenizer, circuit_layout(model, circuit, params)
    layout = resolve_layout(model, layers_path=params["layers_path"], site_path=params["site_path"])
    return model, tokenizer, layout


def check_before_loading(circuit: Any, params: dict[str, Any]) -> None:
    """Refuse, from a local MODEL's files alone, a circuit that does not fit its shape or is
    already baked into it (the checks `bake` makes on a GGUF header), so that no load is
    waited for; a hub id, or a model whose config cannot be built here, is checked once
    loaded."""
    from neurosteer.model.fingerprint import baked_record
    from neurosteer.model.gguf.loading import find_gguf

    path = Path(params["model"]).expanduser()
    if not path.exists():
        return
    gguf_file = find_gguf(path)
    if gguf_file is not None:
        from neurosteer.export.gguf import circuit_tensors
        from neurosteer.model.fingerprint import gguf_header

        circuit_tensors(gguf_header(gguf_file), circuit)
        circuit.refuse_baked(baked_record(gguf_file), f"'{gguf_file}'", warn=False)
        return
    if params["trust_remote_code"] or not (path / "config.json").is_file():
        return  # custom code is not built without the load; the load reports a bad folder
    from neurosteer.export.streaming import skeleton

    circuit_layout(skeleton(path), circuit, params)
    circuit.refuse_baked(baked_record(path), f"'{path}'", warn=False)


def circuit_layout(model: Any, circuit: Any, params: dict[str, Any]) -> Any:
    """The circuit's layout on `model`: its recorded paths, or --layers-path/--site if given
    (a path left out is taken from the circuit), which must then agree with the circuit."""
    from neurosteer.model.layout import resolve_layout

    layout = None
    if params["layers_path"] is not None or params["site_path"] is not None:
        layout = resolve_layout(
            model,
            layers_path=params["layers_path"] or circuit.model.layers_path,
            site_path=params["site_path"] or circuit.model.site_path,
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
    """'0,1' → (0, 1); '' → ()."""
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated layer numbers, got {text!r}") from None


def template_option(fn: F) -> F:
    """How prompts are rendered: the chat-template switch, the system turn and the template
    variables."""
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
    """`--template-var KEY=VALUE` (repeatable) → params["template_vars"]: dict or None."""
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


def universal_filter_options(fn: F) -> F:
    """The universal-neuron filter's switch and its neutral prompts (sweep, optimize)."""
    fn = click.option(
        "--neutral",
        type=click.Path(path_type=Path),
        default=None,
        help="Neutral prompts for the universal filter (default: built-in set).",
    )(fn)
    return click.option(
        "--no-universal-filter", is_flag=True, help="Skip the universal-neuron filter."
    )(fn)


def contrast_options(fn: F) -> F:
    """The two prompt sets a circuit (and the baselines) are found from."""
    return _contrast_options(fn, required=True)


def optional_contrast_options(fn: F) -> F:
    """The two prompt sets, optional: for a command with another mode (discover's RelP)."""
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
