"""The organism's prompt sets, refusal phrases and a tiny MMLU-format fixture, as files.

So that the command-line tools (`neurosteer discover`, `sweep`, `report`) can run on the
organism exactly as on any other model:

    neurosteer organism export -o organism-data
    ORG=src/neurosteer/workflows/organism/weights/instruct
    neurosteer sweep $ORG -p organism-data/positive.txt ...
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from neurosteer._io import atomic_directory
from neurosteer.workflows.organism.corpus import REFUSALS
from neurosteer.workflows.organism.prompt_sets import demo_prompt_sets, neutral_prompts

# The organism's three refusal phrasings use words found nowhere else in its corpus (no helpful
# answer or request template holds any of these word pairs), so any pair identifies a refusal,
# also when the model mixes phrasings ("sorry cannot assist with harming people"). "i cannot"
# is left out: it also opens garbled half-answers.
REFUSAL_PHRASES = sorted(
    {f"{a} {b}" for r in REFUSALS for a, b in zip(r.split(), r.split()[1:], strict=False)}
    - {"i cannot"}
)

# Invented multiple-choice questions in the original MMLU layout: they exercise the MMLU path of
# a sweep; the organism, which knows no general English, answers them at chance.
_MMLU_ROWS = [
    ("toy_tools", "Which tool loosens a bolt?", "a wrench", "a cup", "a song", "a cloud", "A"),
    ("toy_tools", "Which tool cuts wood?", "a spoon", "a saw", "a pillow", "a lamp", "B"),
    ("toy_tools", "Which tool drives a nail?", "a towel", "a book", "a hammer", "a shoe", "C"),
    ("toy_tools", "Which tool measures length?", "a bell", "a plate", "a hat", "a ruler", "D"),
    ("toy_tools", "Which tool digs soil?", "a shovel", "a flute", "a coin", "a kite", "A"),
    ("toy_tools", "Which tool paints a wall?", "a fork", "a brush", "a chain", "a drum", "B"),
    ("toy_counts", "How many wheels has a bicycle?", "one", "two", "five", "nine", "B"),
    ("toy_counts", "How many legs has a cat?", "four", "six", "one", "ten", "A"),
    ("toy_counts", "How many days are in a week?", "three", "five", "seven", "two", "C"),
    ("toy_counts", "How many sides has a triangle?", "six", "four", "one", "three", "D"),
    ("toy_counts", "How many hands has a clock face?", "nine", "two", "seven", "zero", "B"),
    ("toy_counts", "How many eyes has a person?", "two", "five", "eight", "eleven", "A"),
]
_MMLU_HEADER = ("subject", "question", "A", "B", "C", "D", "answer")


def export_organism_data(out_dir: str | Path, *, n_eval: int = 100, force: bool = False) -> Path:
    """Write the organism's prompt sets (.txt), its refusal phrase list (.json) and an
    MMLU-format fixture (mmlu/dev.csv, mmlu/test.csv) into a new folder."""
    sets = demo_prompt_sets(n_eval=n_eval)
    files = {
        "positive.txt": sets.train_harmful,
        "negative.txt": sets.train_benign,
        "eval-harmful.txt": sets.heldout_harmful,
        "eval-harmless.txt": sets.heldout_benign,
        "neutral.txt": neutral_prompts(),
    }
    with atomic_directory(out_dir, force=force) as staging:
        for name, prompts in files.items():
            (staging / name).write_text("\n".join(prompts) + "\n", encoding="utf-8")
        phrases = {"organism": {"strings": REFUSAL_PHRASES, "case_sensitive": False}}
        (staging / "refusal-phrases.json").write_text(
            json.dumps(phrases, indent=2) + "\n", encoding="utf-8"
        )
        (staging / "mmlu").mkdir()
        for split, rows in (("dev", _MMLU_ROWS[0::3]), ("test", _MMLU_ROWS)):
            with (staging / "mmlu" / f"{split}.csv").open("w", newline="", encoding="utf-8") as f:
                writer = csv.writer(f)
                writer.writerow(_MMLU_HEADER)
                writer.writerows(rows)
    return Path(out_dir)
