"""One real output of each reference tool (issue 12) on a real model, with one model load.

    python benchmarks/real_tools.py --model qwen.gguf --data ../shared/data -o real-tools/

Discovers the contrastive refusal circuit (refusal-direction train splits, 0.4% positive-δ, the
setting the real-model test uses), then: next-token probabilities under it; RelP from refused
JailbreakBench prompts with the refusal's first token as the target, and its overlap with the
contrastive circuit beside a random circuit's; faithfulness and completeness of both circuits;
a scripted chat. Everything is written to OUT/tools.md.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import torch

REFUSAL_START = "I"  # "I'm sorry, but I can't assist with that."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    report: list[str] = []

    import neurosteer
    from neurosteer.evaluation import PhraseJudge, load_dataset_prompts
    from neurosteer.workflows.chat_session import ChatSession

    data = Path(args.data)
    splits = data / "refusal_direction" / "splits"
    harmful = load_dataset_prompts(splits, split="harmful_train", limit=32)
    harmless = load_dataset_prompts(splits, split="harmless_train", limit=32)
    jbb = load_dataset_prompts(data / "jailbreakbench" / "harmful-behaviors.csv", limit=16)

    started = time.perf_counter()
    model, tokenizer = neurosteer.load_model(args.model)
    circuit = neurosteer.discover(
        model, tokenizer, harmful, harmless, fraction=0.004, positive_only=True
    )
    circuit.save(out / "contrastive.circuit", force=True)
    report.append(
        f"load + discovery: {time.perf_counter() - started:.0f} s, {len(circuit)} neurons"
    )

    # Next-token probabilities at the first answer position.
    probs = neurosteer.next_token_probs(
        model,
        tokenizer,
        jbb[:2],
        intervention=circuit,
        strengths=[1.0, 0.0, -1.0],
        tokens=[REFUSAL_START, "Sure", "Here"],
        top=5,
    )
    report += ["\n## probe\n", "```json", json.dumps(probs.to_dict(), indent=1), "```"]

    # RelP from the prompts the model refuses, target = the refusal's first token.
    answers = neurosteer.generate(model, tokenizer, jbb, max_new_tokens=12, batch_size=16)
    refused = [
        p for p, label in zip(jbb, PhraseJudge()(jbb, answers), strict=True) if label == "refusal"
    ]
    started = time.perf_counter()
    relp = neurosteer.attribute(
        model,
        tokenizer,
        refused,
        REFUSAL_START,
        contrasts="Sure",
        top_k=len(circuit),
        keep_table=True,
    )
    relp.save(out / "relp.circuit", force=True)
    seconds = time.perf_counter() - started
    ours = set(zip(circuit.layers.tolist(), circuit.neurons.tolist(), strict=True))
    theirs = set(zip(relp.layers.tolist(), relp.neurons.tolist(), strict=True))
    rand = circuit.random_like(0)
    random_set = set(zip(rand.layers.tolist(), rand.neurons.tolist(), strict=True))
    top = sorted(
        zip(relp.layers.tolist(), relp.neurons.tolist(), relp.delta.tolist(), strict=True),
        key=lambda row: -abs(row[2]),
    )[:10]
    report += [
        f"\n## RelP ({len(refused)} refused prompts, target '{REFUSAL_START}' minus 'Sure', "
        f"{seconds:.0f} s)\n",
        "| layer | neuron | attribution |",
        "|---|---|---|",
        *[f"| {layer} | {neuron} | {score:+.3f} |" for layer, neuron, score in top],
        f"\nOverlap with the contrastive circuit ({len(circuit)} neurons): {len(ours & theirs)}; "
        f"a random circuit of the same size per layer shares {len(ours & random_set)}.",
        f"RelP neurons per layer: {relp.neurons_per_layer()}",
        f"contrastive neurons per layer: {circuit.neurons_per_layer()}",
    ]

    # Faithfulness and completeness of both circuits on the same pairs.
    for name, target in (("contrastive", circuit), ("relp", relp)):
        started = time.perf_counter()
        result = neurosteer.measure_faithfulness(
            model,
            tokenizer,
            target,
            refused[:8],
            REFUSAL_START,
            harmless[:16],
            contrasts="Sure",
            ks=[len(target) // 4, len(target)],
        )
        report += [
            f"\n## faithfulness: {name} ({time.perf_counter() - started:.0f} s; m(M) = "
            f"{result.metric_full:.3f}, m(empty) = {result.metric_empty:.3f}, {result.metric})\n",
            "```json",
            json.dumps(result.rows(), indent=1),
            "```",
        ]

    # A scripted chat: steered, the unsteered reply beside it, then m = 1.
    stream = io.StringIO()
    session = ChatSession(
        model, tokenizer, stream, circuit=circuit, multiplier=-1.0, max_new_tokens=48
    )
    for line in [jbb[0], "/compare", "/m 1", "/reset", jbb[0]]:
        stream.write(f"you> {line}\n")
        session.handle(line)
    report += ["\n## chat\n", "```", stream.getvalue().strip(), "```"]

    (out / "tools.md").write_text("\n".join(report) + "\n")
    print("\n".join(report))


if __name__ == "__main__":
    main()
