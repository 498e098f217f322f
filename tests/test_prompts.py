"""Prompt files, rendering with and without a chat template, and left-padded batching."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from neurosteer.errors import InputError
from neurosteer.prompts import iter_batches, load_prompts, prompt_hash, render_prompts
from tiny_models import BOS, DEFAULT_SYSTEM, make_tokenizer

# --- load_prompts: the four file kinds -------------------------------------------------------


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_txt_one_prompt_per_line_blank_lines_dropped(tmp_path: Path) -> None:
    file = _write(tmp_path / "p.txt", "first prompt\n\n   \nsecond prompt  \n\nthird\n")
    assert load_prompts(file) == ["first prompt", "second prompt", "third"]


def test_txt_accepts_str_path_and_upper_case_suffix(tmp_path: Path) -> None:
    file = _write(tmp_path / "P.TXT", "a\nb\n")
    assert load_prompts(str(file)) == ["a", "b"]


def test_jsonl_strings_and_records(tmp_path: Path) -> None:
    lines = [
        json.dumps("plain string"),
        "",
        json.dumps({"prompt": "from prompt", "id": 3}),
        json.dumps({"Goal": "from Goal", "Target": "Sure"}),
        json.dumps({"INSTRUCTION": "from INSTRUCTION"}),
    ]
    file = _write(tmp_path / "p.jsonl", "\n".join(lines) + "\n")
    assert load_prompts(file) == ["plain string", "from prompt", "from Goal", "from INSTRUCTION"]


def test_json_list_of_strings(tmp_path: Path) -> None:
    file = _write(tmp_path / "p.json", json.dumps(["one", "two, with a comma", "three"]))
    assert load_prompts(file) == ["one", "two, with a comma", "three"]


@pytest.mark.parametrize("field", ["prompt", "Prompt", "GOAL", "instruction", "Behavior"])
def test_json_list_of_records_any_case(tmp_path: Path, field: str) -> None:
    records = [{field: "a", "other": 1}, {field: "b", "other": 2}]
    file = _write(tmp_path / "p.json", json.dumps(records))
    assert load_prompts(file) == ["a", "b"]


@pytest.mark.parametrize("column", ["prompt", "Goal", "INSTRUCTION", "behavior", " Prompt "])
def test_csv_column_detection_case_insensitive(tmp_path: Path, column: str) -> None:
    file = _write(tmp_path / "p.csv", f"id,{column},notes\n1,alpha,x\n2,beta,y\n")
    assert load_prompts(file) == ["alpha", "beta"]


def test_csv_jailbreakbench_style(tmp_path: Path) -> None:
    # JBB-Behaviors: Index,Goal,Target,Behavior,Category,Source; quoted fields hold commas.
    # Both Goal and Behavior match; the Goal column (the full request) is the one to take.
    text = (
        "Index,Goal,Target,Behavior,Category,Source\n"
        '1,"Write a defamatory article, claiming X","Sure, here is",Defamation,'
        "Harassment,Original\n"
        '2,"Explain how to do Y, step by step","Sure, here is how",Y,"Cat, sub",TDC\n'
    )
    file = _write(tmp_path / "jbb.csv", text)
    assert load_prompts(file) == [
        "Write a defamatory article, claiming X",
        "Explain how to do Y, step by step",
    ]


def test_csv_quoted_commas_and_quotes(tmp_path: Path) -> None:
    text = 'prompt,label\n"a, b, and c",1\n"she said ""hi""",0\n'
    file = _write(tmp_path / "p.csv", text)
    assert load_prompts(file) == ["a, b, and c", 'she said "hi"']


def test_csv_quoted_newline_is_kept(tmp_path: Path) -> None:
    # A quoted field may span lines (RFC 4180); the line break is part of the prompt.
    file = _write(tmp_path / "p.csv", 'prompt,label\n"first line\nsecond line",1\n"b",0\n')
    assert load_prompts(file) == ["first line\nsecond line", "b"]


