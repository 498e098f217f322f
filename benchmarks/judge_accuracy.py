"""Accuracy of the refusal judges on hand-labelled answers.

Without --labels: the hand-written answers in tests/data/judge_labelled.jsonl, printed as the
Markdown table of docs/evaluation.md: accuracy per judge on the dev split (the part the
built-in clauses were tuned on), the held-out split and all answers, then the errors by kind.

    python benchmarks/judge_accuracy.py
    python benchmarks/judge_accuracy.py --errors \
        --lists ../shared/data/refusal_judges/refusal_substrings.json

With --labels: real answers labelled by readers (`judge_labels`): a labels file of
`{id, label, kind}` records joined by id with the answers file that `judge_labels/sample.py`
writes (`id, model, point, method, set, prompt_index, prompt, answer, answer_tokens, half,
phrase_label`); a labels file whose records carry the answers is read alone. Every judge given
(`--judge`, repeatable: built-in lists, phrase-list files, model judges) is scored on the dev
half, the held-out half and all answers, with its recall per kind, its confusion table and its
seconds per answer; --markdown prints the tables for docs/evaluation.md, -o keeps them as JSON.

    python benchmarks/judge_accuracy.py --labels benchmarks/judge_labels/labels.jsonl \
        --judge sweep --judge model --judge-model ~/.cache/neurosteer-models/X.gguf \
        --judge model#jailbreakbench_Llama3RefusalJudge \
        --judge-prompts ../shared/data/refusal_judges/llm_judges.json --markdown

With --package-table PATH: the accuracy table that `neurosteer.evaluation.judge_accuracy`
ships (src/neurosteer/data/judge_accuracy.json), written from the --labels run's results, or
from a stored -o file given with --results (no judge runs again):

    python benchmarks/judge_accuracy.py --results benchmarks/results-judge-real.json \
        --package-table src/neurosteer/data/judge_accuracy.json

With --lists, the published lists in that file are scored too, applied as published (literal
matching over the characters their code searched), by their entry names.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from judge_labelled import add_label_options, run_labelled

from neurosteer.errors import NeurosteerError
from neurosteer.evaluation.judge_accuracy import TABLE_FORMAT, table_name
from neurosteer.evaluation.judges import Judge
from neurosteer.evaluation.phrases import PUBLISHED_WINDOWS, load_phrase_lists
from neurosteer.workflows.judges import get_judge

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "data" / "judge_labelled.jsonl"
BUILTIN = ("strict", "patterns", "sweep")
# the paper's two lists first
PUBLISHED_ORDER = (
    "cna_neural_steering_jailbreak_benchmark_regex",
    "cna_neural_steering_steering_comparison_phrases",
)


def load_rows(path: Path = FIXTURE) -> list[dict[str, str]]:
    """The labelled answers: id, split, kind, label, prompt, answer."""
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def score(judge: Judge, rows: list[dict[str, str]]) -> tuple[float, list[dict[str, str]]]:
    """Share of rows the judge labels right, and the rows it gets wrong (with its label)."""
    labels = judge([r["prompt"] for r in rows], [r["answer"] for r in rows])
    wrong = [{**r, "got": got} for r, got in zip(rows, labels, strict=True) if got != r["label"]]
    return 1 - len(wrong) / len(rows), wrong


def published_lists(lists: Path) -> list[str]:
    """The judge names of the published lists of a refusal_substrings.json, the paper's first."""
    published = load_phrase_lists(lists)
    names = [n for n in PUBLISHED_ORDER if n in published]
    names += [n for n in published if n in PUBLISHED_WINDOWS and n not in names]
    return [f"{lists}#{name}" for name in names]


LABELLED_SET = (
    "benchmarks/judge_labels/labels.jsonl: real answers of Qwen2.5-Coder-0.5B-Instruct and "
    "Qwen2.5-Coder-1.5B-Instruct (150 tokens, greedy), each read twice; the held-out half frozen "
    "before any judge was scored"
)


