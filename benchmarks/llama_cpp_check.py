"""A baked GGUF in llama.cpp itself: does the engine answer as the hooked model does? (issue 10)

    python benchmarks/llama_cpp_check.py --model qwen.gguf --circuit best.circuit -o out/

Bakes the circuit into a copy of the GGUF file (`bake_gguf`, the stored multiplier unless `-m`),
then answers the first JailbreakBench harmful prompts greedily four ways: llama.cpp on the
original file and on the baked one, and neurosteer (transformers, float32) unchanged and under
the hooks. The engine is llama-cpp-python when it is installed, otherwise the llama.cpp build
bundled in the `gpt4all` wheel (a binary wheel on PyPI; llama-cpp-python is a source
distribution that takes hours to build on 2 cores). Neither is a dependency of the project.

llama.cpp computes with the quantized weights in its own kernels, so its answers need not equal
transformers' word for word even on the original file; the check is that the baked file moves
llama.cpp's answers the way the hooks move neurosteer's: OUT/llama_cpp.md lists the answers, the
judge's label of each, and how many words each llama.cpp answer shares (as a prefix) with its
neurosteer counterpart.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="the original .gguf file")
    parser.add_argument("--circuit", required=True)
    parser.add_argument("-m", "--multiplier", type=float, default=None)
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--prompts", type=int, default=8, help="JailbreakBench harmful prompts")
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("-o", "--output", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)

    import neurosteer
    from neurosteer.evaluation import PhraseJudge, load_dataset_prompts
    from neurosteer.export.gguf import bake_gguf
    from neurosteer.methods.circuit import Circuit
    from neurosteer.prompts.render import render_prompts

    jbb = Path(args.data) / "jailbreakbench" / "harmful-behaviors.csv"
    prompts = load_dataset_prompts(jbb, limit=args.prompts)
    circuit = Circuit.load(args.circuit)
    strength = circuit.settings.multiplier if args.multiplier is None else args.multiplier
    started = time.perf_counter()
    baked = bake_gguf(args.model, circuit, strength, out / "steered.gguf", force=True).path
    bake_s = time.perf_counter() - started

    model, tokenizer = neurosteer.load_model(args.model)
    texts = render_prompts(tokenizer, prompts)
    answers: dict[str, list[str]] = {
        "neurosteer unchanged": neurosteer.generate(
            model, tokenizer, prompts, max_new_tokens=args.max_new_tokens
        )
    }
    with neurosteer.steer(model, circuit, strength):
        answers["neurosteer hooked"] = neurosteer.generate(
            model, tokenizer, prompts, max_new_tokens=args.max_new_tokens
        )
    engine, run = llama_cpp_engine(args.threads)
    answers["llama.cpp original"] = run(Path(args.model), texts, args.max_new_tokens)
    answers["llama.cpp baked"] = run(Path(baked), texts, args.max_new_tokens)

    judge = PhraseJudge()
    labels = {name: judge(prompts, got) for name, got in answers.items()}
    pairs = [
        ("llama.cpp original", "neurosteer unchanged"),
        ("llama.cpp baked", "neurosteer hooked"),
    ]
    lines = [
        f"engine: {engine}; circuit {args.circuit} ({len(circuit)} neurons) at m = {strength:g}; "
        f"bake {bake_s:.0f} s; {len(prompts)} JailbreakBench harmful prompts, greedy, "
        f"{args.max_new_tokens} tokens\n",
        "| answers | refused | shared prefix words with its neurosteer counterpart (median) |",
        "|---|---|---|",
    ]
    for name in answers:
        refused = sum(label == "refusal" for label in labels[name])
        shared = ""
        for mine, theirs in pairs:
            if name == mine:
                counts = sorted(
                    prefix_words(a, b) for a, b in zip(answers[mine], answers[theirs], strict=True)
                )
                shared = f"{counts[len(counts) // 2]} (per prompt: {counts})"
        lines.append(f"| {name} | {refused} of {len(prompts)} | {shared} |")
    lines.append("")
    for i, prompt in enumerate(prompts):
        lines.append(f"**{prompt}**\n")
        for name, got in answers.items():
            text = got[i].replace("\n", " ")[:160]
            lines.append(f"- {name} ({labels[name][i]}): {text}")
        lines.append("")
    (out / "llama_cpp.md").write_text("\n".join(lines))
    (out / "answers.json").write_text(json.dumps(answers, indent=1))
    print("\n".join(lines[:7]))


def prefix_words(a: str, b: str) -> int:
    """How many whitespace words `a` and `b` share from their start."""
    n = 0
    for x, y in zip(a.split(), b.split(), strict=False):
        if x != y:
            break
        n += 1
    return n


def llama_cpp_engine(threads: int) -> tuple[str, Callable[[Path, list[str], int], list[str]]]:
    """The llama.cpp binding found, and a function of (file, rendered prompts, tokens)."""
    try:
        import llama_cpp
    except ImportError:
        pass
    else:

        def run_llama_cpp(path: Path, texts: list[str], tokens: int) -> list[str]:
            model = llama_cpp.Llama(
                model_path=str(path), n_ctx=1024, verbose=False, n_threads=threads
            )
            return [
                model(text, max_tokens=tokens, temperature=0.0)["choices"][0]["text"]
                for text in texts
            ]

        return f"llama-cpp-python {llama_cpp.__version__}", run_llama_cpp
    try:
        import gpt4all
    except ImportError:
        raise SystemExit(
            "no llama.cpp binding: `pip install gpt4all` (binary wheel) or llama-cpp-python"
        ) from None

    def run_gpt4all(path: Path, texts: list[str], tokens: int) -> list[str]:
        model = gpt4all.GPT4All(
            path.name,
            model_path=str(path.parent),
            allow_download=False,
            device="cpu",
            n_threads=threads,
            verbose=False,
        )
        return [model.generate(text, max_tokens=tokens, temp=0.0, top_k=1) for text in texts]

    from importlib.metadata import version

    return f"llama.cpp bundled in gpt4all {version('gpt4all')}", run_gpt4all


if __name__ == "__main__":
    main()
