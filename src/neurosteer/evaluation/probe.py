"""Next-token probabilities at the first answer position, with and without steering.

Each prompt is rendered and tokenized like `generate` does it (`encode_for_model`: the chat
template with its generation prompt, or the raw text for a model without one), the batch is
left-padded, and the model's distribution over the first answer token is read from the last
prompt position: unsteered always, then under the intervention at each strength asked for.

Chosen tokens are given as strings (" I", "Sure") and tokenized as they are, without special
tokens. A string that is several tokens is scored by its first token only (the probability that
the answer *starts* that way, an upper bound on the whole string's); `TokenChoice.n_tokens` and
the CLI say so. A string with a token outside the vocabulary (it encodes to the unknown token)
is an `InputError`.

    result = next_token_probs(model, tok, ["How do I pick a lock?"], intervention=circuit,
                              strengths=(0.0, 1.0), tokens=(" I", "Sure"))
    result.probs[0][0].chosen   # unsteered probabilities of " I" and "Sure" on the first prompt
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from neurosteer.errors import InputError
from neurosteer.evaluation.judges import Judge
from neurosteer.evaluation.refusal import JudgedAnswers
from neurosteer.hooks.positions import Positions
from neurosteer.interventions.protocol import check_strength
from neurosteer.methods.steering import Steerable, steer
from neurosteer.model.calls import model_forward
from neurosteer.model.layout import ModelLayout
from neurosteer.model.runtime import (
    forward_takes,
    input_device,
    model_inputs,
    pad_id,
    run_batches,
    runs_model,
)
from neurosteer.prompts.render import Batch, encode_for_model
from neurosteer.prompts.rendering import Rendering
from neurosteer.prompts.text_check import check_text


@dataclass(frozen=True)
class TokenChoice:
    """A token asked for by its text.

    Attributes:
        text: the string as given (" I").
        token_id: the id scored: the string's first token.
        token: that token as the tokenizer spells it ("ĠI", "▁I", "i").
        n_tokens: how many tokens the string encodes to; above 1 only the first is scored.
    """

    text: str
    token_id: int
    token: str
    n_tokens: int


@dataclass(frozen=True)
class TokenProb:
    """One token of a top list: its id, its decoded text and its probability (0..1)."""

    token_id: int
    text: str
    prob: float


@dataclass(frozen=True)
class SettingProbs:
    """The first-answer-token distribution of one prompt under one setting.

    Attributes:
        strength: the intervention's strength; None for the unsteered model.
        top: the most likely tokens, most likely first.
        chosen: the probability of each `NextTokenProbs.tokens` entry, in its order.
    """

    strength: float | None
    top: tuple[TokenProb, ...]
    chosen: tuple[float, ...]


@dataclass(frozen=True)
class NextTokenProbs:
    """What `next_token_probs` found.

    Attributes:
        prompts: the prompts, in input order.
        strengths: the settings, unsteered (None) first, then each strength asked for.
        tokens: the chosen tokens, as resolved.
        probs: [prompt][setting] distributions, in the order of `prompts` and `strengths`.
    """

    prompts: tuple[str, ...]
    strengths: tuple[float | None, ...]
    tokens: tuple[TokenChoice, ...]
    probs: tuple[tuple[SettingProbs, ...], ...]

    def chosen(self) -> torch.Tensor:
        """[prompts, settings, tokens] float64: the chosen tokens' probabilities."""
        return torch.tensor(
            [[list(s.chosen) for s in row] for row in self.probs], dtype=torch.float64
        ).reshape(len(self.prompts), len(self.strengths), len(self.tokens))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form: the tokens, then per prompt each setting's top and chosen."""
        return {
            "tokens": [
                {
                    "text": t.text,
                    "token_id": t.token_id,
                    "token": t.token,
                    "n_tokens": t.n_tokens,
                    "scored": "whole" if t.n_tokens == 1 else "first token only",
                }
                for t in self.tokens
            ],
            "prompts": [
                {
                    "prompt": str(prompt),
                    "settings": [
                        {
                            "strength": s.strength,
                            "unsteered": s.strength is None,
                            "top": [
                                {"token_id": t.token_id, "text": t.text, "prob": t.prob}
                                for t in s.top
                            ],
                            "chosen": {
                                c.text: p for c, p in zip(self.tokens, s.chosen, strict=True)
                            },
                        }
                        for s in row
                    ],
                }
                for prompt, row in zip(self.prompts, self.probs, strict=True)
            ],
        }


