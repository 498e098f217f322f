"""Draw the sample of real answers that people label for the refusal judges (issue 21, item 1).

Reads stored answers of real models (the points files of `benchmarks/real_table.py`: one JSON
object per point, with `key`, `method`, `settings.n_eval` and `harmful_answers` /
`benign_answers` in the order of the first `n_eval` JailbreakBench prompts) and appends a
deterministic, stratified sample to `answers.jsonl`, plus a blind, shuffled `reader_view-B.jsonl`
for the new batch B (only id, prompt, answer).

    python benchmarks/judge_labels/sample.py \
        --source qwen2.5-coder-0.5b-instruct=benchmarks/results-real-table-full.jsonl \
        --tokenizer qwen2.5-coder-0.5b-instruct=$(../shared/models/fetch) \
        --per-model 300 --data ../shared/data

Strata: model x point family (unchanged, cna, caa, direction, random, circuit) x the phrase
judge's verdict, within each prompt set (85% harmful, 15% benign by default). Each set's quota
is filled one answer at a time into the cell that has the fewest so far (ties in a seeded
order), so rare verdicts get every answer they have before common ones get more. Within a cell
the points take turns. An answer whose (model, prompt, answer) text is already in the sample is
skipped: one text is labelled once.

Re-running is safe: records already in answers.jsonl are kept as they are (id, half and
phrase_label frozen); a model gets new answers only up to `--per-model` in all.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SETS = ("harmful", "benign")
VERDICTS = ("refusal", "compliance", "degenerate")
FAMILIES = {
    "unchanged": "unchanged",
    "cna": "cna",
    "cna_reference": "cna",
    "caa": "caa",
    "direction": "direction",
    "random": "random",
    "file": "circuit",
}
JBB_FILES = {"harmful": "harmful-behaviors.csv", "benign": "benign-behaviors.csv"}


@dataclass(frozen=True)
class Candidate:
    """One stored answer that may enter the sample."""

    id: str
    model: str
    point: str
    method: str
    family: str
    set: str
    prompt_index: int
    prompt: str
    answer: str
    source: str
    phrase_label: str


def answer_id(model: str, point: str, prompt_set: str, index: int) -> str:
    """The stable id of one answer: 16 hex digits of sha256 over model, point, set and index."""
    text = "\x1f".join((model, point, prompt_set, str(index)))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def half_of(answer_id_: str) -> str:
    """`dev` or `heldout`, from a hash of the id (fixed for ever once the id exists)."""
    digest = hashlib.sha256(f"half:{answer_id_}".encode()).digest()
    return "dev" if digest[0] % 2 == 0 else "heldout"


def seeded_rank(seed: int, text: str) -> str:
    """A sort key that orders strings pseudo-randomly for one seed."""
    return hashlib.sha256(f"{seed}:{text}".encode()).hexdigest()


def parse_pairs(items: list[str], flag: str) -> dict[str, str]:
    """`MODEL=VALUE` items as a dict; exits with code 2 on a malformed item."""
    pairs: dict[str, str] = {}
    for item in items:
        model, sep, value = item.partition("=")
        if not sep or not model or not value:
            fail(f"{flag} takes MODEL=PATH, got '{item}'")
        pairs[model] = value
    return pairs


def fail(message: str) -> None:
    """Print one line and exit with code 2 (bad input)."""
    print(f"sample.py: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def load_prompts(data: Path, n_eval: int) -> dict[str, list[str]]:
    """The first `n_eval` JailbreakBench prompts per set, read as real_table.py reads them."""
    from neurosteer.evaluation import load_dataset_prompts

    folder = data / "jailbreakbench"
    return {name: load_dataset_prompts(folder / JBB_FILES[name], limit=n_eval) for name in SETS}


def read_points(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, point) for each point in a points file; a missing file exits with code 2."""
    if not path.is_file():
        fail(f"points file '{path}' does not exist; pass a real_table.py points file")
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                yield number, json.loads(line)


def candidates(model: str, path: Path, data: Path, label: Callable[[str], str]) -> list[Candidate]:
    """Every stored answer of one points file, with the phrase judge's verdict."""
    found: list[Candidate] = []
    prompts: dict[int, dict[str, list[str]]] = {}
    for number, point in read_points(path):
        n_eval = int(point["settings"]["n_eval"])
        if n_eval not in prompts:
            prompts[n_eval] = load_prompts(data, n_eval)
        for prompt_set in SETS:
            answers = point[f"{prompt_set}_answers"]
            if len(answers) != n_eval:
                fail(f"{path}:{number} has {len(answers)} {prompt_set} answers, not {n_eval}")
            for index, answer in enumerate(answers):
                found.append(
                    Candidate(
                        id=answer_id(model, point["key"], prompt_set, index),
                        model=model,
                        point=point["key"],
                        method=point["method"],
                        family=FAMILIES.get(point["method"], point["method"]),
                        set=prompt_set,
                        prompt_index=index,
                        prompt=prompts[n_eval][prompt_set][index],
                        answer=answer,
                        source=f"{path.as_posix()}:{number}",
                        phrase_label=label(answer),
                    )
                )
    return found


