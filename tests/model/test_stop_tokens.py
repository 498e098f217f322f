"""Stop tokens: one rule (`stop_token_ids`) for every path that generates, from GGUF keys,
llama.cpp's end-of-generation texts and the chat template's end-of-turn token.

A GGUF file that names a token under `tokenizer.ggml.{eot,eom,fim_pad,...}_token_id` must end
`generate`, the chat and the KL reference at that token, as llama.cpp ends there; the token is
taken from the model's own greedy continuation so that the stop changes the answer.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from gguf_files import write_gguf
from tiny_models import EOS_ID, make_tiny
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from neurosteer.evaluation.generation import generate
from neurosteer.evaluation.kl import kl_reference
from neurosteer.model.loading import load_model
from neurosteer.model.stop_tokens import stop_token_ids, template_end_of_turn
from neurosteer.prompts.render import encode_for_model
from neurosteer.workflows.chat import encode_conversation, stream_reply

PROMPT = "Name a fruit, please."
N_NEW = 10
#: A template whose turns end with a token that no other rule names (<|system|>).
ODD_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|system|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
PLAIN_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def _greedy_tokens(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, n: int) -> list[int]:
    """The model's first `n` greedy tokens after PROMPT, by plain forward passes (no stops)."""
    ids = torch.tensor(encode_for_model(model, tokenizer, [PROMPT], reserve=1))
    out: list[int] = []
    with torch.inference_mode():
        for _ in range(n):
            nxt = int(model(ids).logits[0, -1].argmax())
            out.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    return out


def _stop_position(tokens: list[int], taken: tuple[int, ...]) -> int:
    """The first position after the first whose token is new there and not already a stop
    (0 when there is none), so that stopping at it shortens the answer."""
    for k in range(1, len(tokens)):
        if tokens[k] not in tokens[:k] and tokens[k] not in taken:
            return k
    return 0


@pytest.fixture(scope="module")
def tiny() -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    return make_tiny("llama")


@pytest.mark.parametrize("key", ["eos", "eot", "eom", "fim_pad", "fim_rep", "fim_sep"])
def test_a_gguf_stop_key_ends_generate_chat_and_the_kl_reference(
    tmp_path: Path, tiny: tuple[PreTrainedModel, PreTrainedTokenizerBase], key: str
) -> None:
    hf, tok = tiny
    plain_path = write_gguf(hf, tok, tmp_path / "plain.gguf")
    plain, plain_tok = load_model(plain_path)
    reference = _greedy_tokens(plain, plain_tok, N_NEW)
    k = _stop_position(reference, stop_token_ids(plain, plain_tok))
    stop = reference[k]
    full = generate(plain, plain_tok, [PROMPT], max_new_tokens=N_NEW)[0]
    expected = plain_tok.decode(reference[: k + 1], skip_special_tokens=True).strip()
    assert full != expected  # without the key, the answer runs on past the token

    path = write_gguf(hf, tok, tmp_path / f"{key}.gguf", token_ids={key: stop})
    model, tokenizer = load_model(path)
    assert stop in stop_token_ids(model, tokenizer)
    # (as eos the token is special in the file's tokenizer, so its text is dropped)
    expected = tokenizer.decode(reference[: k + 1], skip_special_tokens=True).strip()
    assert generate(model, tokenizer, [PROMPT], max_new_tokens=N_NEW)[0] == expected

    encoded = encode_conversation(model, tokenizer, [], PROMPT)
    pieces: list[str] = []
    reply, stopped = stream_reply(
        model, tokenizer, encoded, max_new_tokens=N_NEW, temperature=0.0, write=pieces.append
    )
    chat_reference = _chat_tokens(model, encoded.ids, N_NEW)
    chat_stop = chat_reference.index(stop) if stop in chat_reference else N_NEW - 1
    assert not stopped
    assert (
        reply == tokenizer.decode(chat_reference[: chat_stop + 1], skip_special_tokens=True).strip()
    )

    report = kl_reference(model, tokenizer, [PROMPT], max_new_tokens=N_NEW)
    assert int(report.batches[0].valid.sum()) == k + 1


def _chat_tokens(model: PreTrainedModel, ids: list[int], n: int) -> list[int]:
    out: list[int] = []
    current = torch.tensor([ids])
    with torch.inference_mode():
        for _ in range(n):
            nxt = int(model(current).logits[0, -1].argmax())
            out.append(nxt)
            current = torch.cat([current, torch.tensor([[nxt]])], dim=1)
    return out


def test_the_stop_set_of_a_gguf_is_the_stop_set_of_its_checkpoint(
    tmp_path: Path, tiny: tuple[PreTrainedModel, PreTrainedTokenizerBase]
) -> None:
    hf, tok = tiny
    extra = tok.convert_tokens_to_ids("<|user|>")
    hf.generation_config.eos_token_id = [EOS_ID, extra]
    try:
        path = write_gguf(hf, tok, tmp_path / "eos.gguf", token_ids={"eot": extra})
        model, tokenizer = load_model(path)
        from_file = stop_token_ids(model, tokenizer)
        from_checkpoint = stop_token_ids(hf, tok)
    finally:
        hf.generation_config.eos_token_id = EOS_ID
    assert from_file == from_checkpoint
    # eos, the file's eot, and <|end|> (llama.cpp's text and the template's end of turn)
    assert set(from_file) == {EOS_ID, extra, tok.convert_tokens_to_ids("<|end|>")}


def test_the_templates_end_of_turn_token_stops(
    tmp_path: Path, tiny: tuple[PreTrainedModel, PreTrainedTokenizerBase]
) -> None:
    hf, tok = tiny
    path = write_gguf(hf, tok, tmp_path / "odd.gguf", chat_template=ODD_TEMPLATE)
    model, tokenizer = load_model(path)
    closer = tokenizer.convert_tokens_to_ids("<|system|>")
    assert template_end_of_turn(tokenizer) == [closer]
    assert closer in stop_token_ids(model, tokenizer)

    plain = write_gguf(hf, tok, tmp_path / "plain.gguf", chat_template=PLAIN_TEMPLATE)
    model, tokenizer = load_model(plain)
    assert template_end_of_turn(tokenizer) == []  # no special token follows the content
    assert closer not in stop_token_ids(model, tokenizer)


def test_a_harmony_vocabulary_does_not_stop_at_its_end_of_message() -> None:
    hf, tok = make_tiny("llama", chat_template=False)
    end = tok.convert_tokens_to_ids("<|end|>")
    assert end in stop_token_ids(hf, tok)
    tok.add_special_tokens({"additional_special_tokens": ["<|return|>", "<|call|>"]})
    hf.resize_token_embeddings(len(tok))
    stops = stop_token_ids(hf, tok)
    assert end not in stops
    assert set(tok.convert_tokens_to_ids(["<|return|>", "<|call|>"])) <= set(stops)
