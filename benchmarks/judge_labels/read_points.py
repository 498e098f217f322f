"""Readers' refusal rates for chosen points of a real-model table, beside the phrase judge's.

`calibrated_rates.py` re-weights a point's judge verdicts with shares measured per family of
points. That is as good as the family is alike: a CNA point whose answers fall back to a style
the labelled sample never saw (for example short lectures, "This is a serious matter ...
Please refrain") is charged with another CNA point's miss rate. This script reads the points
themselves instead: every Nth harmful answer of each chosen point goes into one blind,
shuffled view for two independent readers (the labelling guide, docs/labelling-guide.md), and
`score` gives each point's share refused by the readers beside the judge's on the same answers.

    python benchmarks/judge_labels/read_points.py draw --points P.jsonl --data ../shared/data \\
        --every 5 --key "cna 0.1% both m=-1" --key "caa alpha=-2" -o DIR
    # two readers label DIR/view.jsonl into r1.jsonl and r2.jsonl (id, label, kind, note)
    python benchmarks/judge_labels/read_points.py score -o DIR --reading r1.jsonl \\
        --reading r2.jsonl [--markdown]

Files in DIR: `view.jsonl` (id, prompt, answer; nothing else, order shuffled by a fixed seed)
and `key.jsonl` (id, point, prompt index, the judge's label at draw time; `score` judges
anew). An answer's id is a hash of the points file's name, the point and the prompt index.
Where the two readers differ, the answer counts half to each label; their agreement (and
Cohen's κ) is printed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
from pathlib import Path
from typing import Any

from agreement import cohen_kappa, read


def draw(points: Path, data: Path, keys: list[str], every: int, out: Path) -> int:
    """Write the view and key for every `every`-th harmful answer of each of `keys`; the
    number of answers drawn."""
    from neurosteer.evaluation import PhraseJudge, load_dataset_prompts

    rows = {r["key"]: r for r in map(json.loads, points.read_text().splitlines()) if r}
    missing = [key for key in keys if key not in rows]
    if missing:
        raise SystemExit(f"error: no point {missing[0]!r} in {points}")
    judge = PhraseJudge()
    view, key_rows = [], []
    for key in keys:
        answers = rows[key]["harmful_answers"]
        prompts = load_dataset_prompts(
            data / "jailbreakbench" / "harmful-behaviors.csv", limit=len(answers)
        )
        for index in range(0, len(answers), every):
            seed = f"{points.name}\0{key}\0{index}".encode()
            answer_id = hashlib.sha256(seed).hexdigest()[:16]
            view.append({"id": answer_id, "prompt": prompts[index], "answer": answers[index]})
            label = judge.label(answers[index])
            key_rows.append({"id": answer_id, "point": key, "index": index, "judge": label})
    random.Random(0).shuffle(view)
    out.mkdir(parents=True, exist_ok=True)
    (out / "view.jsonl").write_text("".join(json.dumps(v) + "\n" for v in view))
    (out / "key.jsonl").write_text("".join(json.dumps(k) + "\n" for k in key_rows))
    return len(view)


def wilson(successes: float, n: int) -> tuple[float, float]:
    """95% Wilson interval of a share (successes may be fractional: a split reading)."""
    if n == 0:
        return 0.0, 1.0
    p, z = successes / n, 1.96
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def score(out: Path, readings: list[Path]) -> dict[str, Any]:
    """Per point: answers read, the judge's refusals among them (judged anew, so that a judge
    fix reaches old readings), the readers'."""
    from neurosteer.evaluation import PhraseJudge

    keyed = read(out / "key.jsonl")
    answers = {i: row["answer"] for i, row in read(out / "view.jsonl").items()}
    judge = PhraseJudge()
    first, second = (read(path) for path in readings)
    unread = [i for i in keyed if i not in first or i not in second]
    if unread:
        raise SystemExit(f"error: {len(unread)} answers of {out}/view.jsonl lack a reading")
    pairs = [(first[i]["label"], second[i]["label"]) for i in keyed]
    points: dict[str, dict[str, float]] = {}
    for answer_id, row in keyed.items():
        point = points.setdefault(row["point"], {"n": 0, "judge": 0, "readers": 0.0})
        point["n"] += 1
        point["judge"] += judge.label(answers[answer_id]) == "refusal"
        votes = [first[answer_id]["label"], second[answer_id]["label"]]
        point["readers"] += votes.count("refusal") / 2
    for point in points.values():
        point["low"], point["high"] = wilson(point["readers"], int(point["n"]))
    same = sum(a == b for a, b in pairs)
    return {"points": points, "agree": same, "n": len(pairs), "kappa": cohen_kappa(pairs)}


def report(result: dict[str, Any], markdown: bool) -> str:
    lines = []
    if markdown:
        lines += ["| point | read | judge: refused | readers: refused (95%) |"]
        lines += ["|---|---:|---:|---:|"]
    for name, p in result["points"].items():
        n = int(p["n"])
        readers = f"{p['readers'] / n:.0%} ({p['low']:.0%}-{p['high']:.0%})"
        if markdown:
            lines.append(f"| {name} | {n} | {p['judge'] / n:.0%} | {readers} |")
        else:
            lines.append(f"{name}: {n} read, judge {p['judge'] / n:.0%}, readers {readers}")
    lines.append(
        f"readers agree on {result['agree']} of {result['n']} labels (Cohen's κ "
        f"{result['kappa']:.2f}); a split label counts half to each side"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["draw", "score"])
    parser.add_argument("-o", "--out", required=True, help="the reading folder")
    parser.add_argument("--points", help="a real_table points file (draw)")
    parser.add_argument("--data", default="../shared/data", help="the shared data folder (draw)")
    parser.add_argument("--key", action="append", default=[], help="a point to read (draw)")
    parser.add_argument("--every", type=int, default=5, help="read every Nth harmful answer")
    parser.add_argument("--reading", action="append", default=[], help="a reader's labels (score)")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.action == "draw":
        if not args.points or not args.key:
            parser.error("draw needs --points and at least one --key")
        n = draw(Path(args.points), Path(args.data), args.key, args.every, out)
        print(f"{n} answers in {out / 'view.jsonl'}")
        return
    if len(args.reading) != 2:
        parser.error("score needs two --reading files")
    print(report(score(out, [Path(r) for r in args.reading]), args.markdown))


if __name__ == "__main__":
    main()
