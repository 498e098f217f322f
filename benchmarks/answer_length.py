"""How a judge's verdicts change when stored answers are cut shorter (issue 21, item 5).

Peers found that short answers hide delayed refusals. This re-judges answers already generated
at full length (150 new tokens in the real-model tables) after cutting each to its first N
tokens, N in `--lengths`, and prints, per length, the share of answers whose verdict differs
from the full-length verdict, the direction of each change, and the refusal rate. With
`--labels` (the labelled real answers of benchmarks/judge_labels/), it also prints the judge's
accuracy against the readers' labels at each length, on the labelled answers only.

    python benchmarks/answer_length.py --model qwen.gguf \\
        --points benchmarks/results-real-table-full.jsonl [--judge patterns] [--json]

The tokenizer is the generating model's, so "N tokens" means what `--max-new-tokens N` would
have produced under greedy decoding (the first N tokens of a greedy 150-token answer are the
greedy N-token answer: generation is causal).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path
from typing import Any

LENGTHS = (24, 48, 64, 100)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="the model whose tokenizer cuts answers")
    parser.add_argument("--points", action="append", required=True, help="points.jsonl file(s)")
    parser.add_argument("--judge", default="patterns", help="a judge name (see `neurosteer judge`)")
    parser.add_argument("--lengths", default=",".join(map(str, LENGTHS)))
    parser.add_argument("--set", default="harmful", choices=("harmful", "benign"))
    parser.add_argument("--labels", help="labels.jsonl (answers.jsonl beside it)")
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")
    args = parser.parse_args(argv)

    from neurosteer.workflows.judges import get_judge

    tokenizer = load_tokenizer(args.model)
    judge = get_judge(args.judge)
    lengths = [int(n) for n in args.lengths.split(",")]
    answers = [a for path in args.points for a in read_answers(Path(path), args.set)]
    full = judge([""] * len(answers), answers)
    ids = [tokenizer(a, add_special_tokens=False)["input_ids"] for a in answers]
    result: dict[str, Any] = {
        "judge": args.judge,
        "answers": len(answers),
        "full_refusal": full.count("refusal") / len(full),
        "lengths": {},
    }
    for n in lengths:
        cut = [tokenizer.decode(i[:n], skip_special_tokens=True) for i in ids]
        labels = judge([""] * len(cut), cut)
        moves = Counter(f"{a}->{b}" for a, b in zip(full, labels, strict=True) if a != b)
        result["lengths"][n] = {
            "changed": sum(moves.values()) / len(labels),
            "moves": dict(moves.most_common()),
            "refusal": labels.count("refusal") / len(labels),
        }
    if args.labels:
        result["accuracy"] = labelled_accuracy(Path(args.labels), judge, tokenizer, lengths)
    print_table(result)
    if args.json:
        print(json.dumps(result))


def load_tokenizer(model: str) -> Any:
    """The tokenizer of a folder or GGUF file, without loading the weights."""
    from transformers import AutoTokenizer

    path = Path(model)
    if path.suffix == ".gguf":
        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return AutoTokenizer.from_pretrained(model)


def read_answers(path: Path, which: str) -> list[str]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [answer for row in rows for answer in row[f"{which}_answers"]]


def labelled_accuracy(path: Path, judge: Any, tokenizer: Any, lengths: list[int]) -> dict:
    """Accuracy against the readers' label at each length (and at full length: `full`), and
    the share of the readers' refusals the judge finds (`refusal_recall_N`)."""
    from judge_labelled import load_labelled  # the one join of labels and answers

    rows = load_labelled(path, path.parent / "answers.jsonl")
    out: dict[str, float] = {}
    for n in [*lengths, None]:
        answers = [
            row.record.answer
            if n is None
            else tokenizer.decode(
                tokenizer(row.record.answer, add_special_tokens=False)["input_ids"][:n],
                skip_special_tokens=True,
            )
            for row in rows
        ]
        labels = judge([row.record.prompt for row in rows], answers)
        right = sum(a == row.label for a, row in zip(labels, rows, strict=True))
        name = "full" if n is None else str(n)
        out[name] = right / len(rows)
        refusals = [a for a, row in zip(labels, rows, strict=True) if row.label == "refusal"]
        out[f"refusal_recall_{name}"] = refusals.count("refusal") / len(refusals)
    return out


def print_table(result: dict[str, Any]) -> None:
    print(
        f"{result['answers']} stored answers, judge {result['judge']}: "
        f"{result['full_refusal']:.1%} refused at full length"
    )
    print("| tokens | verdict changed | refused | changes |\n|---|---|---|---|")
    for n, row in result["lengths"].items():
        moves = ", ".join(f"{k} {v}" for k, v in row["moves"].items())
        print(f"| {n} | {row['changed']:.1%} | {row['refusal']:.1%} | {moves} |")
    if "accuracy" in result:
        print("accuracy against the labels:", result["accuracy"])


if __name__ == "__main__":
    main()
