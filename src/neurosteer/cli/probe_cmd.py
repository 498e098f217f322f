"""`neurosteer probe`: the first answer token's probabilities, unsteered and under a circuit.

Parses the options, calls `neurosteer.evaluation.probe.next_token_probs` and prints one table per
prompt
(or JSON with --json). Bad input raises `InputError`, which the group prints as one line.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.table import Table

from neurosteer.cli.options import (
    ModelSettings,
    load,
    model_options,
    optional,
    template_option,
)
from neurosteer.cli.render import console, print_table
from neurosteer.cli.settings import parsed, settings_command
from neurosteer.errors import InputError
from neurosteer.prompts.rendering import Rendering

if TYPE_CHECKING:  # imported inside the command: `--help` stays fast
    from neurosteer.evaluation.probe import NextTokenProbs, OpeningToken, TokenChoice, TokenPick

#: Separates --tokens items: a comma and at most one space ("' I, Sure'" is ' I' and 'Sure').
_TOKEN_SEPARATOR = re.compile(r", ?")


def parse_multipliers(text: str) -> tuple[float, ...]:
    """'0,1,2' -> (0.0, 1.0, 2.0); anything else is an `InputError`."""
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:  # also an empty item: "0,,1" or "0,1,"
        values = ()
    if not values or not all(math.isfinite(v) for v in values):
        raise InputError(f"-m takes comma-separated finite numbers such as 0,1,2; got {text!r}")
    return values


def parse_tokens(values: tuple[str, ...]) -> list[str]:
    """--tokens values -> token strings: items split at ',' or ', ' (further spaces belong to
    the token, so ' I,  Sure' is ' I' and ' Sure'); a value that is exactly ',' is the comma."""
    tokens: list[str] = []
    for value in values:
        parts = [value] if value == "," else _TOKEN_SEPARATOR.split(value)
        if any(part == "" for part in parts):
            raise InputError(
                f"--tokens has an empty item in {value!r}; separate tokens with ',' or ', '"
            )
        tokens += parts
    return tokens


@dataclass(frozen=True, kw_only=True)
class ProbeSettings:
    """The options of `neurosteer probe`."""

    loading: ModelSettings
    prompts: tuple[str, ...]
    prompt_file: Path | None
    circuit_path: Path | None
    multipliers: tuple[float, ...] | None = parsed(optional(parse_multipliers))
    tokens: tuple[str, ...] = parsed(lambda values: tuple(parse_tokens(values)))
    judge: str
    top: int
    batch_size: int
    as_json: bool
    template: Rendering


@click.command("probe")
@model_options
@click.argument("prompts", nargs=-1)
@click.option(
    "--prompt-file",
    "-p",
    "prompt_file",
    type=click.Path(path_type=Path),
    default=None,
    help="More prompts from a file (.txt, .jsonl, .json, .csv).",
)
@click.option(
    "--circuit",
    "circuit_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Also read the probabilities under this circuit.",
)
@click.option(
    "--multiplier",
    "-m",
    "multipliers",
    default=None,
    help="Comma-separated multipliers, e.g. 0,1,2 (default: the circuit's default, 0).",
)
@click.option(
    "--tokens",
    "-t",
    multiple=True,
    help="Tokens to report, e.g. ' I, Sure' (repeatable). A string of several tokens is "
    "scored by its first token. Default: the tokens that open the unchanged model's own "
    "refused and compliant answers to PROMPTS (see --judge).",
)
@click.option(
    "--judge",
    default="sweep",
    show_default=True,
    help="Without --tokens: the judge that labels the unchanged answers the tokens are chosen "
    "from (strict, sweep, patterns, organism, a phrase-list .json, model:PATH).",
)
@click.option("--top", default=10, show_default=True, help="Most likely tokens to list.")
@click.option("--batch-size", default=8, show_default=True, help="Prompts per forward pass.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@template_option
@settings_command(ProbeSettings)
def probe_command(settings: ProbeSettings) -> None:
    """Probabilities of the first answer token for PROMPTS, unsteered and with --circuit.

    Each prompt is rendered as `generate` renders it (chat template and generation prompt).
    """
    from neurosteer.evaluation.probe import choose_tokens, next_token_probs
    from neurosteer.methods.circuit import Circuit
    from neurosteer.workflows.judges import get_judge

    prompts = _checked_prompts(settings)
    tokens = settings.tokens
    circuit = Circuit.load(settings.circuit_path) if settings.circuit_path else None
    judge = None if tokens else get_judge(settings.judge)
    model, tokenizer, layout = load(settings.loading, circuit)
    template = settings.template
    pick = None
    if judge is not None:
        pick = choose_tokens(
            model,
            tokenizer,
            prompts,
            judge,
            system=template.system,
            template_vars=template.template_vars,
            chat_template=template.chat_template,
            batch_size=settings.batch_size,
        )
    result = next_token_probs(
        model,
        tokenizer,
        prompts,
        intervention=circuit,
        strengths=settings.multipliers,
        tokens=tokens if pick is None else pick.token_ids,
        top=settings.top,
        system=template.system,
        template_vars=template.template_vars,
        chat_template=template.chat_template,
        batch_size=settings.batch_size,
        layout=layout,
    )
    if settings.as_json:
        record = {
            "model": settings.loading.model,
            "circuit": None if circuit is None else str(settings.circuit_path),
            **result.to_dict(),
        }
        if pick is not None:
            record["chosen_from_answers"] = pick_record(pick, settings.judge)
        click.echo(json.dumps(record, indent=2, ensure_ascii=False))
        return
    _print_result(result, pick, settings.judge)


def _checked_prompts(settings: ProbeSettings) -> list[str]:
    """The prompts of the arguments and of -p FILE, checked with the other options before the
    model loads.

    Raises:
        InputError: no prompt, a bad prompt, --top below 0, --batch-size below 1, or -m
            without --circuit.
    """
    from neurosteer.prompts.render import load_prompts
    from neurosteer.prompts.text_check import check_prompts

    prompts: list[str] = list(settings.prompts)
    if settings.prompt_file is not None:
        prompts += load_prompts(settings.prompt_file)
    if not prompts:
        raise InputError("probe needs a prompt: give it as an argument or in a file with -p FILE")
    check_prompts(prompts)  # before the model loads
    if settings.top < 0:
        raise InputError(f"--top must be 0 or more, got {settings.top}")
    if settings.batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {settings.batch_size}")
    if settings.multipliers is not None and settings.circuit_path is None:
        raise InputError("-m sets the circuit's multipliers; give --circuit too")
    return prompts


def _print_result(result: NextTokenProbs, pick: TokenPick | None, judge: str) -> None:
    """One table per prompt, the notes on the tokens, and how `pick` chose them (if it did)."""
    for i in range(len(result.prompts)):
        if i:
            console.print()
        print_table(probe_table(result, i))
    for note in token_notes(result.tokens):
        console.print(note, highlight=False)
    if pick is not None:
        for line in pick_lines(pick, judge):
            console.print(line, highlight=False, markup=False, soft_wrap=True)


def setting_label(strength: float | None) -> str:
    return "unsteered" if strength is None else f"m = {strength:g}"


def token_label(choice: TokenChoice) -> str:
    """' I' as given, with the token actually scored when it is spelled otherwise."""
    label = repr(choice.text)
    if choice.n_tokens > 1:
        return f"{label} (first token {choice.token!r})"
    return label if choice.token == choice.text else f"{label} ({choice.token!r})"


def token_notes(tokens: tuple[TokenChoice, ...]) -> list[str]:
    return [
        f"note: {c.text!r} is {c.n_tokens} tokens; only its first token {c.token!r} is scored"
        for c in tokens
        if c.n_tokens > 1
    ]


def _prob(p: float) -> str:
    return f"{p:.4f}" if p >= 1e-4 or p == 0 else f"{p:.1e}"


def probe_table(result: NextTokenProbs, i: int) -> Table:
    """One prompt: the top tokens per setting, then the chosen tokens' probabilities."""
    row = result.probs[i]
    table = Table(title=f"> {result.prompts[i]}", show_edge=False, title_justify="left")
    table.add_column("", justify="right")
    for setting in row:
        table.add_column(setting_label(setting.strength), justify="left")
    for rank in range(max((len(s.top) for s in row), default=0)):
        cells = [f"{s.top[rank].text!r} {_prob(s.top[rank].prob)}" for s in row]
        table.add_row(str(rank + 1), *cells)
    if result.tokens:
        table.add_section()
        for t, choice in enumerate(result.tokens):
            table.add_row(token_label(choice), *(_prob(s.chosen[t]) for s in row))
    return table