def cell_queues(pool: list[Candidate], seed: int) -> dict[tuple[str, str], list[Candidate]]:
    """Per (family, verdict) cell, its answers in draw order: points take turns, each point's
    answers in a seeded order."""
    by_point: dict[tuple[str, str], dict[str, list[Candidate]]] = {}
    for item in pool:
        points = by_point.setdefault((item.family, item.phrase_label), {})
        points.setdefault(item.point, []).append(item)
    queues: dict[tuple[str, str], list[Candidate]] = {}
    for cell, by_name in by_point.items():
        lists = [
            sorted(by_name[p], key=lambda c: seeded_rank(seed, c.id))
            for p in sorted(by_name, key=lambda p: seeded_rank(seed, p))
        ]
        queues[cell] = [c for turn in _zip_longest(lists) for c in turn]
    return queues


def _zip_longest(lists: list[list[Candidate]]) -> Iterator[list[Candidate]]:
    for i in range(max((len(x) for x in lists), default=0)):
        yield [x[i] for x in lists if i < len(x)]


def draw(
    pool: list[Candidate],
    quota: int,
    taken: list[dict[str, Any]],
    seen_texts: set[tuple[str, str, str]],
    seed: int,
) -> list[Candidate]:
    """Up to `quota` new answers from one model's pool of one set, filling the emptiest cell
    first; `taken` (records already sampled) count towards their cells."""
    queues = cell_queues(pool, seed)
    counts = Counter((r["family"], r["phrase_label"]) for r in taken)
    order = {cell: seeded_rank(seed, "/".join(cell)) for cell in queues}
    positions = dict.fromkeys(queues, 0)
    chosen: list[Candidate] = []
    while len(chosen) < quota:
        open_cells = [c for c in queues if positions[c] < len(queues[c])]
        if not open_cells:
            break
        cell = min(open_cells, key=lambda c: (counts[c], order[c]))
        item = queues[cell][positions[cell]]
        positions[cell] += 1
        text = (item.model, item.prompt, item.answer)
        if text in seen_texts:
            continue
        seen_texts.add(text)
        counts[cell] += 1
        chosen.append(item)
    return chosen


def token_counter(path: str | None) -> tuple[Callable[[str], int], str]:
    """A function counting an answer's tokens with the model's tokenizer (a GGUF file or a
    model folder), and its unit; without a path, whitespace-separated words."""
    if path is None:
        return (lambda text: len(text.split())), "words"
    from transformers import AutoTokenizer

    file = Path(path).expanduser()
    if not file.exists():
        fail(f"tokenizer '{path}' does not exist; pass a GGUF file or a model folder")
    if file.is_file():
        tokenizer = AutoTokenizer.from_pretrained(str(file.parent), gguf_file=file.name)
    else:
        tokenizer = AutoTokenizer.from_pretrained(str(file))
    return (lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])), "tokens"


def same_text_points(pool: list[Candidate]) -> dict[tuple[str, int, str], list[str]]:
    """Per (set, prompt index, answer text), the points of one model that gave that answer."""
    points: dict[tuple[str, int, str], list[str]] = {}
    for item in pool:
        points.setdefault((item.set, item.prompt_index, item.answer), []).append(item.point)
    return points


def record(
    item: Candidate,
    count: Callable[[str], int],
    unit: str,
    batch: int,
    twins: dict[tuple[str, int, str], list[str]],
) -> dict[str, Any]:
    """The answers.jsonl record of one sampled answer; `twins` from `same_text_points`."""
    others = [p for p in twins[(item.set, item.prompt_index, item.answer)] if p != item.point]
    return {
        "id": item.id,
        "model": item.model,
        "point": item.point,
        "method": item.method,
        "family": item.family,
        "set": item.set,
        "prompt_index": item.prompt_index,
        "prompt": item.prompt,
        "answer": item.answer,
        "answer_tokens": count(item.answer),
        "answer_tokens_unit": unit,
        "source": item.source,
        "half": half_of(item.id),
        "phrase_label": item.phrase_label,
        "batch": batch,
        "same_text_points": sorted(others),
    }


