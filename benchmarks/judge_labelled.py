"""`judge_accuracy.py --labels`: every judge scored on real answers labelled by readers.

The answers file (`judge_labels/sample.py` writes it) and the labels file (`id, label, kind`)
are joined by id; only labelled answers are scored. Each judge labels every answer once (timed);
its accuracy is then reported on the `dev` half, the `heldout` half and all answers, with its
recall per kind (the share of each kind's answers given the reader's label), its confusion
table and its seconds per answer.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neurosteer.errors import InputError
from neurosteer.evaluation.answer_records import AnswerRecord, parse_label, read_records
from neurosteer.evaluation.judge_scores import Agreement, agreement
from neurosteer.evaluation.judges import LABELS, Label
from neurosteer.workflows.judges import get_judge

ANSWERS = Path(__file__).resolve().parent / "judge_labels" / "answers.jsonl"
HALVES = ("dev", "heldout")
DEFAULT_JUDGES = ("strict", "patterns", "sweep")


@dataclass(frozen=True)
class Labelled:
    """One answer with its reader's label and kind."""

    record: AnswerRecord
    label: Label
    kind: str
    half: str


@dataclass(frozen=True)
class JudgeResult:
    """A judge's labels on the labelled set and what they took."""

    name: str
    labels: list[Label]
    seconds: float

    def score(self, rows: list[Labelled], keep: set[int] | None = None) -> Agreement:
        """Agreement on the rows whose index is in `keep` (all rows when None)."""
        pick = [i for i in range(len(rows)) if keep is None or i in keep]
        return agreement([rows[i].label for i in pick], [self.labels[i] for i in pick])


def add_label_options(parser: argparse.ArgumentParser) -> None:
    """The options of the labelled-set mode."""
    parser.add_argument("--labels", type=Path, default=None, help="labels: id, label, kind")
    parser.add_argument("--answers", type=Path, default=ANSWERS, help="answers joined by id")
    parser.add_argument("--judge", action="append", default=None, help="judge name (repeat)")
    parser.add_argument("--judge-model", default=None, help="model for the model judges")
    parser.add_argument("--judge-prompts", default=None, help="llm_judges.json for model#ENTRY")
    parser.add_argument("--cache", type=Path, default=None, help="model judges' verdict cache")
    parser.add_argument(
        "--ensemble",
        action="append",
        default=[],
        metavar="A+B",
        help="also score judge A, with judge B deciding where A says compliance (both among "
        "--judge; repeatable)",
    )
    parser.add_argument("--markdown", action="store_true", help="Markdown tables")
    parser.add_argument("-o", "--output", type=Path, default=None, help="results as JSON")


def load_labelled(labels: Path, answers: Path) -> list[Labelled]:
    """The labelled answers, in the labels file's order.

    Raises:
        InputError: a label record without id, label or kind, a bad label, an id the answers
            file lacks, or an id labelled twice.
    """
    label_rows = read_records(labels, "labels file")
    joined = all("answer" in row and "prompt" in row for _, row in label_rows)
    by_id = {} if joined else {str(r.get("id")): r for _, r in read_records(answers)}
    seen: set[str] = set()
    rows = []
    for where, row in label_rows:
        record_id = str(row.get("id", ""))
        if not record_id or record_id in seen:
            raise InputError(f"'{labels}' {where}: missing or repeated id {record_id!r}")
        seen.add(record_id)
        label = parse_label(row.get("label"), f"'{labels}' {where}")
        if label is None or not row.get("kind"):
            raise InputError(f"'{labels}' {where}: every label record needs a label and a kind")
        answer = row if joined else by_id.get(record_id)
        if answer is None:
            raise InputError(f"'{labels}' {where}: id {record_id!r} is not in '{answers}'")
        record = AnswerRecord(str(answer["prompt"]), str(answer["answer"]), label, record_id)
        rows.append(Labelled(record, label, str(row["kind"]), str(answer.get("half", ""))))
    return rows


def run_judges(
    names: list[str], rows: list[Labelled], args: argparse.Namespace
) -> list[JudgeResult]:
    """Each judge over every labelled answer once, timed (a model's loading is not timed)."""
    results = []
    for name in names:
        judge = get_judge(
            name,
            judge_model=args.judge_model,
            judge_prompts=args.judge_prompts,
            cache_file=args.cache,
            progress=True,
        )
        start = time.perf_counter()
        labels = judge([r.record.prompt for r in rows], [r.record.answer for r in rows])
        seconds = time.perf_counter() - start
        results.append(JudgeResult(display_name(name, args.judge_model), labels, seconds))
    return results


def summary(result: JudgeResult, rows: list[Labelled]) -> dict[str, Any]:
    """Accuracy per half and overall, recall per kind, confusion and seconds per answer."""
    halves = {h: {i for i, r in enumerate(rows) if r.half == h} for h in HALVES}
    kinds: dict[str, set[int]] = defaultdict(set)
    for i, r in enumerate(rows):
        kinds[r.kind].add(i)
    overall = result.score(rows)
    return {
        "judge": result.name,
        "accuracy": {
            **{h: _share(result.score(rows, keep)) for h, keep in halves.items()},
            "all": _share(overall),
        },
        "recall_by_kind": {
            k: _share(result.score(rows, keep)) for k, keep in sorted(kinds.items())
        },
        "confusion": overall.confusion,
        "seconds_per_answer": result.seconds / len(rows),
        "labels": {r.record.id: label for r, label in zip(rows, result.labels, strict=True)},
    }


