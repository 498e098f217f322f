"""`neurosteer chat`: an interactive, streamed conversation with a live steering multiplier.

The session itself (`neurosteer.workflows.chat_session.ChatSession`) takes lines and writes to a
stream;
this file loads the model, reads lines from the terminal (with readline editing and a history
file) or from a pipe (echoing each line after the prompt, so the output reads as a
transcript), and handles Ctrl-C and Ctrl-D.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, TextIO

import click

from neurosteer.cli.options import (
    ModelSettings,
    check_system,
    load,
    model_options,
    template_vars_option,
)
from neurosteer.cli.settings import settings_command
from neurosteer.errors import InputError

logger = logging.getLogger(__name__)

#: Lines kept in the history file.
HISTORY_LENGTH = 1000

#: Seconds between the checks for a Ctrl-C while waiting at the prompt.
PROMPT_TICK = 0.1


def history_path() -> Path:
    """Where the chat history lives: $XDG_CACHE_HOME/neurosteer/chat_history (default
    ~/.cache/neurosteer/chat_history)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "neurosteer" / "chat_history"


class _History:
    """readline's history, read from and written back to `history_path()`; a history that
    cannot be read or written is a warning, never an error."""

    def __init__(self) -> None:
        self.path = history_path()
        self.readline: ModuleType | None
        try:
            import readline
        except ImportError:  # e.g. Windows without pyreadline: plain input()
            self.readline = None
            return
        self.readline = readline
        readline.set_history_length(HISTORY_LENGTH)
        if self.path.is_file():
            try:
                readline.read_history_file(str(self.path))
            except OSError as err:
                logger.debug("could not read the chat history %s: %s", self.path, err)

    def save(self) -> None:
        if self.readline is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.readline.write_history_file(str(self.path))
        except OSError as err:
            click.echo(
                f"warning: could not save the chat history to {self.path}: {err.strerror or err}",
                err=True,
            )


def _tolerate_undecodable_input() -> None:
    """Read bytes that are not text in the terminal's encoding (a pasted Latin-1 byte) as lone
    surrogates instead of ending the chat with a decode error; the session then says the
    message is not valid text and keeps the conversation. Output escapes them."""
    for stream, errors in ((sys.stdin, "surrogateescape"), (sys.stdout, "backslashreplace")):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors=errors)


@contextlib.contextmanager
def _signals_checked_while_waiting() -> Iterator[None]:
    """While a line is read, wake the main thread every `PROMPT_TICK` s so that a Ctrl-C
    Python has recorded but not yet acted on raises `KeyboardInterrupt` at once.

    `input` (with or without readline) looks at Python's pending signals only when its wait
    for a key is interrupted. A Ctrl-C that lands after the prompt is drawn but before that
    wait starts (easily hit on a loaded machine) interrupts nothing, so the session would sit
    at the prompt, the typed line dropped by the terminal, until a key came. A repeating
    SIGALRM interrupts the wait, and Python then raises the pending `KeyboardInterrupt`.
    Does nothing off the main thread or where `setitimer` is missing (Windows).
    """
    if (
        not hasattr(signal, "setitimer")
        or threading.current_thread() is not threading.main_thread()
    ):
        yield
        return
    previous = signal.signal(signal.SIGALRM, lambda _signum, _frame: None)
    signal.setitimer(signal.ITIMER_REAL, PROMPT_TICK, PROMPT_TICK)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0.0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL if previous is None else previous)


def _read_line(prompt: str, interactive: bool, out: TextIO) -> str | None:
    """The next line, None at end of input. On a terminal readline edits it; from a pipe the
    line is echoed after the prompt.

    Raises:
        KeyboardInterrupt: Ctrl-C at the prompt (on a terminal).
    """
    if interactive:
        try:
            with _signals_checked_while_waiting():
                return input(prompt)
        except EOFError:
            out.write("\n")
            return None
    line = sys.stdin.readline()
    if not line:
        return None
    out.write(prompt + line.rstrip("\r\n") + "\n")
    return line


@dataclass(frozen=True, kw_only=True)
class ChatSettings:
    """The options of `neurosteer chat` (its own --system help; no --chat-template)."""

    loading: ModelSettings
    circuit_path: Path | None
    multiplier: float | None
    max_new_tokens: int
    temperature: float
    system: str | None
    template_vars: dict[str, Any] | None


@click.command("chat")
@model_options
@click.option(
    "--circuit",
    "circuit_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Steer the replies with this circuit (/m changes the multiplier, /off turns it off).",
)
@click.option(
    "--multiplier",
    "-m",
    type=float,
    default=None,
    help="The circuit's multiplier to start with (default: the circuit's default, 0).",
)
@click.option("--max-new-tokens", type=int, default=256, show_default=True)
@click.option(
    "--temperature",
    type=float,
    default=0.0,
    show_default=True,
    help="0 decodes greedily; above 0 samples at this temperature.",
)
@click.option(
    "--system",
    default=None,
    metavar="TEXT",
    callback=check_system,
    help="A system turn before the chat.",
)
@template_vars_option
@settings_command(ChatSettings)
def chat_command(settings: ChatSettings) -> None:
    """Talk to MODEL, steered by --circuit; /help inside lists the commands.

    Replies stream as they are generated; Ctrl-C stops a reply, Ctrl-D or /quit leaves.
    """
    from neurosteer.methods.circuit import Circuit
    from neurosteer.workflows.chat_session import ChatSession

    if settings.multiplier is not None and settings.circuit_path is None:
        raise InputError("-m sets the circuit's multiplier; give --circuit too")
    circuit = Circuit.load(settings.circuit_path) if settings.circuit_path else None
    model, tokenizer, layout = load(settings.loading, circuit)
    out = sys.stdout
    session = ChatSession(
        model,
        tokenizer,
        out,
        circuit=circuit,
        circuit_name=None if circuit is None else str(settings.circuit_path),
        multiplier=settings.multiplier,
        layout=layout if circuit is not None else None,
        system=settings.system,
        template_vars=settings.template_vars,
        max_new_tokens=settings.max_new_tokens,
        temperature=settings.temperature,
        model_name=str(settings.loading.model),
    )
    _tolerate_undecodable_input()
    interactive = sys.stdin.isatty()
    history = _History() if interactive else None
    out.write(session.greeting() + "\n")
    out.flush()
    try:
        while True:
            try:
                line = _read_line(session.prompt(), interactive, out)
                if line is None or not session.handle(line):
                    break
            except KeyboardInterrupt:  # at the prompt, or outside a reply's generation
                if not interactive:
                    raise
                out.write("\n")
            out.flush()
    finally:
        if history is not None:
            history.save()