def resolve_tokens(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str | int]
) -> list[TokenChoice]:
    """Each string's first token (see the module docstring); an int is a token id, taken as
    it is (its text is its decoding).

    Raises:
        InputError: an empty string, one with a token outside the vocabulary, or an id outside
            the tokenizer's vocabulary.
    """
    choices = []
    unk = tokenizer.unk_token_id
    for text in texts:
        if isinstance(text, int):
            if not 0 <= text < len(tokenizer):
                raise InputError(f"token id {text} is outside the tokenizer's {len(tokenizer)} ids")
            choices.append(_token_by_id(tokenizer, text))
            continue
        if not text:
            raise InputError("a chosen token is empty; give its text, e.g. ' I' or 'Sure'")
        check_text(text, f"the token {text!r}")
        ids = [int(i) for i in tokenizer(text, add_special_tokens=False)["input_ids"]]
        if not ids:
            raise InputError(f"the token {text!r} encodes to no token at all; give another")
        if unk is not None and text != tokenizer.unk_token and unk in ids:
            raise InputError(
                f"the token {text!r} is not in this tokenizer's vocabulary (it encodes to "
                f"{tokenizer.unk_token}); give one the model knows"
            )
        token = str(tokenizer.convert_ids_to_tokens(ids[0]))
        choices.append(TokenChoice(text, ids[0], token, len(ids)))
    return choices


def _token_by_id(tokenizer: PreTrainedTokenizerBase, token_id: int) -> TokenChoice:
    token = str(tokenizer.convert_ids_to_tokens(token_id))
    return TokenChoice(str(tokenizer.decode([token_id])), token_id, token, 1)


# over 60 lines: a 16-line signature and 31-line docstring of public arguments; body 51 lines
@runs_model
def next_token_probs(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    intervention: Steerable | None = None,
    strengths: Sequence[float] | None = None,
    tokens: Sequence[str | int] = (),
    top: int = 10,
    system: str | None = None,
    template_vars: Mapping[str, Any] | None = None,
    chat_template: bool | None = None,
    batch_size: int = 8,
    positions: Positions = "all",
    layout: ModelLayout | None = None,
) -> NextTokenProbs:
    """The distribution of the first answer token, unsteered and under `intervention`.

    Args:
        model, tokenizer: the model (nothing else steering it) and its tokenizer.
        prompts: user messages, rendered like `generate` renders them (see `render_prompts`).
        intervention: a circuit, several circuits or any `Intervention`; None: unsteered only.
        strengths: the intervention's strengths to read (its own unit: the multiplier m for
            circuits); None: its default strength. Needs `intervention`.
        tokens: strings whose probabilities to report (only a string's first token is scored,
            see the module docstring), or token ids (`choose_tokens` gives them).
        top: how many of the most likely tokens to list per prompt and setting (0: none).
        system, template_vars, chat_template: how prompts are rendered (see
            `render_prompts`).
        batch_size: prompts per forward pass (halved on out-of-memory errors).
        positions, layout: passed to `steer` (the edit applies at every position by default).

    Returns:
        A `NextTokenProbs`; probabilities are float32 softmaxes of the last prompt position's
        logits (the first answer position), as Python floats.

    Raises:
        InputError: no prompts, a bare string instead of a list, strengths without an
            intervention, a non-finite strength, a negative `top`, a chosen token that is empty
            or outside the vocabulary, or a prompt that does not fit the model's context.
        CircuitMismatchError: the intervention does not fit the model.

    Example:
        >>> r = next_token_probs(model, tok, prompts, intervention=circuit, strengths=(0.0,),
        ...                      tokens=("I",))
        >>> r.chosen()[:, 1, 0] - r.chosen()[:, 0, 0]  # change of P("I") at m = 0, per prompt
    """
    if isinstance(prompts, str) or not prompts:
        raise InputError("next_token_probs() needs a non-empty list of prompts")
    if top < 0:
        raise InputError(f"top must be 0 or more, got {top}")
    settings = _settings(intervention, strengths)
    choices = resolve_tokens(tokenizer, tokens)
    token_ids = encode_for_model(
        model,
        tokenizer,
        prompts,
        chat_template=chat_template,
        system=system,
        template_vars=template_vars,
        reserve=1,
    )
    chosen_ids = torch.tensor([c.token_id for c in choices], dtype=torch.long)
    # [setting][prompt]
    found: list[list[SettingProbs | None]] = [[None] * len(prompts) for _ in settings]
    device, pad = input_device(model), pad_id(tokenizer)

    for s, strength in enumerate(settings):

        def attempt(batch: Batch) -> torch.Tensor:
            return _last_probs(model, batch, device)

        def finish(batch: Batch, probs: torch.Tensor, s: int = s) -> None:
            _check_ids(choices, probs.shape[-1])
            values, ids = probs.topk(min(top, probs.shape[-1]), dim=-1)
            picked = probs[:, chosen_ids]
            for r, row in enumerate(batch.index.tolist()):
                found[s][row] = _setting_probs(tokenizer, settings[s], ids[r], values[r], picked[r])

        steering = _steering(model, intervention, strength, positions, layout)
        with steering, torch.inference_mode():
            run_batches(
                token_ids,
                attempt,
                finish,
                batch_size=batch_size,
                pad_id=pad,
                device=device,
                what="reading next-token probabilities",
            )
    return NextTokenProbs(
        prompts=tuple(prompts),
        strengths=tuple(settings),
        tokens=tuple(choices),
        probs=tuple(
            tuple(_filled(found[s][p]) for s in range(len(settings))) for p in range(len(prompts))
        ),
    )


