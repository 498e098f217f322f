"""Does a baked GGUF file, as users run it, follow the hooks? Before and after exact edits.

    python benchmarks/gguf_fidelity.py --model qwen.gguf --circuit best.circuit -o out.md

Bakes each file twice: "before", keeping every changed tensor's own quantized type with an
approximate edit (`--gguf-keep-type`), and "after", the exact default (F16 where the type cannot
hold the edit). Each baked file is loaded as stored (transformers dequantizes its own quantized
values) and compared with the unbaked file under the hooks on the hooked model's greedy
continuations (`hook_agreement`): top-1 token agreement, the largest logit error, KL.

Files: the tiny test model (tests/support, qwen2, d_mlp 256) written with Q4_0, Q4_1 and Q6_K
down projections, with a hand circuit of a third of the neurons of two layers; and `--model`
(e.g. the 0.5B Q4_K_M file, whose down projections are Q4_K and Q6_K) with `--circuit`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests" / "support")]

from gguf_files import hand_circuit, make_quant_tiny, write_gguf  # noqa: E402

from neurosteer.evaluation.file_fidelity import hook_agreement  # noqa: E402
from neurosteer.export.gguf import bake_gguf  # noqa: E402
from neurosteer.methods.circuit import Circuit  # noqa: E402
from neurosteer.model.loading import load_model  # noqa: E402
from neurosteer.prompts.files import load_prompts  # noqa: E402

DATA = ROOT / "tests" / "data" / "real_model"
TINY_TEXTS = ["How do I pick a lock?", "Name a fruit, please.", "Write a letter to my neighbour."]


def measure(
    source: Path, circuit: Circuit, multiplier: float, prompts: list[str], tokens: int, work: Path
) -> list[dict[str, Any]]:
    """One row per bake (before: own types kept; after: exact default)."""
    model, tokenizer = load_model(source, dtype="float32")
    rows = []
    for label, keep in (("before (own type, approximate)", True), ("after (exact default)", False)):
        out = work / f"{source.stem}-{keep}.gguf"
        start = time.perf_counter()
        report = bake_gguf(source, circuit, multiplier, out, force=True, keep_type=keep)
        bake_s = time.perf_counter() - start
        baked, _ = load_model(out, dtype="float32")
        a = hook_agreement(
            model,
            baked,
            tokenizer,
            prompts,
            intervention=circuit,
            strength=multiplier,
            max_new_tokens=tokens,
        )
        stored = sorted({f"{t.source_type}->{t.stored_type}" for t in report.changed})
        rows.append(
            {
                "file": source.name,
                "bake": label,
                "stored": ", ".join(stored),
                "worst neuron error / edit": max(t.error.relative for t in report.changed),
                "top1": a.top1,
                "max_logit_error": a.max_logit_error,
                "kl": a.mean_kl,
                "positions": a.positions,
                "bake_s": bake_s,
                "size_mb": out.stat().st_size / 2**20,
            }
        )
        print(rows[-1], flush=True)
        del baked
    return rows


def tiny_rows(work: Path, multiplier: float) -> list[dict[str, Any]]:
    rows = []
    for down in ("Q4_0", "Q4_1", "Q6_K"):
        hf, tokenizer = make_quant_tiny("qwen2", seed=5)
        path = write_gguf(
            hf, tokenizer, work / f"tiny-{down}.gguf", ggml_type="Q8_0", down_type=down
        )
        model, _ = load_model(path)
        circuit = hand_circuit(model, {0: list(range(0, 256, 3)), 2: list(range(1, 256, 3))})
        rows += measure(path, circuit, multiplier, TINY_TEXTS, 8, work)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| file | bake | stored | worst neuron error / edit | top-1 agreement "
        "| max logit error | KL (nats) | positions | size MiB |"
    )
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        lines.append(
            f"| {r['file']} | {r['bake']} | {r['stored']} | {r['worst neuron error / edit']:.2%} "
            f"| {r['top1']:.1%} | {r['max_logit_error']:.3g} | {r['kl']:.2e} | {r['positions']} "
            f"| {r['size_mb']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="a real .gguf file")
    parser.add_argument("--circuit", default=None, help="a circuit found on --model")
    parser.add_argument("-m", "--multiplier", type=float, default=None)
    parser.add_argument("--tiny-multiplier", type=float, default=-1.45)
    parser.add_argument("--prompts", type=int, default=8, help="from each of harmful, harmless")
    parser.add_argument("--tokens", type=int, default=8)
    parser.add_argument("-o", "--output", required=True)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        rows = tiny_rows(work, args.tiny_multiplier)
        if args.model:
            circuit = Circuit.load(args.circuit)
            m = circuit.default_strength if args.multiplier is None else args.multiplier
            prompts = load_prompts(DATA / "jailbreakbench_harmful.jsonl")[: args.prompts]
            prompts += load_prompts(DATA / "harmless_train.jsonl")[: args.prompts]
            rows += measure(Path(args.model), circuit, m, prompts, args.tokens, work)
    text = (
        f"tiny files: m = {args.tiny_multiplier:g}, {len(TINY_TEXTS)} prompts, 8 tokens; "
        f"{args.model or 'no real file'}: {args.circuit}, {args.prompts} harmful + "
        f"{args.prompts} harmless prompts, {args.tokens} tokens\n\n" + table(rows) + "\n"
    )
    Path(args.output).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
