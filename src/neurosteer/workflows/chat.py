"""One chat reply at a time, rendered with the chat template and streamed.

`encode_conversation` renders the exchanges so far and the new user message as the model sees
them (the chat template with its generation prompt), leaving out the oldest exchanges when the
whole does not fit the model's context. `stream_reply` generates the answer and hands its text
to a callback piece by piece as the tokens come; Ctrl-C (`KeyboardInterrupt`) stops that reply
and keeps what was said so far. Whatever steers the model (hooks, baked weights) applies as it
is; `neurosteer.workflows.chat_session` decides that per reply.

The records of a conversation (`Steering`, `Reply`, `Turn`) are frozen dataclasses that
`chat_session` saves as JSON or Markdown.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.generation.streamers import BaseStreamer

from neurosteer.errors import InputError
from neurosteer.model.calls import model_generate
from neurosteer.model.runtime import input_device, pad_id, runs_model
from neurosteer.model.stop_tokens import stop_token_ids
from neurosteer.prompts.render import context_limit, tokenize_rendered
from neurosteer.prompts.template_vars import pin_clock, template_kwargs
from neurosteer.prompts.text_check import check_text

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Steering:
    """How a reply was steered: the circuit (as named when loaded) at multiplier m."""

    circuit: str
    multiplier: float


@dataclass(frozen=True)
class Reply:
    """One generated answer.

    Attributes:
        text: the answer, without special tokens or surrounding whitespace.
        steering: the steering it was generated under; None for the unsteered model.
        stopped: Ctrl-C ended it early (`text` is what came before).
        dropped: earlier exchanges left out of its context to fit the model's context length.
    """

    text: str
    steering: Steering | None
    stopped: bool = False
    dropped: int = 0


@dataclass(frozen=True)
class Turn:
    """A user message, the reply, and (after /compare) the reply under the other setting.

    Attributes:
        conversation: which conversation it belongs to (each /reset starts the next one).
        user, reply, compare: the message and the replies.
        temperature: 0 for greedy decoding.
        max_new_tokens: the reply's token budget.
    """

    conversation: int
    user: str
    reply: Reply
    temperature: float
    max_new_tokens: int
    compare: Reply | None = None


@dataclass(frozen=True)
class Encoded:
    """A conversation ready for `stream_reply`: its token ids, how many of the oldest
    exchanges were left out to fit, and how many new tokens still fit (None: no known limit)."""

    ids: list[int]
    dropped: int
    room: int | None


def render_conversation(
    tokenizer: PreTrainedTokenizerBase,
    exchanges: Sequence[tuple[str, str]],
    user: str,
    *,
    system: str | None = None,
    template_vars: Mapping[str, Any] | None = None,
) -> str:
    """The conversation as text: an optional system turn, each (user, assistant) exchange, the
    new user message and the template's generation prompt.

    Raises:
        InputError: the tokenizer has no chat template, or the template fails on the turns.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise InputError(
            "chat needs a chat template and this tokenizer has none (a base model?); use "
            "`neurosteer generate` for plain completions"
        )
    from jinja2 import TemplateError  # the engine of transformers' chat templates

    check_text(user, "the message")
    if system is not None:
        check_text(system, "the system text (--system, system=)")
    for asked, answered in exchanges:
        check_text(asked, "an earlier message")
        check_text(answered, "an earlier reply")
    messages = [] if system is None else [{"role": "system", "content": system}]
    for asked, answered in exchanges:
        messages += [{"role": "user", "content": asked}, {"role": "assistant", "content": answered}]
    messages.append({"role": "user", "content": user})
    kwargs = template_kwargs(tokenizer, pin_clock(tokenizer, template_vars))
    try:
        text = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, **kwargs
        )
    except TemplateError as err:
        hint = "; try without --system" if system is not None else ""
        raise InputError(f"the chat template fails on this conversation: {err}{hint}") from None
    return str(text)


def encode_conversation(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    exchanges: Sequence[tuple[str, str]],
    user: str,
    *,
    system: str | None = None,
    template_vars: Mapping[str, Any] | None = None,
) -> Encoded:
    """Token ids of the conversation (see `render_conversation`), leaving out the oldest
    exchanges until it and one new token fit the model's context.

    Raises:
        InputError: as `render_conversation`, or the new message alone does not fit.
    """
    limit = context_limit(model, tokenizer)
    for dropped in range(len(exchanges) + 1):
        rendered = render_conversation(
            tokenizer, exchanges[dropped:], user, system=system, template_vars=template_vars
        )
        ids = tokenize_rendered(tokenizer, [rendered], templated=True)[0]
        if limit is None or len(ids) + 1 <= limit:
            return Encoded(ids, dropped, None if limit is None else limit - len(ids))
    raise InputError(
        f"this message is {len(ids)} tokens long with the chat template and the model's "
        f"context holds {limit} positions, leaving no room for a reply; shorten it"
    )


class _Streamer(BaseStreamer):
    """Passes each new piece of the answer's text to `write` as tokens arrive.

    The text is decoded from all tokens so far (so multi-token characters and word joins come
    out right) and held back while it ends in an incomplete character.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, write: Callable[[str], None]) -> None:
        self.tokenizer = tokenizer
        self.write = write
        self.ids: list[int] = []
        self.text = ""
        self._shown = 0
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate() first hands over the prompt
            self._prompt_seen = True
            return
        self.ids += [int(i) for i in value.reshape(-1).tolist()]
        self._show(final=False)

    def end(self) -> None:
        self._show(final=True)

    def _show(self, *, final: bool) -> None:
        text = str(self.tokenizer.decode(self.ids, skip_special_tokens=True)).lstrip()
        if text.endswith("\ufffd") and not final:
            return
        # a later token may respell earlier text (rare); what was shown stays, the rest follows
        new, self._shown = text[self._shown :], max(self._shown, len(text))
        self.text = text
        if new:
            self.write(new)


@runs_model
def stream_reply(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    encoded: Encoded,
    *,
    max_new_tokens: int,
    temperature: float,
    write: Callable[[str], None],
) -> tuple[str, bool]:
    """Generate the answer to `encoded`, handing its text to `write` piece by piece.

    Args:
        max_new_tokens: the budget (capped by `encoded.room`).
        temperature: 0 decodes greedily; above 0 samples at that temperature (with the
            model's own top-k / top-p settings).
        write: called with each new piece of text.

    Returns:
        (the answer without special tokens or surrounding whitespace, whether Ctrl-C stopped
        it early).
    """
    budget = max_new_tokens if encoded.room is None else min(max_new_tokens, encoded.room)
    device = input_device(model)
    ids = torch.tensor([encoded.ids], dtype=torch.long, device=device)
    sampling: dict[str, Any] = {"temperature": temperature} if temperature > 0 else {}
    stops = list(stop_token_ids(model, tokenizer))
    if stops:
        sampling["eos_token_id"] = stops
    streamer = _Streamer(tokenizer, write)
    try:
        with torch.inference_mode():
            model_generate(
                model,
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=budget,
                do_sample=temperature > 0,
                pad_token_id=pad_id(tokenizer),
                streamer=streamer,
                **sampling,
            )
    except KeyboardInterrupt:
        logger.info("reply stopped by the user after %d tokens", len(streamer.ids))
        return streamer.text.strip(), True
    return streamer.text.strip(), False
