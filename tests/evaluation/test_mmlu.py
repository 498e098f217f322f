"""Stage 8: MMLU through lm-eval on the live model, from a tiny MMLU-format fixture.

The fixture's questions are made up here (two toy subjects); the checks: lm-eval's choice
equals the argmax of the four answer loglikelihoods computed directly with the model, both file
layouts read the same, subjects/limit/n_shot are respected, interventions are active exactly
while scoring, and bad data gives one-line InputErrors.
"""

from __future__ import annotations

import copy
import csv
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_models import BOS, BOS_ID, EOS, EOS_ID, PAD, PAD_ID, UNK, make_tokenizer
from tokenizers import processors
from transformers import LlamaTokenizerFast, PreTrainedModel, PreTrainedTokenizerFast

from interventions import CircuitIntervention, HookIntervention
from neurosteer import InputError, discover, steer
from neurosteer.evaluation import (
    MMLUResult,
    load_mmlu,
    mmlu_accuracy,
    mmlu_sweep,
    paired_difference,
)
from neurosteer.hooks import count_hooks

Pair = tuple[PreTrainedModel, PreTrainedTokenizerFast]
Row = tuple[str, str, str, str, str, str]

# Invented questions (not MMLU text); answers spread over A-D.
TOY: dict[str, dict[str, list[Row]]] = {
    "toy_sums": {
        "dev": [
            ("1 + 1 =", "2", "3", "4", "5", "A"),
            ("2 + 1 =", "2", "3", "4", "5", "B"),
            ("2 + 2 =", "2", "3", "4", "5", "C"),
            ("3 + 2 =", "2", "3", "4", "5", "D"),
        ],
        "test": [
            ("1 + 2 =", "3", "4", "5", "6", "A"),
            ("2 + 3 =", "3", "4", "5", "6", "C"),
            ("4 + 2 =", "3", "4", "5", "6", "D"),
            ("1 + 3 =", "3", "4", "5", "6", "B"),
            ("0 + 3 =", "3", "4", "5", "6", "A"),
            (" 5 + 1 = ", "3", "4", "5", "6", "D"),
        ],
    },
    "toy_colours": {
        "dev": [
            ("Grass is", "red", "green", "blue", "pink", "B"),
            ("The sky is", "red", "green", "blue", "pink", "C"),
            ("Blood is", "red", "green", "blue", "pink", "A"),
            ("A flamingo is", "red", "green", "blue", "pink", "D"),
        ],
        "test": [
            ("Snow is", "black", "white", "gold", "grey", "B"),
            ("Coal is", "black", "white", "gold", "grey", "A"),
            ("Ash is", "black", "white", "gold", "grey", "D"),
            ("A crown is", "black", "white", "gold", "grey", "C"),
            ("Milk is", "black", "white", "gold", "grey", "B"),
            ("Night is, at times,", "black", "white", "gold", "grey", "A"),
        ],
    },
}
LETTERS = "ABCD"


