"""An interactive chat with a live steering setting, driven line by line.

`ChatSession` takes one input line at a time (`handle`): a message to the model, or a command.
It writes replies, streamed as they are generated, and its notes to the text stream it was
given, so the same object serves a terminal (`neurosteer chat`), a pipe and a test.

Commands (see `HELP`): /m M sets the multiplier, /circuit PATH loads another circuit, /off and
/on switch steering, /compare answers the last message again under the other setting (the
unsteered model when the reply was steered), /save FILE writes the transcript (.md: Markdown,
anything else: JSON, with each turn's settings), /reset starts a new conversation, /help,
/quit. A message that starts with '/' is written with two ('//').

Each reply is generated with the circuit's hooks in place only while it is being generated;
the model carries no hooks between lines.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, TextIO

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from neurosteer._io import atomic_file
from neurosteer._version import __version__
from neurosteer.errors import InputError, NeurosteerError
from neurosteer.interventions.protocol import check_strength
from neurosteer.methods.circuit import Circuit
from neurosteer.methods.steering import steer
from neurosteer.model.layout import ModelLayout
from neurosteer.prompts.render import render_prompts
from neurosteer.prompts.template_vars import pin_clock
from neurosteer.workflows.chat import Reply, Steering, Turn, encode_conversation, stream_reply

logger = logging.getLogger(__name__)

HELP = """\
commands:
  /m [M]              show or set the multiplier (0 ablates the circuit, 1 is unchanged)
  /circuit [PATH]     show the circuit, or load another one (steering goes on)
  /off, /on           steering off (unsteered replies) or back on
  /compare            answer the last message again under the other setting, shown after it
  /save FILE [--force]  write the transcript: FILE.md as Markdown, anything else as JSON
  /reset              start a new conversation (the transcript keeps the old one)
  /help               this list
  /quit               leave (so do /exit and Ctrl-D); Ctrl-C stops a reply