def _opening(t: OpeningToken) -> str:
    return (
        f"{t.choice.text!r} opens {t.refused} refused and {t.complied} compliant unchanged "
        "answer" + ("" if t.refused + t.complied == 1 else "s")
    )


def pick_lines(pick: TokenPick, judge: str) -> list[str]:
    """Which tokens `choose_tokens` chose and why, for people (under the tables)."""
    from neurosteer.evaluation.probe import CHOICE_TOKENS

    labels = pick.answers.labels
    lines = [
        f"tokens chosen from the unchanged model's own answers ({CHOICE_TOKENS} greedy tokens "
        f"per prompt, judge {judge}: {labels.count('refusal')} refused, "
        f"{labels.count('compliance')} complied, {labels.count('degenerate')} degenerate); "
        "--tokens sets your own:"
    ]
    for name, found in (("refusal", pick.refusal), ("compliance", pick.compliance)):
        if found:
            lines += [f"  {name}: {_opening(t)}" for t in found]
        else:
            lines.append(
                f"  {name}: none (no first token opens more {name} answers than the other "
                "kind; add prompts the unchanged model "
                + ("refuses)" if name == "refusal" else "answers)")
            )
    lines.append(
        "  a first token only opens an answer: a steered answer can start like a refusal "
        "and go on to comply; `neurosteer generate` shows the answers"
    )
    return lines


def pick_record(pick: TokenPick, judge: str) -> dict[str, Any]:
    """The --json form of `pick_lines`."""
    from neurosteer.evaluation.probe import CHOICE_TOKENS

    def tokens(found: tuple[OpeningToken, ...]) -> list[dict[str, Any]]:
        return [
            {"text": t.choice.text, "token_id": t.choice.token_id, "refused": t.refused,
             "complied": t.complied}
            for t in found
        ]  # fmt: skip

    return {
        "judge": judge,
        "max_new_tokens": CHOICE_TOKENS,
        "labels": list(pick.answers.labels),
        "refusal": tokens(pick.refusal),
        "compliance": tokens(pick.compliance),
    }