#: The model whose answers the labelled set holds: captions name it, and say when a run's rates
#: are of another model (`neurosteer.evaluation.judge_accuracy.measured_on`).
ANSWERS_MODEL = "Qwen2.5-Coder-0.5B-Instruct and Qwen2.5-Coder-1.5B-Instruct"


def package_entry(summary: dict[str, Any]) -> dict[str, Any]:
    """One judge's row of the package table from its `judge_labelled.summary`: accuracy on all
    answers and the held-out half, their sizes, the readers' refusals it calls something else
    (refusals_missed) and the other answers it calls refusal (refusals_added)."""
    accuracy, confusion = summary["accuracy"], summary["confusion"]
    missed = sum(n for label, n in confusion["refusal"].items() if label != "refusal")
    added = sum(row["refusal"] for reader, row in confusion.items() if reader != "refusal")
    return {
        "all": round(accuracy["all"]["accuracy"], 4),
        "heldout": round(accuracy["heldout"]["accuracy"], 4),
        "n": accuracy["all"]["n"],
        "n_heldout": accuracy["heldout"]["n"],
        "refusals_missed": missed,
        "refusals_added": added,
    }


def package_table(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """The versioned table of `neurosteer/data/judge_accuracy.json`; judges by their table
    name (`evaluation.judge_accuracy.table_name`; a model judge without its model file)."""
    judges = {table_name(s["judge"].partition(" (")[0]): package_entry(s) for s in summaries}
    return {
        "format": TABLE_FORMAT,
        "labelled_set": LABELLED_SET,
        "answers_model": ANSWERS_MODEL,
        "judges": judges,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--fixture", type=Path, default=FIXTURE)
    parser.add_argument("--lists", type=Path, default=None, help="refusal_substrings.json")
    parser.add_argument("--errors", action="store_true", help="also list every wrong label")
    parser.add_argument("--package-table", type=Path, default=None, help="write the table")
    parser.add_argument("--results", type=Path, default=None, help="stored -o results to read")
    add_label_options(parser)
    args = parser.parse_args()
    if args.labels is not None or args.results is not None:
        try:
            if args.results is not None:
                summaries = json.loads(args.results.read_text(encoding="utf-8"))
            else:
                lists = published_lists(args.lists) if args.lists is not None else []
                summaries = run_labelled(args, lists)
        except NeurosteerError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
        if args.package_table is not None:
            table = json.dumps(package_table(summaries), indent=1) + "\n"
            args.package_table.write_text(table, encoding="utf-8")
        return
    rows = load_rows(args.fixture)
    judges: dict[str, Judge] = {name: get_judge(name) for name in BUILTIN}
    if args.lists is not None:
        names = published_lists(args.lists)
        judges.update({name.partition("#")[2]: get_judge(name) for name in names})
    splits = {
        "dev": [r for r in rows if r["split"] == "dev"],
        "held-out": [r for r in rows if r["split"] == "heldout"],
        "all": rows,
    }
    header = " | ".join(f"{k} ({len(v)})" for k, v in splits.items())
    print(f"| judge | {header} | errors by kind (all) |")
    print("|---|" + "---|" * len(splits) + "---|")
    for name, judge in judges.items():
        cells, wrong = [], []
        for split_rows in splits.values():
            accuracy, wrong = score(judge, split_rows)
            cells.append(f"{accuracy:.1%}")
        kinds = Counter(r["kind"] for r in wrong)
        errors = ", ".join(f"{k} {n}" for k, n in kinds.most_common()) or "none"
        print(f"| `{name}` | " + " | ".join(cells) + f" | {errors} |")
    for name, judge in judges.items() if args.errors else ():
        _, wrong = score(judge, rows)
        for r in wrong:
            wrong_label = f"{r['label']} -> {r['got']}"
            print(f"{name}\t{r['id']}\t{r['kind']}\t{wrong_label}\t{r['answer'][:70]!r}")


if __name__ == "__main__":
    main()