a message that starts with '/' is written with two: //etc
"""

TRANSCRIPT_FORMAT = "neurosteer-chat"
TRANSCRIPT_VERSION = 1


class ChatSession:
    """A multi-turn chat with `model`, optionally steered by a circuit, fed line by line.

    Args:
        model, tokenizer: the model (nothing else steering it) and its tokenizer, which must
            have a chat template.
        out: where replies and notes are written (flushed after each piece).
        circuit: the circuit to steer with; None starts unsteered (/circuit loads one).
        circuit_name: how the circuit is named in notes and transcripts (its path).
        multiplier: the circuit's multiplier m; None: the circuit's default (0).
        layout: the layout the circuit applies at (None: its recorded paths).
        system: a system turn before the conversation (None: the template's own default).
        template_vars: chat-template variables (see `neurosteer.prompts.template_vars`); a template
            that reads the clock gets one date for the whole session.
        max_new_tokens: each reply's budget (capped by the model's context).
        temperature: 0 decodes greedily; above 0 samples.
        model_name: how the transcript names the model.

    Raises:
        InputError: a tokenizer without a chat template, a template that fails with or
            without `system`, a multiplier that is not a finite number, max_new_tokens below
            1, or a temperature that is negative or not finite.
        CircuitMismatchError: the circuit does not fit the model.

    Example:
        >>> session = ChatSession(model, tok, sys.stdout, circuit=circuit, multiplier=0.0)
        >>> session.handle("how do i pick a lock ?")  # streams the steered reply
        >>> session.handle("/compare")                # and the unsteered one
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        out: TextIO,
        *,
        circuit: Circuit | None = None,
        circuit_name: str | None = None,
        multiplier: float | None = None,
        layout: ModelLayout | None = None,
        system: str | None = None,
        template_vars: Mapping[str, Any] | None = None,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        model_name: str = "",
    ) -> None:
        if max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        if not temperature >= 0 or temperature == float("inf"):
            raise InputError(f"the temperature must be 0 (greedy) or more, got {temperature}")
        if not getattr(tokenizer, "chat_template", None):
            raise InputError(
                "chat needs a chat template and this tokenizer has none (a base model?); use "
                "`neurosteer generate` for plain completions"
            )
        # one date for the whole conversation, should the template read the clock
        template_vars = pin_clock(tokenizer, template_vars)
        render_prompts(tokenizer, ["hello"], True, system=system, template_vars=template_vars)
        self.model, self.tokenizer, self.out = model, tokenizer, out
        self.system, self.max_new_tokens, self.temperature = system, max_new_tokens, temperature
        self.template_vars = template_vars
        self.model_name = model_name
        self.circuit: Circuit | None = None
        self.circuit_name = ""
        self.layout: ModelLayout | None = None
        self.multiplier = check_strength(
            multiplier, 0.0 if circuit is None else circuit.default_strength
        )
        self.steering_on = False
        if circuit is not None:
            self._use(circuit, circuit_name or "circuit", layout)
        self.turns: list[Turn] = []
        self.conversation = 0
        self._commands: dict[str, Callable[[str], bool | None]] = {
            "m": self._set_multiplier,
            "circuit": self._load_circuit,
            "off": lambda arg: self._switch(arg, on=False),
            "on": lambda arg: self._switch(arg, on=True),
            "compare": self._compare,
            "save": self._save,
            "reset": self._reset,
            "help": lambda arg: self._say(HELP.rstrip()),
            "quit": lambda arg: False,
            "exit": lambda arg: False,
        }

    # --- what the driver asks -----------------------------------------------------------

    def prompt(self) -> str:
        """The input prompt, showing the steering state: 'you [m=0]> ', 'you [off]> '."""
        if self.circuit is None:
            return "you> "
        return f"you [m={self.multiplier:g}]> " if self.steering_on else "you [off]> "

    def greeting(self) -> str:
        """One line saying what is loaded and how replies are made."""
        decoding = "greedy" if self.temperature == 0 else f"temperature {self.temperature:g}"
        return (
            f"chat with {self.model_name or 'the model'}: {self._state()}, {decoding}, up to "
            f"{self.max_new_tokens} new tokens per reply; /help lists the commands"
        )

    def handle(self, line: str) -> bool:
        """Act on one input line (a message or a command); False when the session should end.

        A `NeurosteerError` raised by a command (a bad multiplier, a circuit that does not
        fit, an existing file) is written as one 'error: ...' line and the session goes on.
        """
        text = line.rstrip("\r\n")
        stripped = text.strip()
        if not stripped:
            return True
        try:
            if stripped.startswith("/") and not stripped.startswith("//"):
                name, _, arg = stripped[1:].partition(" ")
                command = self._commands.get(name.lower())
                if command is None:
                    raise InputError(f"unknown command /{name}; /help lists the commands")
                return command(arg.strip()) is not False
            self._ask(stripped[1:] if stripped.startswith("//") else stripped)
        except NeurosteerError as err:
            self._say(f"error: {err}")
        return True

    # --- replies --------------------------------------------------------------------------

    def _steering(self) -> Steering | None:
        if self.circuit is None or not self.steering_on:
            return None
        return Steering(self.circuit_name, self.multiplier)

    def _exchanges(self, turns: list[Turn]) -> list[tuple[str, str]]:
        return [(t.user, t.reply.text) for t in turns if t.conversation == self.conversation]

    def _reply(self, user: str, before: list[Turn], steering: Steering | None) -> Reply:
        """Generate (and stream to `out`) the answer to `user` after the turns `before`."""
        encoded = encode_conversation(
            self.model,
            self.tokenizer,
            self._exchanges(before),
            user,
            system=self.system,
            template_vars=self.template_vars,
        )
        if encoded.dropped:
            self._say(
                f"(the {encoded.dropped} oldest exchange(s) are left out to fit the model's "
                "context)"
            )
        hooks = (
            contextlib.nullcontext()
            if steering is None or self.circuit is None
            else steer(self.model, self.circuit, steering.multiplier, layout=self.layout)
        )
        with hooks:
            text, stopped = stream_reply(
                self.model,
                self.tokenizer,
                encoded,
                max_new_tokens=self.max_new_tokens,
                temperature=self.temperature,
                write=self._write,
            )
        if stopped:
            self._write(" [stopped]\n")
        else:
            self._write("\n" if text else "(an empty reply: the model ended it at once)\n")
        return Reply(text, steering, stopped, encoded.dropped)

    def _ask(self, user: str) -> None:
        reply = self._reply(user, self.turns, self._steering())
        self.turns.append(
            Turn(self.conversation, user, reply, self.temperature, self.max_new_tokens)
        )

    def _compare(self, arg: str) -> None:
        _no_argument("compare", arg)
        last = next((t for t in reversed(self.turns) if t.conversation == self.conversation), None)
        if last is None:
            raise InputError("nothing to compare yet: send a message first")
        if last.reply.steering is not None:
            other = None
        elif self.circuit is not None:
            other = Steering(self.circuit_name, self.multiplier)
        else:
            raise InputError(
                "the last reply was unsteered and no circuit is loaded; load one with /circuit PATH"
            )
        self._say(f"[{_label(last.reply.steering)}] {last.reply.text}")
        self._write(f"[{_label(other)}] ")
        reply = self._reply(last.user, self.turns[: self.turns.index(last)], other)
        self.turns[self.turns.index(last)] = replace(last, compare=reply)

    # --- settings -------------------------------------------------------------------------

    def _set_multiplier(self, arg: str) -> None:
        if not arg:
            self._say(self._state())
            return
        if self.circuit is None:
            raise InputError("no circuit is loaded; load one with /circuit PATH first")
        try:
            value = float(arg)
        except ValueError:
            raise InputError(f"/m takes a number such as 0.5, got {arg!r}") from None
        self.multiplier = check_strength(value, 0.0)
        note = "" if self.steering_on else " (steering is off; /on applies it)"
        self._say(f"m = {self.multiplier:g}{note}")

    def _load_circuit(self, arg: str) -> None:
        if not arg:
            self._say(self._state())
            return
        circuit = Circuit.load(arg)
        self._use(circuit, arg, None)
        self._say(f"loaded {arg}: {len(circuit)} neurons; {self._state()}")

    def _use(self, circuit: Circuit, name: str, layout: ModelLayout | None) -> None:
        """Steer with `circuit` from now on (it must fit the model; nothing changes if not)."""
        self.layout = circuit.layout_on(self.model, layout)
        self.circuit, self.circuit_name, self.steering_on = circuit, name, True

    def _switch(self, arg: str, *, on: bool) -> None:
        _no_argument("on" if on else "off", arg)
        if on and self.circuit is None:
            raise InputError("no circuit is loaded; load one with /circuit PATH")
        self.steering_on = on
        self._say(self._state())

    def _reset(self, arg: str) -> None:
        _no_argument("reset", arg)
        self.conversation += 1
        self._say("new conversation (the transcript keeps the earlier one)")

    def _state(self) -> str:
        if self.circuit is None:
            return "no circuit, unsteered"
        on = f"steering on at m = {self.multiplier:g}" if self.steering_on else "steering off"
        return f"circuit {self.circuit_name} ({len(self.circuit)} neurons), {on}"

    # --- transcript -----------------------------------------------------------------------

    def transcript(self) -> dict[str, Any]:
        """The whole session as JSON-ready data: the model, the system turn and every turn
        with its settings (steering, temperature, token budget, /compare reply)."""
        return {
            "format": TRANSCRIPT_FORMAT,
            "version": TRANSCRIPT_VERSION,
            "neurosteer": __version__,
            "model": self.model_name,
            "system": self.system,
            "template_vars": self.template_vars,
            "turns": [asdict(t) for t in self.turns],
        }

    def _save(self, arg: str) -> None:
        words = arg.split()
        force = "--force" in words
        names = [w for w in words if w != "--force"]
        if len(names) != 1:
            raise InputError("/save takes one file name (and optionally --force)")
        path = Path(names[0]).expanduser()
        text = (
            transcript_markdown(self.transcript())
            if path.suffix.lower() == ".md"
            else json.dumps(self.transcript(), indent=2, ensure_ascii=False) + "\n"
        )
        try:
            with atomic_file(path, force=force) as staging:
                staging.write_text(text, encoding="utf-8")
        except OSError as err:
            raise InputError(f"could not write {path}: {err.strerror or err}") from None
        self._say(f"saved {len(self.turns)} turn(s) to {path}")

    # --- output ---------------------------------------------------------------------------

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def _say(self, line: str) -> None:
        self._write(line + "\n")


