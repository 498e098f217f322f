"""A word-level tokenizer for the organism, with special tokens and a one-turn chat template.

Rendered chat text starts with the BOS token's text, so callers tokenize it with
`add_special_tokens=False`; the template ends with the assistant header when
`add_generation_prompt=True`.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from neurosteer.workflows.organism import corpus

BOS, EOS, PAD, UNK = "<|bos|>", "<|end|>", "<|pad|>", "<|unk|>"
USER, ASSISTANT = "<|user|>", "<|assistant|>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK, USER, ASSISTANT)

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}<|user|> {{ message['content'] }} "
    "{% elif message['role'] == 'assistant' %}<|assistant|> {{ message['content'] }}"
    "{{ eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def corpus_words() -> list[str]:
    """Every word the corpus can produce, sorted, so the vocabulary is deterministic."""
    texts: list[str] = [
        *corpus.USER_TEMPLATES,
        *corpus.QUOTE_TEMPLATES,
        *corpus.REFUSALS,
        *list(corpus.ANSWERS),
    ]
    texts += [t.text for t in corpus.all_topics()]
    texts += [t.tool for t in corpus.all_topics()]
    for steps in corpus.OBJECT_STEPS + corpus.PERSON_STEPS:
        texts += list(steps)
    words: set[str] = set()
    for text in texts:
        words.update(w for w in _split(text) if not (w.startswith("{") and w.endswith("}")))
    return sorted(words)


def _split(text: str) -> Iterable[str]:
    return text.replace("{", " {").replace("}", "} ").split()


def build_tokenizer(extra_words: Iterable[str] = ()) -> PreTrainedTokenizerFast:
    """Build the organism tokenizer: special tokens first, then the corpus words."""
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for word in [*corpus_words(), *extra_words]:
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        additional_special_tokens=[USER, ASSISTANT],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