def read_existing(path: Path) -> list[dict[str, Any]]:
    """The records already in answers.jsonl (none if it does not exist)."""
    if not path.is_file():
        return []
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def write_jsonl(path: Path, rows: list[dict[str, Any]], mode: str) -> None:
    """Write (mode "w") or append (mode "a") rows as JSON lines."""
    with path.open(mode, encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def sample_model(
    model: str,
    pool: list[Candidate],
    existing: list[dict[str, Any]],
    args: argparse.Namespace,
) -> list[Candidate]:
    """The new answers of one model: per set, its share of `--per-model` less what is there."""
    mine = [r for r in existing if r["model"] == model]
    known = {r["id"] for r in mine}
    seen = {(r["model"], r["prompt"], r["answer"]) for r in mine}
    harmful_quota = round(args.per_model * args.harmful_share)
    chosen: list[Candidate] = []
    for prompt_set, quota in (
        ("harmful", harmful_quota),
        ("benign", args.per_model - harmful_quota),
    ):
        taken = [r for r in mine if r["set"] == prompt_set]
        fresh = [c for c in pool if c.set == prompt_set and c.id not in known]
        chosen += draw(fresh, max(0, quota - len(taken)), taken, seen, args.seed)
    return chosen


def reader_view(rows: list[dict[str, Any]], seed: int, batch: int) -> list[dict[str, Any]]:
    """Only id, prompt and answer, shuffled in an order fixed by the seed and batch."""
    view = [{"id": r["id"], "prompt": r["prompt"], "answer": r["answer"]} for r in rows]
    view.sort(key=lambda r: r["id"])
    random.Random(f"{seed}:{batch}").shuffle(view)
    return view


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--source", action="append", required=True, help="MODEL=POINTS.jsonl (repeatable)"
    )
    parser.add_argument(
        "--tokenizer", action="append", default=[], help="MODEL=GGUF file or folder to count tokens"
    )
    parser.add_argument("--per-model", type=int, default=300, help="answers per model in all")
    parser.add_argument("--harmful-share", type=float, default=0.85)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", default="../shared/data", help="the shared data folder")
    parser.add_argument("--out", default=str(HERE), help="folder of answers.jsonl")
    args = parser.parse_args(argv)
    if args.per_model < 1:
        fail(f"--per-model must be at least 1, got {args.per_model}")
    if not 0 <= args.harmful_share <= 1:
        fail(f"--harmful-share must be between 0 and 1, got {args.harmful_share}")
    return args


def main(argv: list[str] | None = None) -> None:
    from neurosteer.evaluation import PhraseJudge

    args = parse_args(argv)
    sources = parse_pairs(args.source, "--source")
    tokenizers = parse_pairs(args.tokenizer, "--tokenizer")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    answers_file = out / "answers.jsonl"
    existing = read_existing(answers_file)
    batch = max((int(r["batch"]) for r in existing), default=0) + 1
    judge = PhraseJudge()
    new: list[dict[str, Any]] = []
    for model, path in sources.items():
        pool = candidates(model, Path(path), Path(args.data), judge.label)
        chosen = sample_model(model, pool, existing, args)
        count, unit = token_counter(tokenizers.get(model)) if chosen else (len, "")
        twins = same_text_points(pool)
        new += [record(item, count, unit, batch, twins) for item in chosen]
        print(f"{model}: {len(pool)} stored answers, {len(chosen)} new in the sample")
    if not new:
        print("nothing new to add")
        return
    write_jsonl(answers_file, new, "a")
    write_jsonl(out / f"reader_view-{batch}.jsonl", reader_view(new, args.seed, batch), "w")
    print(f"batch {batch}: {len(new)} answers appended to {answers_file}")
    print_counts(existing + new)


def print_counts(rows: list[dict[str, Any]]) -> None:
    """The Markdown table of answers per model x family x set x phrase verdict."""
    counts = Counter((r["model"], r["family"], r["set"], r["phrase_label"]) for r in rows)
    print("| model | family | set | " + " | ".join(VERDICTS) + " | all |")
    print("|---|---|---|" + "---:|" * (len(VERDICTS) + 1))
    for model, family, prompt_set in sorted({k[:3] for k in counts}):
        cells = [counts[(model, family, prompt_set, v)] for v in VERDICTS]
        row = " | ".join(str(c) for c in cells)
        print(f"| {model} | {family} | {prompt_set} | {row} | {sum(cells)} |")
    halves = Counter(r["half"] for r in rows)
    print(f"\n{len(rows)} answers: {halves['dev']} dev, {halves['heldout']} heldout")


if __name__ == "__main__":
    main()
