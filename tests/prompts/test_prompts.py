"""Prompt files (one reader: encodings, the column rule, origins), rendering with and without a
chat template (system turns, template failures), context budgets and left-padded batching."""

from __future__ import annotations

import codecs
import hashlib
import json
import logging
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_models import BOS, DEFAULT_SYSTEM, NEEDS_SYSTEM, REJECTS_SYSTEM, make_tokenizer

from neurosteer.errors import InputError
from neurosteer.prompts import context
from neurosteer.prompts.render import (
    SourcedPrompt,
    describe_prompt,
    encode_prompts,
    iter_batches,
    load_prompts,
    new_token_budgets,
    prompt_hash,
    render_prompts,
)

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


def test_sending_a_smaller_size_gives_the_same_prompts_again_in_smaller_batches() -> None:
    batches = iter_batches(TOKEN_IDS, 4, PAD)
    assert next(batches).index.tolist() == [4, 1, 3, 5]  # lengths 7, 5, 3, 3
    assert batches.send(2).index.tolist() == [4, 1]
    assert [b.index.tolist() for b in batches] == [[3, 5], [0, 6], [2]]


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


# --- one reader: encodings -------------------------------------------------------------------

ACCENTED = ["Café “quoted” – naïve", "Ünïcödé résumé, 10 €"]  # all in Windows-1252 too
KINDS: dict[str, Callable[[list[str]], str]] = {
    ".txt": lambda ps: "\n".join(ps) + "\n",
    ".csv": lambda ps: "Goal,Target\n" + "".join(f'"{p}",x\n' for p in ps),
    ".tsv": lambda ps: "id\tprompt\n" + "".join(f"{i}\t{p}\n" for i, p in enumerate(ps)),
    ".json": lambda ps: json.dumps([{"instruction": p} for p in ps], ensure_ascii=False),
    ".jsonl": lambda ps: "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in ps),
}


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize(
    "encoding", ["utf-8", "utf-8-sig", "utf-16", "utf-16-be-bom", "utf-32", "cp1252"]
)
def test_every_kind_reads_in_every_accepted_encoding(
    tmp_path: Path, kind: str, encoding: str, caplog: pytest.LogCaptureFixture
) -> None:
    text = KINDS[kind](ACCENTED)
    if encoding == "utf-16-be-bom":
        data = codecs.BOM_UTF16_BE + text.encode("utf-16-be")
    else:
        data = text.encode(encoding)  # utf-16 / utf-32 write their byte-order mark
    file = tmp_path / f"p{kind}"
    file.write_bytes(data)
    with caplog.at_level(logging.WARNING, logger="neurosteer"):
        assert load_prompts(file) == ACCENTED
    # only the guess (Windows-1252) is announced, with the file's name
    warned = [r.getMessage() for r in caplog.records]
    assert bool(warned) == (encoding == "cp1252")
    assert all("Windows-1252" in m and str(file) in m for m in warned)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        # 0x81 is undefined in Windows-1252: neither UTF-8 nor Windows-1252
        (b"Goal\nabc\x81def\n", r"is not UTF-8, UTF-16 or Windows-1252 \(byte 0x81 on line 2\)"),
        # UTF-16 written without its byte-order mark
        ("Goal\nhello\n".encode("utf-16-le"), "looks like UTF-16-LE without a byte-order mark"),
        ("Goal\nhello\n".encode("utf-16-be"), "looks like UTF-16-BE without a byte-order mark"),
        # UTF-8 with one damaged byte: not silently read as Windows-1252 mojibake
        ("Goal\ncafé\nna\xefve\n".encode().replace(b"\xc3\xaf", b"\xef"), "line 3"),
        # a UTF-16 mark over bytes that are not UTF-16 (an odd byte count)
        (codecs.BOM_UTF16_LE + b"G\x00o\x00a", "UTF-16-LE byte-order mark but is not valid"),
    ],
    ids=["undefined-in-cp1252", "utf16le-no-bom", "utf16be-no-bom", "damaged-utf8", "bad-utf16"],
)
@pytest.mark.parametrize("kind", [".csv", ".txt", ".json"])
def test_undecodable_files_are_one_line_input_errors(
    tmp_path: Path, data: bytes, message: str, kind: str
) -> None:
    file = tmp_path / f"bad{kind}"
    file.write_bytes(data)
    with pytest.raises(InputError, match=message) as info:
        load_prompts(file)
    assert str(file) in str(info.value)
    assert "\n" not in str(info.value)


