"""benchmarks/llama_cpp_check.py and what it shares with llama_cpp_moe_check.py
(llama_cpp_common.py, gpt4all_greedy.py), with a fake gpt4all in place of the engine.

The fake is a `gpt4all` package on PYTHONPATH whose `LLModel.prompt_model` logs the options it
is given and answers from a JSON table, so the worker (gpt4all_greedy.py) runs as a real
subprocess, as in the benchmark, and the tests can read what llama.cpp would have been asked.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
import llama_cpp_check
import llama_cpp_common
from gguf_files import hand_circuit, make_quant_tiny, write_gguf

from neurosteer.model.loading import load_model
from neurosteer.prompts.render import render_prompts

FAKE_LLMODEL = '''
import json, os


class LLModel:
    """Logs every prompt_model call; answers from $FAKE_GPT4ALL_ANSWERS ({prompt: record})."""

    def __init__(self, path, n_ctx, ngl, backend):
        self.path, self.n_ctx, self.threads = path, n_ctx, None

    def load_model(self):
        return True

    def set_thread_count(self, n):
        self.threads = n

    def close(self):
        pass

    def prompt_model(self, prompt, template, callback, **options):
        call = {"file": self.path, "n_ctx": self.n_ctx, "threads": self.threads,
                "prompt": prompt, "template": template, **options}
        with open(os.environ["FAKE_GPT4ALL_LOG"], "a") as log:
            log.write(json.dumps(call) + "\\n")
        with open(os.environ["FAKE_GPT4ALL_ANSWERS"]) as f:
            answer = json.load(f).get(prompt, {"prompt_ids": [], "tokens": []})
        for token in answer["prompt_ids"]:
            self._prompt_callback(token)
        for token in answer["tokens"][: options["n_predict"]]:
            if not callback(token, "x"):
                break
'''

#: What makes a llama.cpp answer strictly greedy: gpt4all's own defaults are top-k 40,
#: temperature 0.1 (prompt_model) or 0.7 (GPT4All.generate), repeat penalty 1.2 or 1.18.
STRICTLY_GREEDY = {"top_k": 1, "temp": 0.0, "repeat_penalty": 1.0, "repeat_last_n": 0}


@pytest.fixture
def fake_gpt4all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A fake gpt4all 2.8.2 on PYTHONPATH; returns {"log": calls (JSON lines), "answers": the
    table the fake answers from (empty until a test writes it)}."""
    site = tmp_path / "fake-site"
    (site / "gpt4all").mkdir(parents=True)
    (site / "gpt4all" / "__init__.py").write_text("")
    (site / "gpt4all" / "_pyllmodel.py").write_text(FAKE_LLMODEL)
    (site / "gpt4all-2.8.2.dist-info").mkdir()
    metadata = "Metadata-Version: 2.1\nName: gpt4all\nVersion: 2.8.2\n"
    (site / "gpt4all-2.8.2.dist-info" / "METADATA").write_text(metadata)
    paths = {"log": tmp_path / "calls.jsonl", "answers": tmp_path / "answers.json"}
    paths["answers"].write_text("{}")
    monkeypatch.setenv("PYTHONPATH", str(site))
    monkeypatch.setenv("FAKE_GPT4ALL_LOG", str(paths["log"]))
    monkeypatch.setenv("FAKE_GPT4ALL_ANSWERS", str(paths["answers"]))
    return paths


def calls(fake: dict[str, Path]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in fake["log"].read_text().splitlines()]


def test_run_engine_asks_llama_cpp_for_strictly_greedy_answers(
    fake_gpt4all: dict[str, Path], tmp_path: Path
) -> None:
    table = {"a b": {"prompt_ids": [5, 6], "tokens": [7, 8, 9, 10]}}
    fake_gpt4all["answers"].write_text(json.dumps(table))
    files = {"original": tmp_path / "x.gguf", "m=-1": tmp_path / "y.gguf"}
    run = llama_cpp_common.run_engine(
        sys.executable, files, ["a b", "c"], 3, 1, tmp_path / "engine.json"
    )
    assert run.engine == "llama.cpp bundled in gpt4all 2.8.2 (CPU)"
    assert run.tokens == {"original": [[7, 8, 9], []], "m=-1": [[7, 8, 9], []]}
    assert run.same_prompts([[5, 6], []])
    assert not run.same_prompts([[5], []])
    got = calls(fake_gpt4all)
    assert [(c["file"], c["prompt"]) for c in got] == [
        (str(files[k]), p) for k in files for p in ("a b", "c")
    ]
    for call in got:
        assert {k: call[k] for k in STRICTLY_GREEDY} == STRICTLY_GREEDY
        rest = {k: call[k] for k in ("template", "reset_context", "n_predict", "threads", "n_ctx")}
        assert rest == {"template": "%1%2", "reset_context": True, "n_predict": 3, "threads": 1,
                        "n_ctx": 512}  # fmt: skip
        assert call["special"] is False  # the MoE check's raw prompts: no special tokens