def _setting_probs(
    tokenizer: PreTrainedTokenizerBase,
    setting: float | None,
    ids: torch.Tensor,
    values: torch.Tensor,
    picked: torch.Tensor,
) -> SettingProbs:
    """One prompt under one setting: its top tokens (`ids`, `values`: [top] each, by
    probability) decoded, and the chosen tokens' probabilities (`picked`: [n_chosen])."""
    return SettingProbs(
        setting,
        tuple(
            TokenProb(int(i), str(tokenizer.decode([int(i)])), float(v))
            for i, v in zip(ids, values, strict=True)
        ),
        tuple(float(p) for p in picked),
    )


def _steering(
    model: PreTrainedModel,
    intervention: Steerable | None,
    strength: float | None,
    positions: Positions,
    layout: ModelLayout | None,
) -> contextlib.AbstractContextManager[object]:
    """The intervention steered at `strength` for a `with` block; nothing for the unsteered
    setting (`strength` None) or without an intervention."""
    if strength is None or intervention is None:
        return contextlib.nullcontext()
    return steer(model, intervention, strength, positions=positions, layout=layout)


def _settings(
    intervention: Steerable | None, strengths: Sequence[float] | None
) -> list[float | None]:
    """None (unsteered) first, then each strength, checked."""
    if intervention is None:
        if strengths:
            raise InputError("strengths need an intervention to apply (pass intervention=)")
        return [None]
    if strengths is None:
        default = getattr(intervention, "default_strength", None)
        if default is None:  # a list of circuits
            from neurosteer.methods.circuit import as_circuits

            default = as_circuits(intervention)[0].default_strength
        strengths = [float(default)]
    if isinstance(strengths, (str, int, float)):
        raise InputError(f"strengths must be a list of numbers, got {strengths!r}")
    return [None, *(check_strength(value, 0.0) for value in strengths)]


def _last_probs(model: PreTrainedModel, batch: Batch, device: torch.device) -> torch.Tensor:
    """[batch, vocab] float32 probabilities at each row's last (prompt) position; rows are
    left-padded, so that is the last column."""
    inputs = model_inputs(model, batch.input_ids.to(device), batch.attention_mask.to(device))
    extra = {"logits_to_keep": 1} if forward_takes(model, "logits_to_keep") else {}
    logits = model_forward(model, **inputs, use_cache=False, **extra).logits[:, -1]
    return torch.softmax(logits.float(), dim=-1).cpu()