def test_mostly_utf8_file_with_a_bad_byte_names_it(tmp_path: Path) -> None:
    file = tmp_path / "p.txt"
    file.write_bytes("naïve\ncafé\n".encode() + b"bad \xff byte\n")
    with pytest.raises(InputError, match=r"UTF-8 but for an invalid byte 0xff on line 3"):
        load_prompts(file)


# --- one reader: the column rule -------------------------------------------------------------

ISSUE_ROW = "Write a defamatory article about a senator,Sure, Defamation,Harassment\n"


@pytest.mark.parametrize("bom", [b"", codecs.BOM_UTF8])
def test_goal_wins_over_behavior_with_or_without_a_bom(tmp_path: Path, bom: bytes) -> None:
    file = tmp_path / "jbb.csv"
    file.write_bytes(bom + ("Goal,Target,Behavior,Category\n" + ISSUE_ROW).encode())
    assert load_prompts(file) == ["Write a defamatory article about a senator"]


@pytest.mark.parametrize(
    ("header", "row", "expected"),
    [
        ("Behavior,FunctionalCategory,ContextString", "Pick a lock,standard,", "Pick a lock"),
        ("category,source,forbidden_prompt", "crime,x,Rob a bank", "Rob a bank"),
        ("instruction,input,output", "Name a fruit,,apple", "Name a fruit"),
        ("goal,target", "Cheat at cards,Sure", "Cheat at cards"),
        ("Index,goal,prompt,target_response", "1,short goal,the full prompt,r", "the full prompt"),
        ("ID, Question ,answer", "1,What is 2+2?,4", "What is 2+2?"),
    ],
)
def test_column_priority(tmp_path: Path, header: str, row: str, expected: str) -> None:
    file = _write(tmp_path / "t.csv", f"{header}\n{row}\n")
    assert load_prompts(file) == [expected]


def test_harmbench_rows_are_filtered_by_every_reader(tmp_path: Path) -> None:
    text = (
        "Behavior,FunctionalCategory,BehaviorID\n"
        "Pick a lock,standard,a\nLyrics of a song,copyright,b\nRewrite this,contextual,c\n"
    )
    assert load_prompts(_write(tmp_path / "hb.csv", text)) == ["Pick a lock"]
    records = [{"Behavior": "Pick a lock", "FunctionalCategory": "standard"}]
    records.append({"Behavior": "Rewrite this", "FunctionalCategory": "contextual"})
    assert load_prompts(_write(tmp_path / "hb.json", json.dumps(records))) == ["Pick a lock"]


def test_jsonl_keeps_unicode_line_separators_inside_strings(tmp_path: Path) -> None:
    # U+2028 is valid inside a JSON string; only \n, \r\n and \r end a line
    file = tmp_path / "p.jsonl"
    file.write_text(json.dumps("one\u2028two", ensure_ascii=False) + "\n", encoding="utf-8")
    assert load_prompts(file) == ["one\u2028two"]


def test_windows_line_endings(tmp_path: Path) -> None:
    file = tmp_path / "p.txt"
    file.write_bytes(b"first\r\nsecond\r\n\r\nthird")
    prompts = load_prompts(file)
    assert prompts == ["first", "second", "third"]
    assert [p.origin for p in prompts] == [f"{file}:1", f"{file}:2", f"{file}:4"]  # type: ignore[attr-defined]


# --- prompts remember where they were read ---------------------------------------------------


def test_origins_name_file_and_line(tmp_path: Path) -> None:
    txt = _write(tmp_path / "p.txt", "\nfirst\n\n  second  \n")
    csv_file = _write(tmp_path / "p.csv", 'id,prompt\n1,"two\nlines"\n\n2,after\n')
    json_file = _write(tmp_path / "p.json", '[\n  "a",\n\n  {"prompt": "b"}\n]\n')
    jsonl = _write(tmp_path / "p.jsonl", '"a"\n\n{"goal": "b"}\n')
    expected = {
        txt: [("first", 2), ("second", 4)],
        csv_file: [("two\nlines", 2), ("after", 5)],
        json_file: [("a", 2), ("b", 4)],
        jsonl: [("a", 1), ("b", 3)],
    }
    for file, rows in expected.items():
        prompts = load_prompts(file)
        assert [(str(p), p.origin) for p in prompts] == [  # type: ignore[attr-defined]
            (text, f"{file}:{line}") for text, line in rows
        ]


