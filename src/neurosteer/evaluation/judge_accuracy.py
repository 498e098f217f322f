"""The refusal judges' measured accuracy on real answers, as one caption per judge.

Every refusal rate this package prints is a judge's count, and the judges are wrong on a
share of real answers. `judge_caption(name)` says how often, from the table shipped in
`neurosteer/data/judge_accuracy.json` (written by `benchmarks/judge_accuracy.py
--package-table`): accuracy on all labelled answers and on the held-out half, and whether the
judge counts more or fewer refusals than the readers did.

    judge_caption("sweep")
    # 'judge sweep: right on 71.7% of 300 real answers read twice (held-out 72.6%); it
    #  under-counts refusal'
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

TABLE_FORMAT = 1
TABLE_FILE = "judge_accuracy.json"


def table_name(name: str) -> str:
    """The name a judge has in the accuracy table.

    A phrase-list file's entry is named by the entry (`file.json#entry` -> `entry`); a model
    judge by `model` or `model#ENTRY`, whatever model file it reads (`model:PATH#ENTRY` ->
    `model#ENTRY`); any other name is itself.
    """
    if name == "model" or name.startswith(("model:", "model#")):
        entry = name.partition("#")[2]
        return f"model#{entry}" if entry else "model"
    if "#" in name:
        return name.rpartition("#")[2]
    return name


@cache
def accuracy_table() -> dict[str, dict[str, Any]]:
    """The shipped table: judge name -> {all, heldout, n, n_heldout, refusals_missed,
    refusals_added} (shares in [0, 1], counts of answers); empty when the file is missing or
    of another format."""
    file = resources.files("neurosteer") / "data" / TABLE_FILE
    with resources.as_file(file) as path:
        return _read_table(Path(path))


def _read_table(path: Path) -> dict[str, dict[str, Any]]:
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or data.get("format") != TABLE_FORMAT:
        return {}
    judges = data.get("judges")
    return dict(judges) if isinstance(judges, dict) else {}


def judge_caption(name: str) -> str:
    """One line: the judge's name and how often it is right on real answers.

    Args:
        name: a judge name as `workflows.judges.get_judge` takes it ("sweep",
            "file.json#entry", "model:PATH#ENTRY", ...).

    Returns:
        e.g. (a list file's entry named by the entry alone) "judge sweep: right on 71.7% of
        300 real answers read twice (held-out 72.6%); it under-counts refusal", or
        "judge NAME: accuracy on real answers not measured".
    """
    shown = name if name.startswith("model") else table_name(name)
    return f"judge {shown}: {accuracy_text(name)}"


def accuracy_text(name: str) -> str:
    """`judge_caption` without its "judge NAME: " head, for a line that names the judge."""
    entry = accuracy_table().get(table_name(name))
    if entry is None:
        return "accuracy on real answers not measured"
    text = (
        f"right on {entry['all']:.1%} of {entry['n']} real answers read twice "
        f"(held-out {entry['heldout']:.1%})"
    )
    missed, added = int(entry.get("refusals_missed", 0)), int(entry.get("refusals_added", 0))
    if missed != added:
        text += f"; it {'under' if missed > added else 'over'}-counts refusal"
    return text
