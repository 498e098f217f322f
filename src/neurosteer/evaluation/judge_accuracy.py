"""The refusal judges' measured accuracy on real answers, as one caption per judge.

Every refusal rate this package prints is a judge's count, and the judges are wrong on a
share of real answers. `judge_caption(name)` says how often, from the table shipped in
`neurosteer/data/judge_accuracy.json` (written by `benchmarks/judge_accuracy.py
--package-table`): accuracy on all labelled answers and on the held-out half, which model wrote
those answers, and whether the judge counts more or fewer refusals than the readers did. Given
the model of the run the rates come from, a caption also says when the accuracy was measured
on another model's answers (a judge's error rate moves with the model whose answers it reads).

    judge_caption("sweep")
    # 'judge sweep: right on 78.7% of 600 real answers of Qwen2.5-Coder-0.5B-Instruct and
    #  Qwen2.5-Coder-1.5B-Instruct read twice (held-out 79.8%); it under-counts refusal'
    judge_caption("sweep", model="/models/llama-3.2-1b-instruct.gguf")
    # '...; it under-counts refusal; measured on another model's answers, not on
    #  llama-3.2-1b-instruct's'
"""

from __future__ import annotations

import json
import re
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


def accuracy_table() -> dict[str, dict[str, Any]]:
    """The shipped table: judge name -> {all, heldout, n, n_heldout, refusals_missed,
    refusals_added} (shares in [0, 1], counts of answers); empty when the file is missing or
    of another format."""
    judges = _shipped().get("judges")
    return dict(judges) if isinstance(judges, dict) else {}


def measured_on() -> str | None:
    """The models whose answers the shipped accuracies were measured on, as the table names
    them ("A and B"; None: not recorded)."""
    model = _shipped().get("answers_model")
    return model if isinstance(model, str) and model.strip() else None


def measured_models(measured: str) -> list[str]:
    """The model names in `measured_on`'s text ("A and B" -> ["A", "B"])."""
    return [name.strip() for name in measured.split(" and ") if name.strip()]


@cache
def _shipped() -> dict[str, Any]:
    """The shipped table file's object ({} when missing or of another format)."""
    file = resources.files("neurosteer") / "data" / TABLE_FILE
    with resources.as_file(file) as path:
        return _read_table(Path(path))


def _read_table(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or data.get("format") != TABLE_FORMAT:
        return {}
    return data


def model_stem(name_or_path: str) -> str:
    """A model's name for comparison: the last part of its path or hub id, lower case,
    without a model-file suffix, '_' as '-' ("/m/Qwen2.5-Coder-0.5B-Instruct-Q8_0.gguf" ->
    "qwen2.5-coder-0.5b-instruct-q8-0")."""
    return model_label(name_or_path).lower().replace("_", "-")


def same_model(measured: str, model: str) -> bool:
    """Whether `model` (a run's name or path) is the model `measured` names: its stem holds
    `measured`'s whole (a quantised file of it, a hub id ending in it)."""
    want, got = model_stem(measured), model_stem(model)
    edge = "[^a-z0-9.]"
    return bool(want) and re.search(rf"(^|{edge}){re.escape(want)}($|{edge})", got) is not None


def model_label(name_or_path: str) -> str:
    """A run's model as a caption names it: the last part of its path or hub id, without a
    model-file suffix ("/m/qwen2.5-coder-1.5b-instruct.gguf" -> "qwen2.5-coder-1.5b-instruct")."""
    last = re.split(r"[\\/]", name_or_path.strip().rstrip("/\\"))[-1]
    return re.sub(r"\.(gguf|safetensors|bin|pt)$", "", last, flags=re.IGNORECASE)


def judge_caption(name: str, model: str | None = None) -> str:
    """One line: the judge's name and how often it is right on real answers.

    Args:
        name: a judge name as `workflows.judges.get_judge` takes it ("sweep",
            "file.json#entry", "model:PATH#ENTRY", ...).
        model: the name or path of the model whose answers the captioned rates judge (a
            run's model); None when unknown.

    Returns:
        e.g. (a list file's entry named by the entry alone) "judge sweep: right on 78.7% of
        600 real answers of Qwen2.5-Coder-0.5B-Instruct and ... read twice (held-out 79.8%); it
        under-counts refusal", with "; measured on another model's answers, not on M's" for
        a run of another model M, or "judge NAME: accuracy on real answers not measured".
    """
    shown = name if name.startswith("model") else table_name(name)
    return f"judge {shown}: {accuracy_text(name, model)}"


def accuracy_text(name: str, model: str | None = None) -> str:
    """`judge_caption` without its "judge NAME: " head, for a line that names the judge."""
    entry = accuracy_table().get(table_name(name))
    if entry is None:
        return "accuracy on real answers not measured"
    measured = measured_on()
    whose = f" of {measured}" if measured else ""
    text = (
        f"right on {entry['all']:.1%} of {entry['n']} real answers{whose} read twice "
        f"(held-out {entry['heldout']:.1%})"
    )
    missed, added = int(entry.get("refusals_missed", 0)), int(entry.get("refusals_added", 0))
    if missed != added:
        text += f"; it {'under' if missed > added else 'over'}-counts refusal"
    if model and measured and not any(same_model(m, model) for m in measured_models(measured)):
        text += f"; measured on another model's answers, not on {model_label(model)}'s"
    return text