def _write(path: Path, rows: list[list[str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)


@pytest.fixture
def per_subject_dir(tmp_path: Path) -> Path:
    """The original tarball's layout: dev/ and test/ folders of headerless per-subject files."""
    for subject, splits in TOY.items():
        for split, rows in splits.items():
            (tmp_path / split).mkdir(exist_ok=True)
            _write(tmp_path / split / f"{subject}_{split}.csv", [list(r) for r in rows])
    return tmp_path


@pytest.fixture
def combined_dir(tmp_path: Path) -> Path:
    """Combined files with a header, a subject column and an extra column, like data/mmlu."""
    header = ["subject", "category", "question", "A", "B", "C", "D", "answer"]
    for split, name in (("dev", "dev.csv"), ("test", "test_subset.csv")):
        rows = [header]
        for subject, splits in TOY.items():
            rows += [[subject, "toy", *r] for r in splits[split]]
        _write(tmp_path / name, rows)
    return tmp_path


def _loglik(pair: Pair, context: str, continuation: str, bos_first: bool | None = None) -> float:
    """Teacher-forced log P(continuation | context), split into tokens as lm-eval splits them;
    with `bos_first` given, encoded without special tokens after one BOS (if True)."""
    model, tokenizer = pair

    def encode(text: str) -> list[int]:
        if bos_first is None:
            return list(tokenizer(text).input_ids)
        plain = list(tokenizer(text, add_special_tokens=False).input_ids)
        return [BOS_ID, *plain] if bos_first else plain

    whole = encode(context + continuation)
    n_context = len(encode(context))
    with torch.no_grad():
        logprobs = model(torch.tensor([whole])).logits[0].float().log_softmax(-1)
    return sum(float(logprobs[i - 1, whole[i]]) for i in range(n_context, len(whole)))


def _block(row: Row) -> str:
    question, a, b, c, d, _ = row
    return f"{question.strip()}\nA. {a}\nB. {b}\nC. {c}\nD. {d}\nAnswer:"


def _contexts(subject: str, n_shot: int, limit: int) -> list[str]:
    """The rendered context of each scored test question, as lm-eval's MMLU task renders it."""
    topic = subject.replace("_", " ")
    prefix = f"The following are multiple choice questions (with answers) about {topic}.\n\n"
    for shot in TOY[subject]["dev"][:n_shot]:
        prefix += f"{_block(shot)} {shot[5]}\n\n"
    return [prefix + _block(row) for row in TOY[subject]["test"][:limit]]


def _by_hand(
    pair: Pair, subject: str, n_shot: int, limit: int, bos_first: bool | None = None
) -> tuple[bool, ...]:
    """Whether argmax over the four answer loglikelihoods is right, per test question."""
    right = []
    for row, context in zip(
        TOY[subject]["test"][:limit], _contexts(subject, n_shot, limit), strict=True
    ):
        scores = [_loglik(pair, context, f" {letter}", bos_first) for letter in LETTERS]
        right.append(LETTERS[scores.index(max(scores))] == row[5])
    return tuple(right)


@pytest.mark.parametrize(("n_shot", "limit"), [(0, None), (1, 3)])
def test_accuracy_is_the_argmax_of_answer_loglikelihoods(
    tiny_llama: Pair, per_subject_dir: Path, n_shot: int, limit: int | None
) -> None:
    result = mmlu_accuracy(*tiny_llama, per_subject_dir, n_shot=n_shot, limit=limit)
    expected_n = limit or 6
    assert result.n_shot == n_shot
    assert result.per_subject_n == {"toy_colours": expected_n, "toy_sums": expected_n}
    assert result.n == 2 * expected_n
    for subject in TOY:
        assert result.correct[subject] == _by_hand(tiny_llama, subject, n_shot, expected_n)
    hits = sum(sum(c) for c in result.correct.values())
    assert result.per_subject == {
        subject: pytest.approx(sum(right) / expected_n) for subject, right in result.correct.items()
    }
    assert result.accuracy == pytest.approx(hits / result.n)
    assert result.settings["layout"] == "per_subject"
    assert result.settings["limit"] == limit
    assert list(result.settings) == [
        "layout",
        "source",
        "split",
        "limit",
        "batch_size",
        "bos_first",
        "lm_eval_version",
    ]
    assert not hasattr(result, "macro_accuracy")  # removed as unused (issue 9)


def test_both_layouts_read_the_same_questions(per_subject_dir: Path, tmp_path: Path) -> None:
    combined = tmp_path / "combined"
    combined.mkdir()
    header = ["subject", "category", "question", "A", "B", "C", "D", "answer"]
    for split, name in (("dev", "dev.csv"), ("test", "test_subset.csv")):
        rows = [header] + [[s, "toy", *r] for s, sp in TOY.items() for r in sp[split]]
        _write(combined / name, rows)
    a = load_mmlu(per_subject_dir)
    b = load_mmlu(combined)
    c = load_mmlu(combined / "test_subset.csv")  # a combined file given directly
    assert (a.layout, b.layout, c.layout) == ("per_subject", "combined", "combined")
    assert a.subjects == b.subjects == ("toy_colours", "toy_sums")
    assert a.test == b.test == c.test
    assert a.dev == b.dev == c.dev
    assert a.test["toy_sums"][1].answer == 2
    assert a.test["toy_sums"][5].question == " 5 + 1 = "  # kept as written; the prompt strips


def test_subjects_and_limit_are_respected(tiny_llama: Pair, combined_dir: Path) -> None:
    result = mmlu_accuracy(*tiny_llama, combined_dir, n_shot=1, subjects=["toy_sums"], limit=2)
    assert result.per_subject_n == {"toy_sums": 2}
    assert set(result.per_subject) == {"toy_sums"}
    assert result.n == 2
    assert result.correct["toy_sums"] == _by_hand(tiny_llama, "toy_sums", 1, 2)


def test_interventions_are_active_exactly_while_scoring(
    tiny_llama: Pair,
    per_subject_dir: Path,
    positive_prompts: list[str],
    negative_prompts: list[str],
) -> None:
    model, tokenizer = tiny_llama
    data = load_mmlu(per_subject_dir)
    hooks_before = count_hooks(model)
    plain = mmlu_accuracy(model, tokenizer, data, n_shot=0)

    circuit = discover(
        model, tokenizer, positive_prompts, negative_prompts, top_k=8, universal_filter=False
    )
    identity = mmlu_accuracy(
        model, tokenizer, data, n_shot=0, intervention=CircuitIntervention(circuit), strength=1.0
    )
    assert identity.correct == plain.correct

    # an intervention that makes " A" win every question: accuracy becomes the share of A answers
    calls = []
    letter_a = tokenizer.convert_tokens_to_ids("A")

    def hook(_module: torch.nn.Module, _args: object, logits: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        bumped = logits.clone()
        bumped[..., letter_a] += 100.0
        return bumped

    force_a = HookIntervention(lambda hooks: hooks.post(model.get_output_embeddings(), hook))
    forced = mmlu_accuracy(model, tokenizer, data, n_shot=0, intervention=force_a, strength=0.5)
    assert calls
    assert force_a.calls == [0.5]  # entered once, around all of the scoring, at that strength
    for subject, rows in TOY.items():
        assert forced.correct[subject] == tuple(r[5] == "A" for r in rows["test"])
    assert count_hooks(model) == hooks_before
    assert mmlu_accuracy(model, tokenizer, data, n_shot=0).correct == plain.correct


def test_sweep_reports_change_versus_unsteered(
    tiny_llama: Pair,
    per_subject_dir: Path,
    positive_prompts: list[str],
    negative_prompts: list[str],
) -> None:
    model, tokenizer = tiny_llama
    circuit = discover(
        model, tokenizer, positive_prompts, negative_prompts, top_k=8, universal_filter=False
    )
    sweep = mmlu_sweep(
        model,
        tokenizer,
        per_subject_dir,
        [1.0, 0.0],  # a circuit's multipliers: 1 unchanged, 0 ablated
        CircuitIntervention(circuit),
        n_shot=0,
        limit=3,
    )
    assert sweep.strengths == (1.0, 0.0)
    assert sweep.baseline.n == 6
    assert sweep.deltas[0] == 0.0  # multiplier 1 is the unchanged model
    assert sweep.deltas[1] == pytest.approx(sweep.results[1].accuracy - sweep.baseline.accuracy)
    rows = sweep.rows()
    assert [r["strength"] for r in rows] == [1.0, 0.0]
    assert [(r["accuracy"], r["n"]) for r in rows] == [(x.accuracy, 6) for x in sweep.results]
    with steer(model, circuit, 0.0):  # multiplier 0 ablates the circuit: scored directly under it
        ablated = mmlu_accuracy(model, tokenizer, per_subject_dir, n_shot=0, limit=3)
    assert sweep.results[1].correct == ablated.correct


def test_bad_data_and_options_are_input_errors(
    tiny_llama: Pair, per_subject_dir: Path, tmp_path: Path
) -> None:
    model, tokenizer = tiny_llama
    with pytest.raises(InputError, match="not found"):
        load_mmlu(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no MMLU files"):
        load_mmlu(empty)

    short = tmp_path / "short"
    short.mkdir()
    _write(short / "toy_test.csv", [["q", "a", "b", "c", "A"]])
    with pytest.raises(InputError, match="5 columns"):
        load_mmlu(short)

    letter = tmp_path / "letter"
    letter.mkdir()
    _write(letter / "toy_test.csv", [["q", "a", "b", "c", "d", "E"]])
    with pytest.raises(InputError, match="one of A, B, C, D"):
        load_mmlu(letter)

    headless = tmp_path / "headless"
    headless.mkdir()
    _write(headless / "test.csv", [["question", "A", "B", "C", "D", "answer"], ["q", *"abcd", "A"]])
    with pytest.raises(InputError, match="subject"):
        load_mmlu(headless)

    both = tmp_path / "both"
    both.mkdir()
    _write(both / "toy_test.csv", [["q", *"abcd", "A"]])
    _write(
        both / "test.csv", [["subject", "question", *"ABCD", "answer"], ["toy", "q", *"abcd", "A"]]
    )
    with pytest.raises(InputError, match="both"):
        load_mmlu(both)

    data = load_mmlu(per_subject_dir)
    with pytest.raises(InputError, match="n_shot=5"):
        mmlu_accuracy(model, tokenizer, data, n_shot=5)
    with pytest.raises(InputError, match="unknown MMLU subjects"):
        mmlu_accuracy(model, tokenizer, data, subjects=["toy_history"])
    with pytest.raises(InputError, match="limit"):
        mmlu_accuracy(model, tokenizer, data, limit=0)
    with pytest.raises(InputError, match="strengths"):
        mmlu_sweep(model, tokenizer, data, [], CircuitIntervention([]))


def test_a_missing_lm_eval_names_the_extra(
    tiny_llama: Pair, per_subject_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # makes `import lm_eval` fail
    with pytest.raises(InputError, match=r"pip install 'neurosteer\[eval\]'"):
        mmlu_accuracy(*tiny_llama, load_mmlu(per_subject_dir), n_shot=0)


def test_dev_questions_are_read_per_subject(per_subject_dir: Path) -> None:
    data = load_mmlu(per_subject_dir, split="test")
    assert (data.layout, data.split) == ("per_subject", "test")
    assert {s: [q.answer for q in qs] for s, qs in data.test.items()} == {
        s: [LETTERS.index(row[5]) for row in rows["test"]] for s, rows in TOY.items()
    }
    assert {s: len(q) for s, q in data.dev.items()} == {"toy_colours": 4, "toy_sums": 4}


def test_zero_shot_works_without_dev_questions(
    tiny_llama: tuple[PreTrainedModel, PreTrainedTokenizerFast], tmp_path: Path
) -> None:
    model, tokenizer = tiny_llama
    rows = [
        "subject,question,A,B,C,D,answer",
        "toy_sums,One plus one?,2,3,4,5,A",
        "toy_sums,Two plus two?,3,4,5,6,B",
    ]
    (tmp_path / "test.csv").write_text("\n".join(rows) + "\n")
    result = mmlu_accuracy(model, tokenizer, tmp_path / "test.csv", n_shot=0)
    assert result.n == 2
    # scored by hand: the argmax of the four answer loglikelihoods after the bare header
    header = "The following are multiple choice questions (with answers) about toy sums.\n\n"
    expected = []
    for line in rows[1:]:
        row: Row = tuple(line.split(",")[1:])  # type: ignore[assignment]
        scores = [_loglik(tiny_llama, header + _block(row), f" {x}") for x in LETTERS]
        expected.append(LETTERS[scores.index(max(scores))] == row[5])
    assert result.correct == {"toy_sums": tuple(expected)}
    assert result.accuracy == sum(expected) / 2


def _tokenizer_kind(kind: str) -> PreTrainedTokenizerFast:
    """The tiny vocabulary under one family's special-token convention."""
    base = make_tokenizer()
    backend = copy.deepcopy(base.backend_tokenizer)
    specials = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD, "unk_token": UNK}
    if kind == "tiny":  # tests' own tokenizer: a template that prepends BOS
        return base
    if kind in ("llama", "llama_bos_eos", "llama_no_bos"):  # the Llama class and its switches
        return LlamaTokenizerFast(
            tokenizer_object=backend,
            add_bos_token=kind != "llama_no_bos",
            add_eos_token=kind == "llama_bos_eos",
            padding_side="left",
            **specials,
        )
    backend.post_processor = processors.TemplateProcessing(single="$A", pair="$A $B")
    if kind == "qwen2":  # no BOS token at all
        specials.pop("bos_token")
    # "gpt2": a BOS token exists but the encoding never adds it
    return PreTrainedTokenizerFast(tokenizer_object=backend, padding_side="left", **specials)


def _fed_rows(model: PreTrainedModel, run: Callable[[], object]) -> set[tuple[int, ...]]:
    """Every row of token ids the model receives while `run()` scores (right pads dropped)."""
    rows: set[tuple[int, ...]] = set()

    def capture(_module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        assert isinstance(ids, torch.Tensor)
        for row in ids.tolist():
            while row and row[-1] == PAD_ID:
                row.pop()
            rows.add(tuple(row))

    handle = model.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        run()
    finally:
        handle.remove()
    return rows


@pytest.mark.parametrize(
    ("kind", "bos_first"),
    [
        ("tiny", True),
        ("llama", True),
        ("llama_bos_eos", True),
        ("llama_no_bos", False),
        ("qwen2", False),
        ("gpt2", False),
    ],
)
def test_contexts_start_with_bos_exactly_when_the_tokenizer_adds_it(
    tiny_llama: Pair, per_subject_dir: Path, kind: str, bos_first: bool
) -> None:
    model = tiny_llama[0]
    tokenizer = _tokenizer_kind(kind)
    assert (tokenizer("x").input_ids[0] == BOS_ID) is bos_first
    subject, n_shot, limit = "toy_sums", 1, 3
    result: list[MMLUResult] = []
    rows = _fed_rows(
        model,
        lambda: result.append(
            mmlu_accuracy(
                model, tokenizer, per_subject_dir, n_shot=n_shot, subjects=[subject], limit=limit
            )
        ),
    )
    for row in rows:
        assert (row[0] == BOS_ID) is bos_first
        assert BOS_ID not in row[1:]  # never doubled
        assert EOS_ID not in row  # no special token but BOS, even where the tokenizer adds EOS
    # by hand: the rendered context and answer, encoded plainly, after one BOS where it belongs
    prefix = [BOS_ID] if bos_first else []
    expected = {
        tuple(prefix + tokenizer(context + f" {letter}", add_special_tokens=False).input_ids[:-1])
        for context in _contexts(subject, n_shot, limit)
        for letter in LETTERS
    }
    assert rows == expected
    scored = _by_hand((model, tokenizer), subject, n_shot, limit, bos_first=bos_first)
    assert result[0].correct[subject] == scored
    assert result[0].settings["bos_first"] is bos_first


def test_a_context_already_starting_with_bos_keeps_exactly_one(tiny_llama: Pair) -> None:
    from lm_eval.models.huggingface import HFLM

    from neurosteer.evaluation.mmlu import _bos_to_start_with, _with_bos_rule

    model, tokenizer = tiny_llama
    bos_id = _bos_to_start_with(tokenizer)
    assert bos_id == BOS_ID
    lm = _with_bos_rule(HFLM, bos_id)(pretrained=model, tokenizer=tokenizer, batch_size=1)
    plain = tokenizer("Hi", add_special_tokens=False).input_ids
    assert lm.tok_encode("Hi") == [BOS_ID, *plain]
    assert lm.tok_encode(f"{BOS}Hi") == [BOS_ID, *plain]
    assert lm.tok_encode("Hi", add_special_tokens=False) == plain  # explicit requests stand


def test_paired_difference_is_narrow_when_runs_agree_and_wide_when_they_do_not() -> None:
    base = {"a": [True] * 60 + [False] * 40, "b": [True, False] * 50}
    same_but_one = {"a": [False] + [True] * 59 + [False] * 40, "b": [True, False] * 50}
    delta, half = paired_difference(same_but_one, base)
    assert delta == pytest.approx(-1 / 200)
    assert 0 < half < 0.015  # one flip in 200: the interval is well under 2 points
    # the same accuracy reached by answering other questions right: a wide interval around 0
    shuffled = {"a": [False] * 40 + [True] * 60, "b": [False, True] * 50}
    delta, half = paired_difference(shuffled, base)
    assert delta == 0
    assert half > 0.1
    with pytest.raises(InputError, match="different questions"):
        paired_difference({"a": [True]}, base)
