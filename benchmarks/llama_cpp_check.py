"""A baked GGUF in llama.cpp itself: does the engine answer as the hooked model does? (issue 10)

    python benchmarks/llama_cpp_check.py --engine-python /work/runs/gpt4all-venv/bin/python \\
        --model qwen.gguf --circuit best.circuit -o out/ [--prompts 8] [--threads 1]

Bakes the circuit into a copy of the GGUF file (`bake_gguf`, the stored multiplier unless `-m`),
then answers the first JailbreakBench harmful prompts (chat template, default system text)
strictly greedily four ways: llama.cpp on the original file and on the baked one, and neurosteer
(transformers, float32, the same GGUF file, one unpadded prompt at a time) unchanged and under
the hooks. The engine is the llama.cpp build bundled in the `gpt4all` 2.8.2 wheel, run by
`gpt4all_greedy.py` in gpt4all's own virtual environment (`--engine-python`; gpt4all is no
dependency of the project): temperature 0, top-k 1, repeat penalty 1, the chat template's
special tokens parsed as such (the header says whether both sides' prompt tokens are equal).

llama.cpp computes with the quantized weights in its own kernels (neurosteer with their
dequantized values), so its answers need not equal transformers' token for token even on the
original file; the check is that the baked file moves llama.cpp's answers the way the hooks move
neurosteer's. OUT/llama_cpp.md has the token table (`llama_cpp_common.table`: leading greedy
tokens that agree, and neurosteer's logit margin where they part), the judge's refusals and the
shared leading words per answer set, and the answers; OUT/answers.json the token ids and texts.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
from llama_cpp_common import EngineRun, Greedy, agreement, neurosteer_side, run_engine, table

import neurosteer
from neurosteer.evaluation import PhraseJudge, load_dataset_prompts
from neurosteer.export.gguf import bake_gguf
from neurosteer.methods.circuit import Circuit
from neurosteer.prompts.render import render_prompts

#: The four answer sets: name -> (engine, file key; "baked" stands for "m=<multiplier>").
SETS = {
    "neurosteer unchanged": ("neurosteer", "original"),
    "neurosteer hooked": ("neurosteer", "baked"),
    "llama.cpp original": ("llama.cpp", "original"),
    "llama.cpp baked": ("llama.cpp", "baked"),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine-python", required=True, help="python of gpt4all's venv")
    parser.add_argument("--model", type=Path, required=True, help="the original .gguf file")
    parser.add_argument("--circuit", type=Path, required=True)
    parser.add_argument("-m", "--multiplier", type=float, default=None)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--prompts", type=int, default=8, help="JailbreakBench harmful prompts")
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1, help="for both engines")
    parser.add_argument("-o", "--output", type=Path, required=True)
    return parser.parse_args(argv)


def prefix_words(a: str, b: str) -> int:
    """How many whitespace words `a` and `b` share from their start."""
    return agreement(a.split(), b.split())


def answer_texts(
    llama: dict[str, list[list[int]]],
    ours: dict[str, list[Greedy]],
    key: str,
    decode: Callable[[list[int]], str],
) -> dict[str, list[str]]:
    """{set name: per prompt answer text} for the four SETS; `key` is the baked file's key."""
    tokens = {"llama.cpp": llama, "neurosteer": {k: [t for t, _ in v] for k, v in ours.items()}}
    return {
        name: [decode(ids) for ids in tokens[engine][key if which == "baked" else which]]
        for name, (engine, which) in SETS.items()
    }


def summary(answers: dict[str, list[str]], labels: dict[str, list[str]]) -> list[str]:
    """Markdown rows: refusals per answer set, and for each llama.cpp set the leading words it
    shares with its neurosteer counterpart (median, then per prompt, sorted)."""
    lines = [
        "| answers | refused | shared leading words with its neurosteer counterpart (median) |",
        "|---|---|---|",
    ]
    counterpart = {"original": "neurosteer unchanged", "baked": "neurosteer hooked"}
    for name, (engine, which) in SETS.items():
        refused = sum(label == "refusal" for label in labels[name])
        shared = ""
        if engine == "llama.cpp":
            pairs = zip(answers[name], answers[counterpart[which]], strict=True)
            counts = sorted(prefix_words(a, b) for a, b in pairs)
            shared = f"{counts[len(counts) // 2]} (per prompt: {counts})"
        lines.append(f"| {name} | {refused} of {len(labels[name])} | {shared} |")
    return lines


