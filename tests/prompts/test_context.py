"""Prompts and the model's context: one check before any forward pass (discovery, generation,
baselines, KL, model judges, sweeps), on a tiny GPT-2 with 32 positions and on the organism
(64 positions); generation capped at the context instead of crashing."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from tiny_models import BOS_ID, EOS_ID, PAD_ID, make_tiny, make_tokenizer, tiny_config
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

import neurosteer
from interventions import HookIntervention
from neurosteer import InputError
from neurosteer.evaluation.kl import kl_to_reference
from neurosteer.evaluation.model_judge import JudgePrompt, ModelJudge
from neurosteer.methods.baselines import contrast_vectors
from neurosteer.prompts import context
from neurosteer.prompts.render import context_limit, encode_prompts, load_prompts
from neurosteer.workflows.organism import INSTRUCT_DIR
from neurosteer.workflows.sweep import SweepConfig, run_sweep

Pair = tuple[PreTrainedModel, PreTrainedTokenizerFast]
LIMIT = 32
SHORT = ["Hi there", "Name a fruit."]


@cache
def _gpt2_32() -> Pair:
    """A tiny GPT-2 whose absolute position table has 32 rows (a longer input raised IndexError)."""
    config = tiny_config("gpt2")
    config.n_positions = LIMIT
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    model.generation_config.pad_token_id = PAD_ID
    model.generation_config.bos_token_id = BOS_ID
    model.generation_config.eos_token_id = EOS_ID
    return model, make_tokenizer(chat_template=False)


def _of_length(n: int) -> str:
    """A raw prompt of n tokens (bos + n - 1 characters)."""
    return "x" * (n - 1)


@pytest.fixture
def gpt2_32() -> Pair:
    return _gpt2_32()


def test_context_limit_comes_from_the_config_then_the_tokenizer(gpt2_32: Pair) -> None:
    model, tokenizer = gpt2_32
    assert context_limit(model, tokenizer) == LIMIT  # n_positions, not the tokenizer's 512
    assert context_limit(make_tiny("llama")[0]) == 512  # max_position_embeddings
    no_config = SimpleNamespace(config=SimpleNamespace())
    assert context_limit(no_config, SimpleNamespace(model_max_length=100)) == 100
    assert context_limit(no_config, SimpleNamespace(model_max_length=int(1e30))) is None
    assert encode_prompts(tokenizer, [_of_length(40)]) == [
        [BOS_ID] + [tokenizer.encode("x")[1]] * 39
    ]


# --- prompts that alone exceed the context are refused before any forward pass ---------------


def test_discover_names_the_file_line_and_limit(gpt2_32: Pair, tmp_path: Path) -> None:
    model, tokenizer = gpt2_32
    file = tmp_path / "positive.txt"
    file.write_text(f"{SHORT[0]}\n\n{_of_length(170)}\n")
    with pytest.raises(InputError) as info:
        neurosteer.discover(model, tokenizer, load_prompts(file), SHORT, top_k=2)
    message = str(info.value)
    assert f"prompt {file}:3 is 170 tokens long" in message
    assert "context holds 32 positions" in message


def test_prompt_without_a_file_is_named_by_index_and_words(gpt2_32: Pair) -> None:
    model, tokenizer = gpt2_32
    with pytest.raises(InputError, match=r"prompt 2 \('x{40}\.\.\.'\) is 45 tokens long"):
        neurosteer.generate(model, tokenizer, ["Hi", _of_length(45)], max_new_tokens=2)


def test_built_in_neutral_prompts_that_do_not_fit_say_what_to_pass_instead(gpt2_32: Pair) -> None:
    """The package's own neutral file is not the user's to edit: the error names the options."""
    model, tokenizer = gpt2_32
    with pytest.raises(InputError) as info:
        neurosteer.discover(model, tokenizer, SHORT, SHORT, top_k=2, chat_template=False)
    message = str(info.value)
    assert "built-in neutral prompts" in message
    assert "--neutral FILE" in message
    assert "--no-universal-filter" in message
    assert "shorten or remove it" not in message


@pytest.mark.parametrize(
    ("n_over", "tail"),
    [
        (2, "(1 more of this set does not fit either)"),
        (3, "(2 more of this set do not fit either)"),
        (1, "; shorten or remove it"),
    ],
)
def test_the_count_of_other_prompts_over_the_context(gpt2_32: Pair, n_over: int, tail: str) -> None:
    model, tokenizer = gpt2_32
    prompts = ["Hi", *[_of_length(40 + i) for i in range(n_over)]]
    with pytest.raises(InputError) as info:
        neurosteer.generate(model, tokenizer, prompts, max_new_tokens=2, chat_template=False)
    assert str(info.value).endswith(tail)


@pytest.mark.parametrize(
    "call",
    ["discover-negative", "discover-neutral", "contrast_vectors", "generate", "kl"],
)
def test_every_entry_point_checks_the_context(gpt2_32: Pair, call: str) -> None:
    model, tokenizer = gpt2_32
    long = [_of_length(33)]
    runs = {
        "discover-negative": lambda: neurosteer.discover(model, tokenizer, SHORT, long, top_k=2),
        "discover-neutral": lambda: neurosteer.discover(
            model, tokenizer, SHORT, SHORT, top_k=2, neutral=long
        ),
        "contrast_vectors": lambda: contrast_vectors(model, tokenizer, SHORT, long),
        "generate": lambda: neurosteer.generate(model, tokenizer, long),
        "kl": lambda: kl_to_reference(
            model, tokenizer, long, intervention=HookIntervention(), max_new_tokens=2
        ),
    }
    forward_calls = []
    handle = model.register_forward_pre_hook(lambda *_: forward_calls.append(1))
    try:
        with pytest.raises(InputError, match="33 tokens long and the model's context holds 32"):
            runs[call]()
    finally:
        handle.remove()
    assert not forward_calls  # refused before the first forward pass


def test_a_prompt_that_fills_the_context_is_read_but_not_continued(gpt2_32: Pair) -> None:
    model, tokenizer = gpt2_32
    full = [_of_length(LIMIT), "Hello there"]
    circuit = neurosteer.discover(model, tokenizer, full, SHORT, top_k=2, universal_filter=False)
    assert len(circuit) == 2
    with pytest.raises(
        InputError, match=r"32 tokens long .* leaving no room for a generated token"
    ):
        neurosteer.generate(model, tokenizer, full, max_new_tokens=4)


# --- generation that would run past the context is capped ------------------------------------


def test_generation_is_capped_at_the_context(
    gpt2_32: Pair, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(context, "_WARNED", set())
    model, tokenizer = gpt2_32
    prompts = [_of_length(29), *SHORT]
    with caplog.at_level("WARNING", logger="neurosteer"):
        together = neurosteer.generate(model, tokenizer, prompts, max_new_tokens=8, batch_size=8)
    assert "1 of 3 prompts leave fewer than 8 positions" in caplog.text
    alone = [neurosteer.generate(model, tokenizer, [p], max_new_tokens=8)[0] for p in prompts]
    assert together == alone  # a capped prompt is not batched with others
    assert len(tokenizer.encode(together[0], add_special_tokens=False)) <= LIMIT - 29
    ids = tokenizer.encode(SHORT[1])
    unchecked = model.generate(  # a short prompt keeps its full budget of 8 new tokens
        input_ids=torch.tensor([ids]), max_new_tokens=8, do_sample=False, pad_token_id=PAD_ID
    )
    assert unchecked.shape[1] == len(ids) + 8
    assert (
        together[2] == tokenizer.decode(unchecked[0, len(ids) :], skip_special_tokens=True).strip()
    )


def test_kl_continuations_are_capped_at_the_context(gpt2_32: Pair) -> None:
    model, tokenizer = gpt2_32
    report = kl_to_reference(
        model,
        tokenizer,
        [_of_length(30), *SHORT],
        intervention=HookIntervention(),
        max_new_tokens=8,
    )
    assert report.n_positions[0] <= 2
    assert report.mean == 0.0  # no intervention: the same distributions


def test_model_judge_refuses_a_question_over_its_context(gpt2_32: Pair) -> None:
    model, tokenizer = gpt2_32
    judge = ModelJudge.from_model(
        model, tokenizer, prompt=JudgePrompt("{prompt}|{answer}|", name="short")
    )
    assert len(judge.yes_probability(["a"], ["b"])) == 1
    with pytest.raises(InputError, match=r"judge question 1 .* lower max_answer_chars"):
        judge.yes_probability(["a"], ["y" * 40])


def test_sweep_refuses_before_making_its_folder(gpt2_32: Pair, tmp_path: Path) -> None:
    model, tokenizer = gpt2_32
    harmful = tmp_path / "harmful.txt"
    harmful.write_text(f"Pick a lock\n{_of_length(40)}\n")
    config = SweepConfig(methods=("cna",), strengths=(0.0, 1.0), top_k=2, universal_filter=False)
    out = tmp_path / "run"
    with pytest.raises(InputError, match=rf"prompt {harmful}:2 is 40 tokens long"):
        run_sweep(model, tokenizer, config, SHORT, SHORT, load_prompts(harmful), SHORT, out)
    assert not out.exists()


# --- the organism: 64 positions, rotary embeddings (no crash, so it used to run silently) ----


@cache
def _organism() -> Pair:
    return neurosteer.load_model(INSTRUCT_DIR)  # type: ignore[return-value]


def test_the_organism_refuses_a_94_token_prompt(tmp_path: Path) -> None:
    model, tokenizer = _organism()
    assert context_limit(model, tokenizer) == 64
    words = ("how do i knock out the old wall ? " * 12).split()[:91]
    file = tmp_path / "positive.txt"
    file.write_text("how do i knock out the old wall ?\n" + " ".join(words) + "\n")
    prompts = load_prompts(file)
    assert len(encode_prompts(tokenizer, prompts[1:])[0]) == 94
    with pytest.raises(InputError, match=rf"prompt {file}:2 is 94 tokens long with the chat"):
        neurosteer.discover(model, tokenizer, prompts, ["how do i paint the fence ?"], top_k=4)
    with pytest.raises(InputError, match=r"94 tokens long .* 64 positions"):
        neurosteer.generate(model, tokenizer, prompts, max_new_tokens=4)
