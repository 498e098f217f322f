"""Which tokens end a generated answer: one rule for every path that generates.

`generate`, the chat, the sweeps (through `generate`) and the KL stop mask all stop at
`stop_token_ids(model, tokenizer)`, the union of

1. the ids the checkpoint declares: `generation_config.eos_token_id` (an int or a list) and the
   tokenizer's eos; a GGUF file's `tokenizer.ggml.{eos,eot,eom,fim_pad,fim_rep,fim_sep}_token_id`
   are put into the generation config when the file is loaded (`merge_gguf_stop_ids`);
2. every vocabulary token whose text is one of llama.cpp's end-of-generation texts
   (`<|im_end|>`, `<|eot_id|>`, `<end_of_turn>`, ...), as llama.cpp's vocabulary loader marks them;
3. the special token the chat template writes right after a message's content (its
   end-of-turn token), when the template renders.

Applied to a transformers checkpoint and to the GGUF converted from it, the rule gives the same
set, and it matches the end-of-generation set llama.cpp uses for the file.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

#: Token texts that end generation wherever they are in a vocabulary (llama.cpp's convention).
END_OF_GENERATION_TEXTS = frozenset(
    {
        "<|eot_id|>",
        "<|eom_id|>",
        "<|im_end|>",
        "<|end|>",
        "<|return|>",
        "<|call|>",
        "<end_of_turn>",
        "<|endoftext|>",
        "<|end_of_text|>",
        "<EOT>",
        "_<EOT>",
        "<end_of_utterance>",
        # fill-in-the-middle separators, which llama.cpp also ends generation at
        "<|fim_pad|>",
        "<|repo_name|>",
        "<|fim_repo|>",
        "<|file_sep|>",
    }
)
#: Harmony vocabularies end a turn at <|return|> or <|call|>; their <|end|> ends a message only.
_HARMONY_ENDS = ("<|return|>", "<|call|>")
#: GGUF metadata keys whose token ends generation in llama.cpp.
GGUF_STOP_KEYS = tuple(
    f"tokenizer.ggml.{name}_token_id"
    for name in ("eos", "eot", "eom", "fim_pad", "fim_rep", "fim_sep")
)
_SENTINEL = "NEUROSTEER_END_OF_TURN_PROBE"


def stop_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> tuple[int, ...]:
    """The ids that end an answer of `model`, sorted (see the module docstring for the rule).

    Returns:
        Sorted, distinct token ids below the model's `config.vocab_size`; empty only for a
        checkpoint that declares no eos, has no end-of-generation text in its vocabulary and
        no chat template.
    """
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = set(_as_ids(config_eos)) | set(_as_ids(tokenizer.eos_token_id))
    ids |= set(_named_stops(tokenizer.get_vocab()))
    ids |= set(template_end_of_turn(tokenizer))
    # a tokenizer may hold tokens past the model's vocabulary (transformers' GGUF converter
    # adds one), which the model can never emit
    size = getattr(getattr(model, "config", None), "vocab_size", None)
    limit = size if isinstance(size, int) else max(ids, default=0) + 1
    return tuple(sorted(i for i in ids if 0 <= i < limit))


def merge_gguf_stop_ids(model: PreTrainedModel, values: Mapping[str, Any], vocab_size: int) -> None:
    """Add the ids a GGUF file's metadata `values` (key -> value) names under
    `GGUF_STOP_KEYS` (those inside a `vocab_size`-token vocabulary) to the model's
    `generation_config.eos_token_id`, so that `model.generate` alone stops there too."""
    config = getattr(model, "generation_config", None)
    if config is None:
        return
    named = {values.get(key) for key in GGUF_STOP_KEYS}
    ids = set(_as_ids(config.eos_token_id))
    ids |= {int(i) for i in named if isinstance(i, int) and 0 <= i < vocab_size}
    if ids:
        config.eos_token_id = sorted(ids) if len(ids) > 1 else ids.pop()


def template_end_of_turn(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """[id] of the special token the chat template writes right after an assistant message's
    content (whitespace skipped); [] without a template, when the template does not render a
    two-turn conversation, or when no special token follows the content."""
    if not getattr(tokenizer, "chat_template", None):
        return []
    messages = [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": _SENTINEL},
    ]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception as err:  # jinja errors of any kind: the template is someone else's code
        logger.debug("chat template does not render a two-turn conversation: %s", err)
        return []
    if not isinstance(text, str) or _SENTINEL not in text:
        return []
    after = text.split(_SENTINEL, 1)[1].lstrip()
    ids = tokenizer.encode(after, add_special_tokens=False)[:1] if after else []
    special = set(tokenizer.all_special_ids) | {
        i for i, token in tokenizer.added_tokens_decoder.items() if token.special
    }
    return [i for i in ids if i in special]


def _named_stops(vocab: Mapping[str, int]) -> list[int]:
    """Ids of the vocabulary's end-of-generation texts (harmony's <|end|> excepted)."""
    texts = set(END_OF_GENERATION_TEXTS)
    if all(end in vocab for end in _HARMONY_ENDS):
        texts.discard("<|end|>")
    return [vocab[text] for text in texts if text in vocab]


def _as_ids(value: Any) -> Iterable[int]:
    if isinstance(value, int):
        return [value]
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value if isinstance(v, int)]
    return []