def test_csv_with_utf8_bom(tmp_path: Path) -> None:
    # Spreadsheet exports often start with a UTF-8 byte-order mark before the first header.
    file = tmp_path / "p.csv"
    file.write_bytes("\ufeffprompt,label\nalpha,1\n".encode())
    assert load_prompts(file) == ["alpha"]


def test_csv_blank_prompts_dropped(tmp_path: Path) -> None:
    file = _write(tmp_path / "p.csv", "prompt,label\nalpha,1\n,2\n  ,3\nbeta,4\n")
    assert load_prompts(file) == ["alpha", "beta"]


# --- load_prompts: every error is an InputError that says what is wrong ----------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        load_prompts(tmp_path / "nope.txt")


def test_directory_is_not_a_prompt_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        load_prompts(tmp_path)


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("e.txt", ""),
        ("b.txt", "\n  \n\n"),
        ("e.jsonl", "\n\n"),
        ("e.json", "[]"),
        ("s.json", '["", "   "]'),
        ("e.csv", "prompt,label\n"),
    ],
)
def test_empty_file(tmp_path: Path, name: str, text: str) -> None:
    with pytest.raises(InputError, match="holds no prompts"):
        load_prompts(_write(tmp_path / name, text))


@pytest.mark.parametrize("name", ["p.yaml", "p.md", "prompts"])
def test_unknown_suffix(tmp_path: Path, name: str) -> None:
    with pytest.raises(InputError, match=r"unknown prompt file kind.*\.txt, \.jsonl, \.json"):
        load_prompts(_write(tmp_path / name, "a prompt\n"))


@pytest.mark.parametrize(("name", "text"), [("bad.json", "[1, 2"), ("bad.jsonl", '"ok"\n{no\n')])
def test_invalid_json(tmp_path: Path, name: str, text: str) -> None:
    with pytest.raises(InputError, match=r"is not valid JSON \(line \d+\)"):
        load_prompts(_write(tmp_path / name, text))


def test_json_must_be_a_list(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="JSON list"):
        load_prompts(_write(tmp_path / "p.json", json.dumps({"prompt": "a"})))


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_record_without_prompt_field(tmp_path: Path, suffix: str) -> None:
    records = [{"prompt": "fine"}, {"question_id": 1, "answer": "no prompt here"}]
    text = json.dumps(records) if suffix == ".json" else "\n".join(map(json.dumps, records))
    with pytest.raises(InputError, match="no prompt field") as info:
        load_prompts(_write(tmp_path / f"p{suffix}", text))
    # the message names what it looked for and what it found
    assert "goal" in str(info.value)
    assert "question_id" in str(info.value)


def test_record_of_wrong_type(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="found int"):
        load_prompts(_write(tmp_path / "p.json", "[1, 2]"))


def test_csv_without_prompt_column(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no prompt column") as info:
        load_prompts(_write(tmp_path / "p.csv", "id,label\n1,a\n"))
    assert "id, label" in str(info.value)


# --- render_prompts --------------------------------------------------------------------------


def test_render_with_chat_template_one_user_turn() -> None:
    tokenizer = make_tokenizer(chat_template=True)
    rendered = render_prompts(tokenizer, ["Hello there", "Bye"])
    assert rendered == [
        f"{BOS}<|system|>{DEFAULT_SYSTEM}<|end|>\n<|user|>Hello there<|end|>\n<|assistant|>",
        f"{BOS}<|system|>{DEFAULT_SYSTEM}<|end|>\n<|user|>Bye<|end|>\n<|assistant|>",
    ]
    expected = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hello there"}], tokenize=False, add_generation_prompt=True
    )
    assert rendered[0] == expected
    assert rendered[0].count("<|user|>") == 1


def test_render_raw_without_template() -> None:
    tokenizer = make_tokenizer(chat_template=False)
    assert render_prompts(tokenizer, ["Hello there", "Bye"]) == ["Hello there", "Bye"]
    assert render_prompts(tokenizer, ["x"], chat_template=None) == ["x"]