def ensemble_parts(spec: str, names: list[str]) -> tuple[int, int]:
    """The positions in `names` of an ensemble's judges A and B, from `spec` "A+B".

    Raises:
        InputError: `spec` is not two names joined by "+" that are both among `names`.
    """
    first, plus, second = spec.partition("+")
    if not plus or first not in names or second not in names:
        raise InputError(f"--ensemble {spec!r}: give A+B with both A and B among --judge {names}")
    return names.index(first), names.index(second)


def ensemble(spec: str, results: list[JudgeResult], names: list[str]) -> JudgeResult:
    """`A+B`: judge A's labels, with B's wherever A said compliance (B, a model judge say, is
    only asked where the cheap judge A found no refusal). Its seconds: all of A's, and B's
    seconds per answer times the answers B would be asked. Raises as `ensemble_parts`."""
    first, second = ensemble_parts(spec, names)
    a, b = results[first], results[second]
    labels = [y if x == "compliance" else x for x, y in zip(a.labels, b.labels, strict=True)]
    asked = sum(x == "compliance" for x in a.labels)
    seconds = a.seconds + b.seconds * asked / max(len(b.labels), 1)
    return JudgeResult(f"{a.name} + {b.name} where compliance", labels, seconds)


def _share(score: Agreement) -> dict[str, Any]:
    return {"accuracy": score.accuracy, "correct": score.correct, "n": score.total}


def markdown(summaries: list[dict[str, Any]]) -> list[str]:
    """The accuracy table (halves, all, the two ways to be wrong, seconds) and recall by kind."""
    first = summaries[0]
    cols = [f"{h} ({first['accuracy'][h]['n']})" for h in (*HALVES, "all")]
    cols += ["refusals called compliance", "compliance called refusal", "s / answer"]
    lines = [f"| judge | {' | '.join(cols)} |", "|---|" + "---:|" * len(cols)]
    for s in summaries:
        cells = [f"{s['accuracy'][h]['accuracy']:.1%}" for h in (*HALVES, "all")]
        confusion = s["confusion"]
        cells += [str(confusion["refusal"]["compliance"]), str(confusion["compliance"]["refusal"])]
        cells.append(f"{s['seconds_per_answer']:.3g}")
        lines.append(f"| `{s['judge']}` | {' | '.join(cells)} |")
    kinds = list(first["recall_by_kind"])
    heads = [f"{k} ({first['recall_by_kind'][k]['n']})" for k in kinds]
    lines += ["", f"| judge | {' | '.join(heads)} |", "|---|" + "---:|" * len(kinds)]
    for s in summaries:
        cells = [f"{s['recall_by_kind'][k]['accuracy']:.0%}" for k in kinds]
        lines.append(f"| `{s['judge']}` | {' | '.join(cells)} |")
    return lines


def text_report(summary_: dict[str, Any]) -> list[str]:
    """One judge's numbers as plain text."""
    acc = summary_["accuracy"]
    parts = [f"{h} {acc[h]['accuracy']:.1%} ({acc[h]['correct']}/{acc[h]['n']})" for h in acc]
    lines = [
        f"{summary_['judge']}: {', '.join(parts)}; {summary_['seconds_per_answer']:.3g} s/answer"
    ]
    kinds = summary_["recall_by_kind"]
    lines.append(
        "  recall by kind: " + ", ".join(f"{k} {v['accuracy']:.0%}" for k, v in kinds.items())
    )
    confusion = summary_["confusion"]
    lines.append(
        "  confusion (rows: reader, columns: judge): "
        + "; ".join(f"{g}: " + " ".join(str(confusion[g][x]) for x in LABELS) for g in LABELS)
    )
    return lines


def display_name(name: str, judge_model: str | None) -> str:
    """A judge's name for tables: a list file's entry, a model judge with its model's file."""
    if ".json#" in name:
        return name.partition(".json#")[2]
    if name.startswith("model") and not name.startswith("model:") and judge_model:
        return f"{name} ({Path(judge_model).name})"
    if name.startswith("model:"):
        path, _, entry = name.removeprefix("model:").partition("#")
        return f"model{'#' + entry if entry else ''} ({Path(path).name})"
    return name


def run_labelled(args: argparse.Namespace, published: list[str]) -> list[dict[str, Any]]:
    """The --labels mode of judge_accuracy.py; `published` adds the --lists judges.

    Returns the judges' summaries (`summary`), as -o writes them."""
    rows = load_labelled(args.labels, args.answers)
    names = [*(args.judge or DEFAULT_JUDGES), *published]
    for spec in args.ensemble:  # a typo fails before any model is asked
        ensemble_parts(spec, names)
    results = run_judges(names, rows, args)
    results += [ensemble(spec, results, names) for spec in args.ensemble]
    summaries = [summary(r, rows) for r in results]
    lines = markdown(summaries) if args.markdown else [x for s in summaries for x in text_report(s)]
    print("\n".join(lines))
    if args.output is not None:
        args.output.write_text(json.dumps(summaries, indent=1) + "\n", encoding="utf-8")
    return summaries