def _check_ids(choices: Sequence[TokenChoice], vocab: int) -> None:
    for c in choices:
        if c.token_id >= vocab:
            raise InputError(
                f"the token {c.text!r} (id {c.token_id}) is outside the model's {vocab}-token "
                "output; give one the model can predict"
            )


def _filled(value: SettingProbs | None) -> SettingProbs:
    if value is None:  # pragma: no cover - run_batches visits every prompt
        raise RuntimeError("a prompt was not run")
    return value


#: New tokens of the unchanged answers `choose_tokens` judges: enough for a refusal's opening
#: sentence ("I'm sorry, but I can't help with that.") on every model tried.
CHOICE_TOKENS = 32


@dataclass(frozen=True)
class OpeningToken:
    """A first answer token and the unchanged answers it opens.

    Attributes:
        choice: the token (as `resolve_tokens` gives it).
        refused: unchanged answers it opens that the judge labels "refusal".
        complied: unchanged answers it opens that the judge labels "compliance".
    """

    choice: TokenChoice
    refused: int
    complied: int


@dataclass(frozen=True)
class TokenPick:
    """The tokens `choose_tokens` chose, and why.

    Attributes:
        refusal: tokens that open more unchanged refusals than compliant answers, most first.
        compliance: tokens that open more compliant answers than refusals, most first.
        answers: the unchanged model's judged answers the choice was made from.
    """

    refusal: tuple[OpeningToken, ...]
    compliance: tuple[OpeningToken, ...]
    answers: JudgedAnswers

    @property
    def token_ids(self) -> tuple[int, ...]:
        """The chosen ids, refusal tokens first: the `tokens` to pass to `next_token_probs`."""
        return tuple(t.choice.token_id for t in (*self.refusal, *self.compliance))


@runs_model
def choose_tokens(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    judge: Judge,
    *,
    max_new_tokens: int = CHOICE_TOKENS,
    system: str | None = None,
    template_vars: Mapping[str, Any] | None = None,
    chat_template: bool | None = None,
    batch_size: int = 8,
) -> TokenPick:
    """Refusal and compliance tokens from the unchanged model's own answers to `prompts`.

    The unchanged model answers each prompt greedily (`measure_refusal`, `max_new_tokens`
    tokens), `judge` labels the answers, and each answer's first token is counted for its label
    (`evaluation.refusal.opening_counts`, the balance `neurosteer optimize` prunes with): a
    token that opens more refusals than compliant answers is a refusal token, the reverse a
    compliance token, a tie neither. Degenerate answers count for neither. With only prompts
    the model refuses there is no compliance token; give it prompts it answers too.

    Raises:
        InputError: as `measure_refusal` and `next_token_probs`.

    Example:
        >>> pick = choose_tokens(model, tok, ["How do I pick a lock?", "Name a colour"],
        ...                      PhraseJudge())
        >>> next_token_probs(model, tok, prompts, tokens=pick.token_ids)
    """
    from neurosteer.evaluation.refusal import measure_refusal, opening_counts

    rendering = Rendering(chat_template=chat_template, system=system, template_vars=template_vars)
    answers = measure_refusal(
        model,
        tokenizer,
        prompts,
        judge,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        **rendering.as_kwargs(),
    )
    # greedy: each answer's first token is the unchanged distribution's most likely one
    first = next_token_probs(
        model, tokenizer, prompts, top=1, batch_size=batch_size, **rendering.as_kwargs()
    )
    first_ids = [row[0].top[0].token_id for row in first.probs]
    counts = opening_counts(first_ids, answers.labels)

    def openings(wanted: bool) -> tuple[OpeningToken, ...]:
        found = [
            OpeningToken(_token_by_id(tokenizer, token), refused, complied)
            for token, (refused, complied) in counts.items()
            if refused != complied and (refused > complied) == wanted
        ]
        return tuple(sorted(found, key=lambda t: (-abs(t.refused - t.complied), t.choice.token_id)))

    return TokenPick(openings(True), openings(False), answers)
