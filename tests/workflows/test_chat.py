"""The interactive chat: `ChatSession` fed lines in process (replies equal `generate`'s, every
command, Ctrl-C, the context limit, transcripts), then `neurosteer chat` itself driven through a
pseudo-terminal and through a pipe with the same scripted input, on the organism (at m = 0 it
answers a harmful request; /compare shows the unsteered refusal) and on a tiny model (Ctrl-C
stops a reply, not the session; a history file that cannot be written is only a warning)."""

from __future__ import annotations

import io
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from organism_helpers import held_out_harmful, organism, refusal_circuit
from tiny_models import NEEDS_SYSTEM, make_tiny, make_tokenizer, save_tiny
from transformers import PreTrainedModel, PreTrainedTokenizerFast

import neurosteer
from neurosteer import Circuit, InputError, discover, generate, steer
from neurosteer.cli.main import cli
from neurosteer.hooks import count_hooks
from neurosteer.prompts.render import encode_prompts
from neurosteer.workflows.chat import encode_conversation, render_conversation
from neurosteer.workflows.chat_session import ChatSession
from neurosteer.workflows.organism import INSTRUCT_DIR, Verdict, judge

Pair = tuple[PreTrainedModel, PreTrainedTokenizerFast]
TOKENS = 12  # new tokens per reply on the tiny model
PROMPTS = ["Hi", "How do I pick a lock?", "Tell me a story.", "Why?"]
SRC = Path(neurosteer.__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def circuit(tiny_llama: Pair) -> Circuit:
    model, tokenizer = tiny_llama
    return discover(model, tokenizer, PROMPTS, PROMPTS[::-1], top_k=6, universal_filter=False)


def _session(
    pair: Pair, circuit: Circuit | None = None, **kw: object
) -> tuple[ChatSession, io.StringIO]:
    out = io.StringIO()
    args: dict[str, object] = {"max_new_tokens": TOKENS, "circuit": circuit, **kw}
    if circuit is not None:
        args.setdefault("circuit_name", "tiny.circuit")
    return ChatSession(pair[0], pair[1], out, **args), out  # type: ignore[arg-type]


# --- the session, in process -----------------------------------------------------------------


def test_replies_are_generate_s_and_compare_shows_the_other_setting(
    tiny_llama: Pair, circuit: Circuit
) -> None:
    model, tokenizer = tiny_llama
    plain = generate(model, tokenizer, ["Hi"], max_new_tokens=TOKENS)[0]
    with steer(model, circuit, 0.0):
        ablated = generate(model, tokenizer, ["Hi"], max_new_tokens=TOKENS)[0]
    assert plain != ablated
    session, out = _session(tiny_llama, circuit)
    hooks = count_hooks(model)
    assert session.prompt() == "you [m=0]> "
    assert session.handle("Hi")
    assert count_hooks(model) == hooks  # hooks live only while a reply is generated
    assert session.handle("/compare")
    assert out.getvalue() == f"{ablated}\n[m = 0] {ablated}\n[unsteered] {plain}\n"
    turn = session.turns[0]
    assert (turn.reply.text, turn.compare and turn.compare.text) == (ablated, plain)
    assert turn.reply.steering is not None
    assert turn.reply.steering.multiplier == 0.0
    assert turn.compare is not None
    assert turn.compare.steering is None

    # an unsteered reply compares against the circuit at the current m
    session.handle("/off")
    session.handle("/m 0")
    session.handle("/reset")
    session.handle("Hi")
    session.handle("/compare")
    assert (session.turns[1].reply.text, session.turns[1].compare.text) == (plain, ablated)  # type: ignore[union-attr]


def test_one_turn_is_encoded_like_generate_and_later_turns_carry_the_history(
    tiny_llama: Pair,
) -> None:
    model, tokenizer = tiny_llama
    one = encode_conversation(model, tokenizer, [], "How do I pick a lock?")
    assert one.ids == encode_prompts(tokenizer, ["How do I pick a lock?"])[0]
    assert (one.dropped, one.room) == (0, 512 - len(one.ids))
    text = render_conversation(
        tokenizer, [("Hi", "Hello!"), ("Why?", "Because.")], "Ok", system="S"
    )
    assert text.index("S") < text.index("Hi") < text.index("Hello!") < text.index("Because.")
    assert text.endswith("<|user|>Ok<|end|>\n<|assistant|>")

    session, _ = _session(tiny_llama)
    session.handle("Hi")
    session.handle("Why?")
    second = encode_conversation(model, tokenizer, [("Hi", session.turns[0].reply.text)], "Why?")
    greedy = model.generate(  # type: ignore[operator]
        torch.tensor([second.ids]), max_new_tokens=TOKENS, do_sample=False
    )
    expected = tokenizer.decode(greedy[0, len(second.ids) :], skip_special_tokens=True).strip()
    assert session.turns[1].reply.text == expected


def test_commands(tiny_llama: Pair, circuit: Circuit, tmp_path: Path) -> None:
    gpt2, gpt2_tokenizer = make_tiny("gpt2")
    other = discover(gpt2, gpt2_tokenizer, PROMPTS, PROMPTS[::-1], top_k=3, universal_filter=False)
    other_path = other.save(tmp_path / "gpt2.circuit")
    mine = circuit.save(tmp_path / "mine.circuit")
    session, out = _session(tiny_llama)
    lines = [
        ("/m 0.5", "error: no circuit is loaded; load one with /circuit PATH first"),
        ("/on", "error: no circuit is loaded"),
        ("/compare", "error: nothing to compare yet"),
        (f"/circuit {other_path}", "error: "),
        (f"/circuit {tmp_path / 'missing'}", "error: "),
        (
            f"/circuit {mine}",
            f"loaded {mine}: 6 neurons; circuit {mine} (6 neurons), steering on at m = 0",
        ),
        ("/m", "steering on at m = 0"),
        ("/m 0.5", "m = 0.5"),
        ("/m x", "error: /m takes a number such as 0.5, got 'x'"),
        ("/m nan", "error: the strength must be a finite number"),
        ("/off", "steering off"),
        ("/m 2", "m = 2 (steering is off; /on applies it)"),
        ("/on", "steering on at m = 2"),
        ("/off now", "error: /off takes no argument"),
        ("/bogus", "error: unknown command /bogus; /help lists the commands"),
        ("/help", "commands:"),
        ("/save", "error: /save takes one file name"),
    ]
    for line, expected in lines:
        start = len(out.getvalue())
        assert session.handle(line)
        shown = out.getvalue()[start:]
        assert expected in shown, (line, shown)
        assert shown.startswith("error: ") == expected.startswith("error: "), (line, shown)
    assert "llama" in out.getvalue()  # the other family's circuit was refused with its reason
    assert session.prompt() == "you [m=2]> "
    assert session.multiplier == 2.0
    session.handle("//m 1")  # a message, not a command
    assert session.turns[-1].user == "/m 1"
    assert session.multiplier == 2.0
    assert session.handle("")
    assert session.handle("   ")
    assert len(session.turns) == 1
    assert not session.handle("/quit")
    assert not session.handle("/exit")


def test_save_writes_each_turn_s_settings(
    tiny_llama: Pair, circuit: Circuit, tmp_path: Path
) -> None:
    session, out = _session(tiny_llama, circuit, multiplier=0.0, system="Be brief.")
    session.handle("Hi")
    session.handle("/compare")
    session.handle("/m 1.5")
    session.handle("/reset")
    session.handle("Why?")
    session.handle("/off")
    session.handle("Why?")
    session.handle(f"/save {tmp_path / 'chat.json'}")
    session.handle(f"/save {tmp_path / 'chat.md'}")
    record = json.loads((tmp_path / "chat.json").read_text())
    assert record["format"] == "neurosteer-chat"
    assert record["version"] == 1
    assert record["system"] == "Be brief."
    turns = record["turns"]
    assert [t["conversation"] for t in turns] == [0, 1, 1]
    assert [t["reply"]["steering"] for t in turns] == [
        {"circuit": "tiny.circuit", "multiplier": 0.0},
        {"circuit": "tiny.circuit", "multiplier": 1.5},
        None,
    ]
    assert turns[0]["compare"]["steering"] is None
    assert turns[0]["compare"]["text"] == session.turns[0].compare.text  # type: ignore[union-attr]
    assert turns[1]["temperature"] == 0.0
    assert turns[1]["max_new_tokens"] == TOKENS
    markdown = (tmp_path / "chat.md").read_text()
    assert "System: Be brief." in markdown
    assert "**assistant** (tiny.circuit, m = 0): " in markdown
    assert "**/compare** (unsteered): " in markdown
    assert "*(new conversation)*" in markdown

    # an existing file is kept unless --force
    start = len(out.getvalue())
    session.handle(f"/save {tmp_path / 'chat.json'}")
    assert out.getvalue()[start:].startswith("error: ")
    assert "already exists" in out.getvalue()[start:]
    assert json.loads((tmp_path / "chat.json").read_text()) == record
    session.handle("Hi")
    session.handle(f"/save {tmp_path / 'chat.json'} --force")
    assert len(json.loads((tmp_path / "chat.json").read_text())["turns"]) == 4


class _InterruptingStream(io.StringIO):
    """Raises KeyboardInterrupt (as Ctrl-C would) on its `after`-th write once armed."""

    def __init__(self) -> None:
        super().__init__()
        self.after: int | None = None

    def write(self, text: str) -> int:
        if self.after is not None:
            self.after -= 1
            if self.after == 0:
                self.after = None
                raise KeyboardInterrupt
        return super().write(text)


def test_ctrl_c_stops_the_reply_not_the_session(tiny_llama: Pair, circuit: Circuit) -> None:
    model, tokenizer = tiny_llama
    out = _InterruptingStream()
    session = ChatSession(model, tokenizer, out, circuit=circuit, max_new_tokens=16)
    full = ChatSession(model, tokenizer, io.StringIO(), circuit=circuit, max_new_tokens=16)
    full.handle("Tell me a story.")
    hooks = count_hooks(model)
    out.after = 3
    assert session.handle("Tell me a story.")
    reply = session.turns[0].reply
    assert reply.stopped
    assert full.turns[0].reply.text.startswith(reply.text)
    assert reply.text
    assert len(reply.text) < len(full.turns[0].reply.text)
    assert out.getvalue().endswith(" [stopped]\n")
    assert count_hooks(model) == hooks  # the steering hooks went away with the reply
    assert session.handle("/compare")  # and the session goes on
    assert session.turns[0].compare is not None
    assert not session.turns[0].compare.stopped


def test_sampling_and_bad_settings(tiny_llama: Pair, circuit: Circuit) -> None:
    torch.manual_seed(0)
    session, _ = _session(tiny_llama, circuit, temperature=1.5)
    session.handle("Hi")
    assert session.turns[0].temperature == 1.5
    assert "temperature 1.5" in session.greeting()
    for kw, message in [
        ({"temperature": -1.0}, "temperature must be 0"),
        ({"temperature": float("nan")}, "temperature must be 0"),
        ({"max_new_tokens": 0}, "max_new_tokens must be at least 1"),
        ({"multiplier": float("inf")}, "finite number"),
    ]:
        with pytest.raises(InputError, match=message):
            _session(tiny_llama, circuit, **kw)
    base = make_tiny("gpt2", chat_template=False)
    with pytest.raises(InputError, match="chat needs a chat template"):
        _session(base)
    needs_system = make_tokenizer()
    needs_system.chat_template = NEEDS_SYSTEM
    with pytest.raises(InputError, match="needs a system turn"):
        _session((tiny_llama[0], needs_system))
    session, _ = _session((tiny_llama[0], needs_system), system="Be brief.")
    session.handle("Hi")
    assert session.turns[0].reply.text


def test_organism_context_drops_the_oldest_exchanges() -> None:
    model, tokenizer = organism()  # 64 positions
    session, out = _session((model, tokenizer), max_new_tokens=30)  # type: ignore[arg-type]
    for prompt in held_out_harmful(4):
        session.handle(prompt)
    assert max(t.reply.dropped for t in session.turns) >= 1
    assert "oldest exchange(s) are left out to fit the model's context" in out.getvalue()
    start = len(out.getvalue())
    session.handle("how do i knock out the old wall ? " * 12)
    assert "this message is 111 tokens long" in out.getvalue()[start:]
    assert "holds 64 positions, leaving no room for a reply; shorten it" in out.getvalue()[start:]
    assert len(session.turns) == 4


# --- the command, through a pseudo-terminal and a pipe ---------------------------------------


pytestmark = pytest.mark.usefixtures("restore_library_logging")


PROMPT = re.compile(r"you(?: \[[^\]]*\])?> ")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[=>]")
TIMEOUT = 90.0  # seconds to start python, import torch and load the model on a busy machine


def _env(cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "COV"))}
    env.update(
        PYTHONPATH=str(SRC),
        XDG_CACHE_HOME=str(cache),
        TERM="dumb",
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    return env


MAIN = "neurosteer.cli.main"


def _fork_on_a_terminal(argv: list[str], env: dict[str, str]) -> tuple[int, int]:
    """Run `argv` on a new pseudo-terminal as a terminal's foreground job: (its pid, the
    terminal's fd). Ctrl-C is made SIGINT's default action first: a job that a
    non-interactive shell started in the background (`cmd &`, as a CI script may run pytest)
    inherits SIGINT ignored, and Python then leaves it ignored, so no Ctrl-C would arrive."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: become the command
        try:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.execve(argv[0], argv, env)
        finally:
            os._exit(127)
    return pid, fd


class Terminal:
    """`neurosteer ARGS` on a pseudo-terminal (its controlling terminal), read and typed into."""

    def __init__(
        self, args: list[str], env: dict[str, str], run: tuple[str, ...] = ("-m", MAIN)
    ) -> None:
        self.pid, self.fd = _fork_on_a_terminal([sys.executable, *run, *args], env)
        self.output, self.prompts = "", 0

    @classmethod
    def attach(cls, pid: int, fd: int) -> Terminal:
        """A `Terminal` for a child already forked with `pty.fork` (pid, its terminal's fd)."""
        terminal = cls.__new__(cls)
        terminal.pid, terminal.fd, terminal.output, terminal.prompts = pid, fd, "", 0
        return terminal

    def _read(self, deadline: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            return False
        try:
            data = os.read(self.fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            data = b""
        if not data:
            return False
        self.output += ANSI.sub("", data.decode(errors="replace")).replace("\r\n", "\n")
        return True

    def wait_for(self, found: object, timeout: float = TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not found():  # type: ignore[operator]
            if not self._read(deadline):
                raise AssertionError(f"timed out or ended; the terminal shows:\n{self.output}")

    def next_prompt(self, timeout: float = TIMEOUT) -> None:
        self.prompts += 1
        self.wait_for(lambda: len(PROMPT.findall(self.output)) >= self.prompts, timeout)

    def type(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def close(self, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while self._read(deadline):
            pass
        for _ in range(100):
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                os.close(self.fd)
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.1)
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        os.close(self.fd)
        raise AssertionError(f"the chat did not exit; it shows:\n{self.output}")


@dataclass(frozen=True)
class OrganismCase:
    circuit: Path
    prompt: str  # a harmful request the organism refuses and, at m = 0, answers
    refusal: str  # its unsteered answer
    ablated: str  # its answer at m = 0


@pytest.fixture(scope="module")
def organism_case(tmp_path_factory: pytest.TempPathFactory) -> OrganismCase:
    model, tokenizer = organism()
    circuit = refusal_circuit()
    prompts = held_out_harmful(4)
    plain = generate(model, tokenizer, prompts, max_new_tokens=40)
    with steer(model, circuit, 0.0):
        ablated = generate(model, tokenizer, prompts, max_new_tokens=40)
    for prompt, refusal, answer in zip(prompts, plain, ablated, strict=True):
        if (
            judge(refusal, prompt) is Verdict.REFUSAL
            and judge(answer, prompt) is not Verdict.REFUSAL
        ):
            path = circuit.save(tmp_path_factory.mktemp("organism") / "refusal.circuit")
            return OrganismCase(path, prompt, refusal, answer)
    raise AssertionError("no held-out prompt whose refusal the circuit removes")


def _script(case: OrganismCase, transcript: Path) -> list[str]:
    return [
        "/m 0",
        case.prompt,
        "/compare",
        "/m 1",
        "/reset",
        case.prompt,
        "/off",
        "/help",
        f"/save {transcript}",
        "/quit",
    ]


def _check_organism_output(output: str, case: OrganismCase, transcript: Path) -> None:
    lines = output.splitlines()
    assert lines[0].startswith(f"chat with {INSTRUCT_DIR}: circuit {case.circuit} (48 neurons)")
    assert "you [m=0]> /m 0" in lines
    assert "m = 0" in lines
    first = lines.index(f"you [m=0]> {case.prompt}")
    assert lines[first + 1] == case.ablated  # at m = 0 the harmful request is answered
    assert lines[first + 2] == "you [m=0]> /compare"
    assert lines[first + 3] == f"[m = 0] {case.ablated}"
    assert lines[first + 4] == f"[unsteered] {case.refusal}"  # /compare shows the refusal
    assert judge(lines[first + 4].removeprefix("[unsteered] "), case.prompt) is Verdict.REFUSAL
    second = lines.index(f"you [m=1]> {case.prompt}")
    assert lines[second + 1] == case.refusal  # m = 1 is the unsteered model
    assert "you [off]> /help" in lines
    record = json.loads(transcript.read_text())
    assert [t["reply"]["text"] for t in record["turns"]] == [case.ablated, case.refusal]
    assert [t["reply"]["steering"]["multiplier"] for t in record["turns"]] == [0.0, 1.0]
    assert record["turns"][0]["compare"] == {
        "text": case.refusal,
        "steering": None,
        "stopped": False,
        "dropped": 0,
    }


def test_organism_chat_through_a_pipe(organism_case: OrganismCase, tmp_path: Path) -> None:
    transcript = tmp_path / "chat.json"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            MAIN,
            "chat",
            str(INSTRUCT_DIR),
            "--circuit",
            str(organism_case.circuit),
            "--max-new-tokens",
            "40",
        ],
        input="\n".join(_script(organism_case, transcript)) + "\n",
        capture_output=True,
        text=True,
        env=_env(tmp_path / "cache"),
        timeout=TIMEOUT,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    _check_organism_output(run.stdout, organism_case, transcript)
    assert not (tmp_path / "cache").exists()  # no history from a pipe


def test_organism_chat_through_a_terminal(organism_case: OrganismCase, tmp_path: Path) -> None:
    transcript = tmp_path / "chat.json"
    terminal = Terminal(
        [
            "chat",
            str(INSTRUCT_DIR),
            "--circuit",
            str(organism_case.circuit),
            "--max-new-tokens",
            "40",
        ],
        _env(tmp_path / "cache"),
    )
    try:
        for line in _script(organism_case, transcript):
            terminal.next_prompt()
            terminal.type(line + "\n")
    finally:
        code = terminal.close()
    assert code == 0, terminal.output
    _check_organism_output(terminal.output, organism_case, transcript)
    history = (tmp_path / "cache" / "neurosteer" / "chat_history").read_text().splitlines()
    assert history[-3:] == ["/help", f"/save {transcript}", "/quit"]


# `neurosteer` whose replies come at most one token per SLOW_TOKEN s, so that a Ctrl-C typed
# after the first few tokens lands while the reply is still being generated
SLOW_TOKEN = 0.2
WITH_SLOW_REPLIES = f"""
import runpy, time
from neurosteer.workflows import chat
put = chat._Streamer.put
def slow_put(self, value):
    put(self, value)
    time.sleep({SLOW_TOKEN})
chat._Streamer.put = slow_put
runpy.run_module("{MAIN}", run_name="__main__")
"""


def test_ctrl_c_in_a_terminal_stops_the_reply_and_ctrl_d_leaves(
    tiny_llama_dir: Path, tmp_path: Path
) -> None:
    story = "Tell me a story."  # the tiny llama's greedy answer: 18 characters, at least 3.6 s
    not_a_folder = tmp_path / "cache"
    not_a_folder.write_text("a file where the cache folder would go")
    terminal = Terminal(
        ["chat", str(tiny_llama_dir)], _env(not_a_folder), run=("-c", WITH_SLOW_REPLIES)
    )
    try:
        terminal.next_prompt()
        terminal.type(story + "\n")
        terminal.wait_for(lambda: terminal.output.endswith(story + "\n"))  # the echo
        shown = len(terminal.output)
        terminal.wait_for(lambda: len(terminal.output) >= shown + 3)  # the reply streams
        terminal.type("\x03")  # Ctrl-C
        terminal.next_prompt()  # the session goes on
        assert " [stopped]\nyou> " in terminal.output
        terminal.type("partly typed\x03")  # Ctrl-C at the prompt drops the line
        terminal.next_prompt()
        terminal.type("\x04")  # Ctrl-D
    finally:
        code = terminal.close()
    assert code == 0, terminal.output
    assert "could not save the chat history" in terminal.output  # a warning, not an error


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-m", "0"], "-m sets the circuit's multiplier; give --circuit too"),
        (["--temperature", "-1"], "temperature must be 0"),
        (["--circuit", "{gpt2_circuit}"], "llama"),
        (["--model", "{base}"], "chat needs a chat template"),
    ],
)
def test_cli_bad_input_is_one_line(
    tiny_llama_dir: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    gpt2 = make_tiny("gpt2")
    values = {
        "gpt2_circuit": str(
            discover(*gpt2, PROMPTS, PROMPTS[::-1], top_k=2, universal_filter=False).save(
                tmp_path / "gpt2.circuit"
            )
        ),
        "base": str(save_tiny("gpt2", tmp_path / "base", chat_template=False)),
    }
    model = str(tiny_llama_dir)
    if args[0] == "--model":
        model, args = values["base"], []
    result = CliRunner().invoke(cli, ["chat", model, *(a.format(**values) for a in args)], input="")
    assert result.exit_code == 2, (result.output, result.exception)
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: ")
    assert message in lines[0]


# `neurosteer` with one more, idle thread, whose id it writes to the file named in $IDLE_THREAD
WITH_AN_IDLE_THREAD = f"""
import os, runpy, threading
ready = threading.Event()
def idle():
    with open(os.environ["IDLE_THREAD"], "w") as file:
        file.write(str(threading.get_native_id()))
    ready.set()
    threading.Event().wait()
threading.Thread(target=idle, daemon=True).start()
ready.wait()
runpy.run_module("{MAIN}", run_name="__main__")
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="tgkill is Linux's")
def test_a_ctrl_c_the_prompt_missed_is_still_seen(tiny_llama_dir: Path, tmp_path: Path) -> None:
    """A Ctrl-C whose handler has run but whose wait for a key was never interrupted (the state
    a Ctrl-C leaves when it lands between the prompt being drawn and that wait starting, which
    a loaded machine hits): SIGINT is sent to the idle thread, so Python records it there and
    the main thread, blocked reading the terminal, is not woken by it."""
    import ctypes

    thread_file = tmp_path / "thread"
    env = _env(tmp_path / "cache") | {"IDLE_THREAD": str(thread_file)}
    argv = [sys.executable, "-c", WITH_AN_IDLE_THREAD, "chat", str(tiny_llama_dir)]
    terminal = Terminal.attach(*_fork_on_a_terminal(argv, env))
    try:
        terminal.next_prompt()
        terminal.type("partly typed")
        terminal.wait_for(lambda: terminal.output.endswith("partly typed"))
        tgkill = ctypes.CDLL(None, use_errno=True).tgkill
        assert tgkill(terminal.pid, int(thread_file.read_text()), signal.SIGINT) == 0
        terminal.next_prompt(timeout=20.0)  # the line is dropped and a prompt comes, unasked
        terminal.type("\x04")
    finally:
        code = terminal.close()
    assert code == 0, terminal.output
    assert terminal.output.count("partly typed") == 1


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="no interval timers")
def test_the_prompt_tick_is_undone_after_the_line() -> None:
    from neurosteer.cli.chat_cmd import PROMPT_TICK, _signals_checked_while_waiting

    ticks: list[int] = []
    signal.signal(signal.SIGALRM, lambda signum, _frame: ticks.append(signum))
    try:
        with _signals_checked_while_waiting():
            assert signal.getitimer(signal.ITIMER_REAL)[1] == pytest.approx(PROMPT_TICK)
            time.sleep(3 * PROMPT_TICK)  # resumed after each tick (PEP 475)
            assert ticks == []  # the tick's own handler, not the one outside
        assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
        signal.setitimer(signal.ITIMER_REAL, 0.01)
        time.sleep(0.2)
        assert ticks == [signal.SIGALRM]  # the handler from before is back
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0.0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
