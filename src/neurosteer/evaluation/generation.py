"""Batched greedy generation of completions, under whatever is active.

It knows nothing of steering: hooks or baked weights already on the model apply as they are.
Prompts are rendered like discovery renders them, batched by length, and the completions come
back in the order of the prompts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.generation.streamers import BaseStreamer

from neurosteer.errors import InputError
from neurosteer.evaluation.greedy_loop import greedy_drop_finished, plain_greedy
from neurosteer.model.calls import model_generate
from neurosteer.model.runtime import input_device, pad_id, run_batches, runs_model
from neurosteer.model.stop_tokens import stop_token_ids
from neurosteer.prompts.render import Batch, context_limit, encode_for_model, new_token_budgets

logger = logging.getLogger(__name__)


# over 60 lines: a 13-line signature and 19-line docstring of public arguments; body 49 lines
@runs_model
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    chat_template: bool | None = None,
    system: str | None = None,
    template_vars: Mapping[str, Any] | None = None,
    progress: bool = False,
    desc: str = "generating",
    drop_finished: bool = True,
) -> list[str]:
    """Greedy completions (new text only, special tokens dropped), one per prompt.

    Each answer ends at the model's stop tokens (`neurosteer.model.stop_tokens.stop_token_ids`).
    `progress` shows a bar on stderr, labelled `desc`: prompts done, tokens generated and
    tokens per second, updated while a batch is generating.

    Prompts are batched by length; an out-of-memory error halves the batch and retries it,
    keeping the completions already made. `system` is a system turn and `template_vars` the chat
    template's variables (see `render_prompts`). `drop_finished` (the default) takes an answer
    out of its batch the step it ends (see `greedy_batch`); False runs every row until the
    batch's longest answer ends (the old path, kept to measure against).

    Context: a prompt that leaves no position for a new token in the model's context is an
    `InputError` (before any forward pass); a prompt whose answer would run past the context
    gets fewer than `max_new_tokens` (a warning is logged), batched only with prompts of its
    own length so that its answer does not depend on the batch.

    Example:
        >>> with steer(model, circuit, 0.0):
        ...     answers = generate(model, tokenizer, ["How do I pick a lock?"], max_new_tokens=40)
    """
    if max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}")
    if not prompts:
        return []
    token_ids = encode_for_model(
        model,
        tokenizer,
        prompts,
        chat_template=chat_template,
        system=system,
        template_vars=template_vars,
        reserve=1,
    )
    budgets = new_token_budgets(token_ids, max_new_tokens, context_limit(model, tokenizer))
    device, pad = input_device(model), pad_id(tokenizer)
    stop_ids = stop_token_ids(model, tokenizer)
    answers: list[str] = [""] * len(prompts)

    def attempt(batch: Batch) -> torch.Tensor:
        budget = budgets[int(batch.index[0])]
        return greedy_batch(
            model,
            batch,
            budget,
            pad,
            stop_ids=stop_ids,
            streamer=counter,
            drop_finished=drop_finished,
        )

    def finish(batch: Batch, output: torch.Tensor) -> None:
        new_tokens = output[:, batch.input_ids.shape[1] :].cpu()
        texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        for row, text in zip(batch.index.tolist(), texts, strict=True):
            answers[row] = text.strip()
        bar.update(len(texts))

    with (
        torch.inference_mode(),
        tqdm(
            total=len(prompts), desc=desc, unit="prompt", disable=not progress, leave=False
        ) as bar,
    ):
        counter = TokenRate(bar, pad) if progress else None
        run_batches(
            token_ids,
            attempt,
            finish,
            batch_size=batch_size,
            pad_id=pad,
            device=device,
            budgets=budgets,
            what="generating",
        )
    return answers


@runs_model
def greedy_batch(
    model: PreTrainedModel,
    batch: Batch,
    max_new_tokens: int,
    pad_id: int,
    *,
    stop_ids: Sequence[int] | None = None,
    streamer: BaseStreamer | None = None,
    drop_finished: bool = True,
) -> torch.Tensor:
    """[batch, seq + t] int64: a left-padded batch of prompts followed by the model's greedy
    continuation, on the model's input device. t <= `max_new_tokens`; a row ends at its first
    token of `stop_ids` (None or empty: the generation config's eos), then is padded with
    `pad_id`. `streamer` gets the prompt ids, then each step's new tokens (e.g. a `TokenRate`).

    With `drop_finished` (and a model whose greedy answer is a plain argmax, `plain_greedy`) a
    row leaves the batch the step it ends (`greedy_drop_finished`), with the same tokens;
    otherwise `model.generate` runs every row until the longest answer ends."""
    if drop_finished and plain_greedy(model):
        ends = list(stop_ids) if stop_ids else _config_eos(model)
        return greedy_drop_finished(model, batch, max_new_tokens, pad_id, ends, streamer=streamer)
    device = input_device(model)
    stops = {"eos_token_id": list(stop_ids)} if stop_ids else {}
    return model_generate(
        model,
        input_ids=batch.input_ids.to(device),
        attention_mask=batch.attention_mask.to(device),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=pad_id,
        streamer=streamer,
        **stops,
    )


def _config_eos(model: PreTrainedModel) -> list[int]:
    """The generation config's eos ids (an int, a list or None) as a list."""
    eos = model.generation_config.eos_token_id
    if eos is None:
        return []
    return [int(eos)] if isinstance(eos, int) else [int(i) for i in eos]


class TokenRate(BaseStreamer):
    """Shows the tokens generated so far and tokens per second on a tqdm bar's postfix.

    `greedy_batch` calls `put` with the prompt ids once per batch, then with each step's
    new tokens [rows] (rows already finished carry `pad_id`, which is not counted, or are
    left out). The
    postfix is redrawn at most every `interval` seconds.
    """

    def __init__(self, bar: tqdm, pad_id: int, interval: float = 0.5) -> None:
        self.bar, self.pad_id, self.interval = bar, pad_id, interval
        self.tokens = 0
        self._start = time.monotonic()
        self._shown = 0.0
        self._prompt_next = True

    def put(self, value: torch.Tensor) -> None:
        if self._prompt_next:  # the prompt ids, handed over first by every generate call
            self._prompt_next = False
            return
        self.tokens += int((value != self.pad_id).sum())
        now = time.monotonic()
        if now - self._shown >= self.interval:
            self._shown = now
            self.bar.set_postfix_str(self.text(now), refresh=True)

    def end(self) -> None:
        self._prompt_next = True
        self.bar.set_postfix_str(self.text(time.monotonic()), refresh=True)

    def text(self, now: float) -> str:
        """e.g. '412 tokens, 11.8 tok/s'."""
        rate = self.tokens / max(now - self._start, 1e-9)
        return f"{self.tokens} tokens, {rate:.1f} tok/s"