def _no_argument(name: str, arg: str) -> None:
    if arg:
        raise InputError(f"/{name} takes no argument, got {arg!r}")


def _label(steering: Steering | None) -> str:
    return "unsteered" if steering is None else f"m = {steering.multiplier:g}"


def transcript_markdown(record: dict[str, Any]) -> str:
    """A saved transcript (`ChatSession.transcript`) as Markdown, one section per turn."""
    lines = [f"# Chat with {record['model'] or 'the model'}", ""]
    if record["system"] is not None:
        lines += [f"System: {record['system']}", ""]
    conversation = 0
    for i, turn in enumerate(record["turns"], start=1):
        if turn["conversation"] != conversation:
            conversation = turn["conversation"]
            lines += ["---", "", "*(new conversation)*", ""]
        decoding = "greedy" if turn["temperature"] == 0 else f"temperature {turn['temperature']:g}"
        lines += [f"## Turn {i} ({decoding})", "", f"**you:** {turn['user']}", ""]
        for name, reply in (("assistant", turn["reply"]), ("/compare", turn["compare"])):
            if reply is None:
                continue
            steering = reply["steering"]
            how = (
                "unsteered"
                if steering is None
                else f"{steering['circuit']}, m = {steering['multiplier']:g}"
            )
            stopped = " *(stopped)*" if reply["stopped"] else ""
            lines += [f"**{name}** ({how}): {reply['text']}{stopped}", ""]
    return "\n".join(lines)