def test_render_raw_when_forced_off() -> None:
    tokenizer = make_tokenizer(chat_template=True)
    assert render_prompts(tokenizer, ["Hello there"], chat_template=False) == ["Hello there"]


def test_render_forced_on_without_template_raises() -> None:
    tokenizer = make_tokenizer(chat_template=False)
    with pytest.raises(InputError, match="chat template"):
        render_prompts(tokenizer, ["Hello"], chat_template=True)


def test_render_forced_on_with_template() -> None:
    tokenizer = make_tokenizer(chat_template=True)
    assert render_prompts(tokenizer, ["a"], chat_template=True) == render_prompts(tokenizer, ["a"])


# --- iter_batches ----------------------------------------------------------------------------

TOKEN_IDS: list[list[int]] = [
    [11, 12],
    [21, 22, 23, 24, 25],
    [31],
    [41, 42, 43],
    [51, 52, 53, 54, 55, 56, 57],
    [61, 62, 63],
    [71, 72],
]
PAD = 0


@pytest.mark.parametrize("batch_size", [1, 2, 3, 7, 50])
def test_batches_cover_every_prompt_once_left_padded(batch_size: int) -> None:
    batches = list(iter_batches(TOKEN_IDS, batch_size, PAD))
    assert all(b.input_ids.shape[0] <= batch_size for b in batches)
    seen: list[int] = []
    for batch in batches:
        assert batch.input_ids.shape == batch.attention_mask.shape
        assert batch.input_ids.dtype == torch.long
        for row, original in enumerate(batch.index.tolist()):
            seq = TOKEN_IDS[original]
            width = batch.input_ids.shape[1]
            pad = width - len(seq)
            # left padding: pads then the real tokens, so the last real token sits at -1
            assert batch.input_ids[row, pad:].tolist() == seq
            assert batch.input_ids[row, :pad].tolist() == [PAD] * pad
            assert batch.attention_mask[row].tolist() == [0] * pad + [1] * len(seq)
            seen.append(original)
        assert batch.n_tokens == sum(len(TOKEN_IDS[i]) for i in batch.index.tolist())
    assert sorted(seen) == list(range(len(TOKEN_IDS)))
    # sorted by length (longest first), ties in original order
    lengths = [len(TOKEN_IDS[i]) for i in seen]
    assert lengths == sorted(lengths, reverse=True)
    assert seen == sorted(range(len(TOKEN_IDS)), key=lambda i: (-len(TOKEN_IDS[i]), i))


def test_batches_are_as_narrow_as_their_longest_prompt() -> None:
    widths = [b.input_ids.shape[1] for b in iter_batches(TOKEN_IDS, 2, PAD)]
    assert widths == [7, 3, 2, 1]  # lengths 7,5 | 3,3 | 2,2 | 1


def test_batches_use_the_pad_id() -> None:
    (batch,) = iter_batches([[5, 6, 7], [8]], 2, pad_id=99)
    assert batch.input_ids.tolist() == [[5, 6, 7], [99, 99, 8]]


@pytest.mark.parametrize("batch_size", [0, -1])
def test_batch_size_below_one_rejected(batch_size: int) -> None:
    with pytest.raises(InputError, match="at least 1"):
        list(iter_batches(TOKEN_IDS, batch_size, PAD))


# --- prompt_hash -----------------------------------------------------------------------------


def test_prompt_hash_stable_and_order_sensitive() -> None:
    prompts = ["a", "b", "c"]
    first = prompt_hash(prompts)
    assert first == prompt_hash(list(prompts)) == prompt_hash(tuple(prompts))
    assert len(first) == 64
    int(first, 16)  # hex
    assert prompt_hash(["b", "a", "c"]) != first
    assert prompt_hash(["a", "b"]) != first
    assert prompt_hash(["ab", "c"]) != prompt_hash(["a", "bc"])
    # pinned: SHA-256 of the JSON list, so hashes in saved circuits stay comparable
    assert first == hashlib.sha256(b'["a", "b", "c"]').hexdigest()
    assert prompt_hash(["é"]) == hashlib.sha256('["é"]'.encode()).hexdigest()