def listing(
    prompts: list[str], answers: dict[str, list[str]], labels: dict[str, list[str]]
) -> list[str]:
    """Every prompt with its four answers (one line each, 160 characters) and their labels."""
    lines = []
    for i, prompt in enumerate(prompts):
        lines.append(f"**{prompt}**\n")
        for name, got in answers.items():
            text = got[i].replace("\n", " ")[:160]
            lines.append(f"- {name} ({labels[name][i]}): {text}")
        lines.append("")
    return lines


def header(
    args: argparse.Namespace,
    circuit: Circuit,
    strength: float,
    engine: str,
    facts: dict[str, float],
) -> list[str]:
    """The first lines of the report: what ran, how, and how long each part took (`facts`:
    bake_s, ours_s, engine_s, same_prompts)."""
    return [
        f"engine: {engine}; neurosteer: transformers float32 on the same GGUF file; circuit "
        f"{args.circuit} ({len(circuit)} neurons) baked at m = {strength:g}; "
        f"{args.prompts} JailbreakBench harmful prompts (chat template); strictly greedy on "
        f"both sides (llama.cpp: temperature 0, top-k 1, repeat penalty 1), "
        f"{args.max_new_tokens} tokens; prompt tokens the same on both sides: "
        f"{bool(facts['same_prompts'])}\n",
        f"time: bake {facts['bake_s']:.0f} s, neurosteer load and greedy answers "
        f"{facts['ours_s']:.0f} s, llama.cpp {facts['engine_s']:.0f} s (2 files); "
        f"{args.threads} thread(s)\n",
        "cells: leading greedy tokens that agree / tokens compared (where the two part, the "
        "margin between neurosteer's best and second-best logit there)\n",
    ]


def report(
    args: argparse.Namespace,
    circuit: Circuit,
    strength: float,
    engine: EngineRun,
    ours: dict[str, list[Greedy]],
    facts: dict[str, float],
    prompts: list[str],
    decode: Callable[[list[int]], str],
) -> list[str]:
    """OUT/llama_cpp.md's lines: header, token table, refusals and shared words, answers."""
    key = f"m={strength:g}"
    answers = answer_texts(engine.tokens, ours, key, decode)
    judge = PhraseJudge()
    labels = {name: [str(x) for x in judge(prompts, got)] for name, got in answers.items()}
    lines = header(args, circuit, strength, engine.engine, facts)
    lines += [*table(engine.tokens, ours), "", *summary(answers, labels), ""]
    return lines + listing(prompts, answers, labels)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    jbb = args.data / "jailbreakbench" / "harmful-behaviors.csv"
    prompts = load_dataset_prompts(jbb, limit=args.prompts)
    circuit = Circuit.load(args.circuit)
    strength = circuit.settings.multiplier if args.multiplier is None else args.multiplier
    clock = [time.perf_counter()]
    baked = Path(bake_gguf(args.model, circuit, strength, out / "steered.gguf", force=True).path)
    clock.append(time.perf_counter())
    model, tokenizer = neurosteer.load_model(args.model)
    texts = render_prompts(tokenizer, prompts)
    prompt_ids = [tokenizer.encode(text, add_special_tokens=False) for text in texts]
    eos = int(tokenizer.eos_token_id)
    ours = neurosteer_side(model, prompt_ids, circuit, [strength], args.max_new_tokens, eos)
    clock.append(time.perf_counter())
    files = {"original": args.model, f"m={strength:g}": baked}
    engine = run_engine(
        args.engine_python, files, texts, args.max_new_tokens, args.threads,
        out / "engine.json", n_ctx=1024, special=True,
    )  # fmt: skip
    clock.append(time.perf_counter())
    facts = {
        "bake_s": clock[1] - clock[0],
        "ours_s": clock[2] - clock[1],
        "engine_s": clock[3] - clock[2],
        "same_prompts": float(engine.same_prompts(prompt_ids)),
    }

    def decode(ids: list[int]) -> str:
        return str(tokenizer.decode(ids, skip_special_tokens=True))

    lines = report(args, circuit, strength, engine, ours, facts, prompts, decode)
    (out / "llama_cpp.md").write_text("\n".join(lines) + "\n")
    record = {"prompts": prompts, "prompt_ids": prompt_ids, "llama.cpp": engine.tokens}
    record["neurosteer"] = {k: [t for t, _ in v] for k, v in ours.items()}
    (out / "answers.json").write_text(json.dumps(record, indent=1))
    print("\n".join(lines[: lines.index("")]))


if __name__ == "__main__":
    main()