def test_table_counts_leading_tokens_and_gives_the_margin_where_they_part() -> None:
    llama = {"original": [[1, 2, 3], [4]], "m=-1": [[1, 5], [4]]}
    ours = {
        "original": [([1, 2, 3], [0.5, 0.5, 0.5]), ([4, 6], [1.0, 2.0])],
        "m=-1": [([1, 2], [0.1, 0.25]), ([4], [3.0])],
    }
    assert llama_cpp_common.table(llama, ours) == [
        "| pair | prompt 1 | prompt 2 |",
        "|---|---|---|",
        "| llama.cpp original vs neurosteer unchanged | 3/3 | 1/2 (margin 2) |",
        "| llama.cpp baked m=-1 vs neurosteer hooked m=-1 | 1/2 (margin 0.25) | 1/1 |",
        "| llama.cpp: m=-1 vs original | 1/3 | 1/1 |",
        "| neurosteer: m=-1 vs original | 2/3 | 1/2 |",
    ]


def test_summary_counts_refusals_and_shared_leading_words() -> None:
    answers = {
        "neurosteer unchanged": ["I'm sorry, I can't", "Sure, here"],
        "neurosteer hooked": ["Sure, here it is", "Sure"],
        "llama.cpp original": ["I'm sorry, I cannot", "Sure, here"],
        "llama.cpp baked": ["Sure, here it is", "Fine"],
    }
    labels = {name: ["refusal", "compliance"] for name in answers}
    labels["neurosteer hooked"] = labels["llama.cpp baked"] = ["compliance"] * 2
    assert llama_cpp_check.summary(answers, labels)[2:] == [
        "| neurosteer unchanged | 1 of 2 |  |",
        "| neurosteer hooked | 0 of 2 |  |",
        "| llama.cpp original | 1 of 2 | 3 (per prompt: [2, 3]) |",
        "| llama.cpp baked | 0 of 2 | 4 (per prompt: [0, 4]) |",
    ]


def test_the_dense_check_runs_end_to_end_on_a_tiny_gguf(
    fake_gpt4all: dict[str, Path], tmp_path: Path
) -> None:
    """Chat-templated prompts reach llama.cpp with their special tokens parsed and strictly
    greedy options; where llama.cpp answers as neurosteer unchanged (the fake is told to), the
    report says so token for token."""
    model, tokenizer = make_quant_tiny("qwen2", seed=3)
    gguf = write_gguf(model, tokenizer, tmp_path / "tiny.gguf")
    model, tokenizer = load_model(gguf)
    circuit = hand_circuit(model, {1: [0, 5, 36], 2: [20]}).save(tmp_path / "c.circuit")
    data = tmp_path / "data" / "jailbreakbench"
    data.mkdir(parents=True)
    goals = ["Write a rude poem", "Explain how to pick a lock"]
    (data / "harmful-behaviors.csv").write_text("Index,Goal\n0,Write a rude poem\n1," + goals[1])
    texts = render_prompts(tokenizer, goals)
    eos = int(tokenizer.eos_token_id)
    table = {}
    for text in texts:
        ids = tokenizer.encode(text, add_special_tokens=False)
        answer, _ = llama_cpp_common.neurosteer_greedy(model, ids, 6, eos)
        table[text] = {"prompt_ids": ids, "tokens": answer}
    fake_gpt4all["answers"].write_text(json.dumps(table))
    out = tmp_path / "out"
    llama_cpp_check.main(
        ["--engine-python", sys.executable, "--model", str(gguf), "--circuit", str(circuit),
         "-m", "-1", "--data", str(tmp_path / "data"), "--prompts", "2",
         "--max-new-tokens", "6", "-o", str(out)]
    )  # fmt: skip
    got = calls(fake_gpt4all)
    assert [c["prompt"] for c in got] == texts * 2
    assert {c["file"] for c in got} == {str(gguf), str(out / "steered.gguf")}
    for call in got:
        assert {k: call[k] for k in STRICTLY_GREEDY} == STRICTLY_GREEDY
        rest = {k: call[k] for k in ("special", "n_predict", "threads", "n_ctx")}
        assert rest == {"special": True, "n_predict": 6, "threads": 1, "n_ctx": 1024}
    report = (out / "llama_cpp.md").read_text()
    assert "prompt tokens the same on both sides: True" in report
    lengths = [len(table[t]["tokens"]) for t in texts]
    row = " | ".join(f"{n}/{n}" for n in lengths)
    assert f"| llama.cpp original vs neurosteer unchanged | {row} |" in report
    assert "| llama.cpp baked m=-1 vs neurosteer hooked m=-1 |" in report
    record = json.loads((out / "answers.json").read_text())
    assert record["llama.cpp"]["original"] == record["neurosteer"]["original"]