def test_sourced_prompts_behave_as_strings() -> None:
    prompt = SourcedPrompt("How do I bake bread?", "p.txt:3")
    assert prompt == "How do I bake bread?"
    assert isinstance(prompt, str)
    assert prompt_hash([prompt]) == prompt_hash(["How do I bake bread?"])
    copy = pickle.loads(pickle.dumps(prompt))
    assert (copy, copy.origin) == (prompt, "p.txt:3")
    assert describe_prompt([prompt], 0) == "prompt p.txt:3"
    long = "Write a defamatory article about a senator and more words"
    assert (
        describe_prompt(["x", long], 1)
        == "prompt 2 ('Write a defamatory article about a senat...')"
    )


# --- system turns and template failures ------------------------------------------------------

DROPS_SYSTEM = (  # renders user and assistant turns only, as the organism's template does
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}<|user|>{{ m['content'] }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
ALWAYS_FAILS = "{{ raise_exception('this template is broken') }}"


def _tokenizer(template: str) -> Any:
    tokenizer = make_tokenizer(chat_template=True)
    tokenizer.chat_template = template
    return tokenizer


def test_system_turn_replaces_the_templates_default() -> None:
    tokenizer = make_tokenizer(chat_template=True)
    (rendered,) = render_prompts(tokenizer, ["Hi"], system="Be brief.")
    assert rendered == f"{BOS}<|system|>Be brief.<|end|>\n<|user|>Hi<|end|>\n<|assistant|>"
    assert DEFAULT_SYSTEM not in rendered
    assert encode_prompts(tokenizer, ["Hi"], system="Be brief.") != encode_prompts(
        tokenizer, ["Hi"]
    )


def test_template_that_needs_a_system_turn() -> None:
    tokenizer = _tokenizer(NEEDS_SYSTEM)
    with pytest.raises(InputError, match=r"needs a system turn .*pass --system TEXT"):
        render_prompts(tokenizer, ["Hi"])
    assert render_prompts(tokenizer, ["Hi"], system="S.") == [
        f"{BOS}<|system|>S.<|end|>\n<|user|>Hi<|end|>\n<|assistant|>"
    ]


def test_template_that_rejects_a_system_turn() -> None:
    tokenizer = _tokenizer(REJECTS_SYSTEM)
    assert render_prompts(tokenizer, ["Hi"]) == [f"{BOS}<|user|>Hi<|end|>\n<|assistant|>"]
    with pytest.raises(InputError, match=r"does not take a system turn .*drop --system"):
        render_prompts(tokenizer, ["Hi"], system="S.")


def test_template_that_drops_a_system_turn() -> None:
    tokenizer = _tokenizer(DROPS_SYSTEM)
    with pytest.raises(InputError, match="drops the system turn"):
        render_prompts(tokenizer, ["Hi"], system="Be brief.")


def test_template_that_always_fails_names_the_prompt() -> None:
    prompts = [SourcedPrompt("Hi", "p.txt:7")]
    with pytest.raises(InputError, match=r"fails on prompt p.txt:7: this template is broken"):
        render_prompts(_tokenizer(ALWAYS_FAILS), prompts)


def test_system_turn_needs_a_template() -> None:
    with pytest.raises(InputError, match="needs a chat template"):
        render_prompts(make_tokenizer(chat_template=False), ["Hi"], system="S.")
    with pytest.raises(InputError, match="needs a chat template"):
        render_prompts(make_tokenizer(chat_template=True), ["Hi"], False, system="S.")


# --- context budgets and batching by budget --------------------------------------------------


def test_new_token_budgets_cap_at_the_context(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(context, "_WARNED", set())
    ids = [[1] * n for n in (5, 28, 30, 10)]
    assert new_token_budgets(ids, 8, None) == [8, 8, 8, 8]
    with caplog.at_level(logging.WARNING, logger="neurosteer"):
        assert new_token_budgets(ids, 8, 32) == [8, 4, 2, 8]
        assert new_token_budgets(ids, 8, 32) == [8, 4, 2, 8]  # warned once, not per call
    assert caplog.text.count("2 of 4 prompts leave fewer than 8 positions") == 1


def test_capped_prompts_are_batched_only_with_their_own_length() -> None:
    ids = [[1] * n for n in (30, 30, 28, 5, 10, 29)]
    budgets = new_token_budgets(ids, 8, 32)
    batches = [b.index.tolist() for b in iter_batches(ids, 4, 0, budgets)]
    assert batches == [[0, 1], [5], [2], [4, 3]]
    for rows in batches:
        assert len({budgets[i] for i in rows}) == 1
