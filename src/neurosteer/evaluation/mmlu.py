"""MMLU accuracy of the live, possibly steered, model.

The paper reports that MMLU stays within a point of baseline at every steering strength; this
module measures that through lm-evaluation-harness (the optional extra `neurosteer[eval]`),
from local files only.

Data: local files in either common MMLU layout, read by `mmlu_data.load_mmlu`.

Route through lm-eval: each subject becomes an lm-eval `ConfigurableTask` built in memory
(its documents handed over as `datasets.Dataset`s, so nothing touches the hub or the datasets
cache) with the fields of lm-eval's own MMLU task: the description "The following are multiple
choice questions (with answers) about {subject}.", the question, "A. .." to "D. .." and
"Answer:", choices " A" to " D" scored by loglikelihood, the first n dev questions as shots,
metric `acc`. `lm_eval.evaluator.evaluate` then renders the prompts, batches the requests
through `HFLM` wrapped around the live model object and scores them. Going through the task
machinery rather than building `Instance`s by hand keeps the prompt, few-shot and scoring rules
lm-eval's; calling `evaluate` rather than `simple_evaluate` avoids the task registry (which
indexes every bundled task) and leaves the global random seeds alone.

BOS: every context starts with the tokenizer's BOS token exactly when the tokenizer's own
encoding starts a text with it (Llama, Gemma, Mistral: yes; Qwen2, GPT-2: no), i.e. as the model
saw its training text, and never twice (a context that already starts with BOS keeps one).
Contexts are otherwise encoded without the tokenizer's special tokens, so a tokenizer that also
appends EOS cannot put an EOS between a context and its answer. No chat template is applied.

    result = mmlu_accuracy(model, tokenizer, "data/mmlu", n_shot=5, limit=20)
    sweep = mmlu_sweep(model, tokenizer, "data/mmlu", [0.5, 0.0], circuit)  # multipliers
    sweep.deltas
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from neurosteer.errors import InputError
from neurosteer.evaluation.mmlu_data import LETTERS, MMLUData, MMLUQuestion, load_mmlu
from neurosteer.interventions.protocol import Intervention
from neurosteer.model.runtime import runs_model

logger = logging.getLogger(__name__)

EXTRA_HINT = "MMLU needs the optional extra: pip install 'neurosteer[eval]'"

# The fields of lm-eval's MMLU task (tasks/mmlu/default); the target delimiter " " makes the
# scored continuations " A" .. " D".
_DOC_TO_TEXT = (
    "{{question.strip()}}\nA. {{choices[0]}}\nB. {{choices[1]}}\nC. {{choices[2]}}\n"
    "D. {{choices[3]}}\nAnswer:"
)
_DESCRIPTION = "The following are multiple choice questions (with answers) about {}.\n\n"


@dataclass(frozen=True)
class MMLUResult:
    """MMLU accuracy of one model state.

    Attributes:
        accuracy: share of all scored questions answered right (subjects weighted by size, as
            lm-eval's MMLU group does).
        per_subject: {subject: accuracy}.
        per_subject_n: {subject: questions scored}.
        correct: {subject: whether each scored question was right, in file order}.
        n: questions scored in all.
        n_shot: dev questions shown before each question.
        settings: layout, source, split, limit, batch size, whether contexts start with BOS
            (`bos_first`) and the lm-eval version.
    """

    accuracy: float
    per_subject: dict[str, float]
    per_subject_n: dict[str, int]
    correct: dict[str, tuple[bool, ...]]
    n: int
    n_shot: int
    settings: dict[str, Any] = field(default_factory=dict)


def paired_difference(
    correct: Mapping[str, Sequence[bool]], baseline: Mapping[str, Sequence[bool]]
) -> tuple[float, float]:
    """Accuracy minus the baseline's on the same questions, with the 95% half-width of that
    difference, both as fractions (0.01 is one point).

    The two runs answered the same questions, so the interval is the paired one (the normal
    approximation to the mean of per-question differences, each -1, 0 or 1): far narrower than
    two independent intervals when the runs agree on most questions, which is what tells a
    one-point change from noise on a few hundred questions.

    Args:
        correct, baseline: {subject: whether each question was right, in the same order}, as
            `MMLUResult.correct`.

    Raises:
        InputError: the two were not scored on the same subjects and question counts.
    """
    if {s: len(c) for s, c in correct.items()} != {s: len(c) for s, c in baseline.items()}:
        raise InputError(
            "paired_difference: the two MMLU runs scored different questions; score both with "
            "the same data, subjects and limit"
        )
    diffs = [int(a) - int(b) for s in correct for a, b in zip(correct[s], baseline[s], strict=True)]
    if not diffs:
        raise InputError("paired_difference: no questions were scored")
    n = len(diffs)
    mean = sum(diffs) / n
    variance = sum((d - mean) ** 2 for d in diffs) / max(n - 1, 1)
    return mean, 1.96 * math.sqrt(variance / n)


@dataclass(frozen=True)
class MMLUSweep:
    """MMLU accuracy unsteered and at each strength of one intervention.

    Attributes:
        baseline: the model with no intervention.
        strengths: the strengths, in the order given.
        results: the result at each strength.
    """

    baseline: MMLUResult
    strengths: tuple[float, ...]
    results: tuple[MMLUResult, ...]

    @property
    def accuracies(self) -> tuple[float, ...]:
        return tuple(r.accuracy for r in self.results)

    @property
    def deltas(self) -> tuple[float, ...]:
        """Accuracy at each strength minus the unsteered accuracy (fractions, not points)."""
        return tuple(r.accuracy - self.baseline.accuracy for r in self.results)

    def rows(self) -> list[dict[str, float | int]]:
        """One plain row per strength: strength, accuracy, delta, n (for tables and JSON)."""
        return [
            {"strength": s, "accuracy": r.accuracy, "delta": d, "n": r.n}
            for s, r, d in zip(self.strengths, self.results, self.deltas, strict=True)
        ]


@runs_model
def mmlu_accuracy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    data: MMLUData | str | Path,
    *,
    n_shot: int = 5,
    subjects: Sequence[str] | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    intervention: Intervention | None = None,
    strength: float | None = None,
) -> MMLUResult:
    """MMLU accuracy of the live model, scored by lm-eval, optionally under an intervention.

    Args:
        model, tokenizer: the model as it is now (hooks and baked weights included). A
            tokenizer without a pad token is copied first, since lm-eval would set one on it.
        data: `MMLUData` or a path for `load_mmlu`.
        n_shot: dev questions shown before each question (each subject needs that many).
        subjects: subjects to score (default: all in `data`).
        limit: score only the first `limit` questions of each subject.
        batch_size: requests per forward pass.
        intervention: applied with `intervention.steer(model, strength)` around the scoring
            (None: the model as it is).
        strength: the intervention's own strength (None: its `default_strength`; see
            `neurosteer.interventions.protocol`).

    Raises:
        InputError: a bad option, unknown subjects, a subject with fewer than `n_shot` dev
            questions, unreadable data, or lm-eval not installed (the message names the extra).

    Example:
        >>> mmlu_accuracy(model, tokenizer, "data/mmlu", n_shot=0, limit=10).accuracy
    """
    _check_options(n_shot, limit, batch_size)
    if not isinstance(data, MMLUData):
        data = load_mmlu(data)
    chosen = _choose_subjects(data, subjects)
    _check_shots(data, chosen, n_shot)
    lm_eval, task_class, evaluate, hflm = _import_lm_eval()
    lm, bos_id = _model_for_lm_eval(hflm, model, tokenizer, batch_size)
    tasks = {
        _task_name(s): _subject_task(task_class, s, data.dev.get(s, ()), data.test[s], n_shot)
        for s in chosen
    }
    logger.info("MMLU: %d subjects, n_shot=%d, limit=%s", len(chosen), n_shot, limit)
    scope = (
        contextlib.nullcontext() if intervention is None else intervention.steer(model, strength)
    )
    with scope:
        output = evaluate(
            lm=lm,
            task_dict={"tasks": tasks, "groups": {}},
            limit=limit,
            bootstrap_iters=0,
            log_samples=True,
        )
    version = str(getattr(lm_eval, "__version__", "unknown"))
    settings = {"limit": limit, "batch_size": batch_size, "bos_first": bos_id is not None}
    return _result(data, chosen, output, n_shot, {**settings, "lm_eval_version": version})


def _model_for_lm_eval(
    hflm: Any, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, batch_size: int
) -> tuple[Any, int | None]:
    """(lm-eval's HFLM around the live model, with the BOS rule; the BOS id it starts
    contexts with, or None). A tokenizer without a pad token is copied first, since lm-eval
    would set one on it."""
    if tokenizer.pad_token_id is None:
        tokenizer = copy.deepcopy(tokenizer)
    bos_id = _bos_to_start_with(tokenizer)
    lm = _with_bos_rule(hflm, bos_id)(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    return lm, bos_id


def _check_options(n_shot: int, limit: int | None, batch_size: int) -> None:
    if not isinstance(n_shot, int) or n_shot < 0:
        raise InputError(f"n_shot must be a whole number >= 0, got {n_shot!r}")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise InputError(f"limit must be a whole number >= 1 or None, got {limit!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a whole number >= 1, got {batch_size!r}")


def _check_shots(data: MMLUData, subjects: Sequence[str], n_shot: int) -> None:
    for subject in subjects:
        have = len(data.dev.get(subject, ()))
        if have < n_shot:
            raise InputError(
                f"subject {subject!r} has {have} dev questions but n_shot={n_shot}; "
                "lower n_shot or add dev questions"
            )


def _result(
    data: MMLUData,
    subjects: Sequence[str],
    output: dict[str, Any],
    n_shot: int,
    settings: dict[str, Any],
) -> MMLUResult:
    """The result from lm-eval's output: its logged samples, one per scored question with
    its `acc`."""
    correct: dict[str, tuple[bool, ...]] = {}
    for subject in subjects:
        rows = sorted(output["samples"][_task_name(subject)], key=lambda x: x["doc_id"])
        correct[subject] = tuple(bool(x["acc"]) for x in rows)
    n = sum(len(c) for c in correct.values())
    return MMLUResult(
        accuracy=sum(sum(c) for c in correct.values()) / n,
        per_subject={s: sum(c) / len(c) for s, c in correct.items()},
        per_subject_n={s: len(c) for s, c in correct.items()},
        correct=correct,
        n=n,
        n_shot=n_shot,
        settings={"layout": data.layout, "source": data.source, "split": data.split, **settings},
    )


@runs_model
def mmlu_sweep(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    data: MMLUData | str | Path,
    strengths: Sequence[float],
    intervention: Intervention,
    *,
    n_shot: int = 5,
    subjects: Sequence[str] | None = None,
    limit: int | None = None,
    batch_size: int = 8,
) -> MMLUSweep:
    """MMLU accuracy unsteered once, then under `intervention` at each strength.

    Args:
        strengths: the intervention's own strengths (e.g. multipliers for a circuit: 1 is
            unchanged, 0 ablates), in the order they are scored.
        intervention: what steers (see `neurosteer.interventions.protocol`).
        n_shot, subjects, limit, batch_size: as in `mmlu_accuracy`.

    Raises:
        InputError: no strengths, or as `mmlu_accuracy`.

    Example:
        >>> sweep = mmlu_sweep(model, tok, "data/mmlu", [0.5, 0.0], circuit)
        >>> sweep.rows()  # strength, accuracy, delta vs unsteered, n
    """
    if isinstance(strengths, (str, bytes)) or not strengths:
        raise InputError("mmlu_sweep() needs a non-empty list of strengths")
    if not isinstance(data, MMLUData):
        data = load_mmlu(data)
    options: dict[str, Any] = {
        "n_shot": n_shot,
        "subjects": subjects,
        "limit": limit,
        "batch_size": batch_size,
    }
    baseline = mmlu_accuracy(model, tokenizer, data, **options)
    results = []
    for strength in strengths:
        result = mmlu_accuracy(
            model, tokenizer, data, intervention=intervention, strength=strength, **options
        )
        logger.info(
            "MMLU at strength %s: %.4f (%+.4f)",
            strength,
            result.accuracy,
            result.accuracy - baseline.accuracy,
        )
        results.append(result)
    return MMLUSweep(
        baseline=baseline, strengths=tuple(float(s) for s in strengths), results=tuple(results)
    )


def _import_lm_eval() -> tuple[Any, Any, Any, Any]:
    """(lm_eval, ConfigurableTask, evaluate, HFLM), or the InputError that names the extra."""
    try:
        import lm_eval
        from lm_eval.api.task import ConfigurableTask
        from lm_eval.evaluator import evaluate
        from lm_eval.models.huggingface import HFLM
    except ImportError as err:
        raise InputError(EXTRA_HINT) from err
    return lm_eval, ConfigurableTask, evaluate, HFLM


def _bos_to_start_with(tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The BOS id when the tokenizer's own encoding starts a text with it, else None."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return None
    probe = "The answer is A"
    plain = list(tokenizer(probe, add_special_tokens=False).input_ids)
    encoded = list(tokenizer(probe).input_ids)
    return int(bos) if encoded[:1] == [bos] and plain[:1] != [bos] else None


def _with_bos_rule(hflm: Any, bos_id: int | None) -> Any:
    """An HFLM subclass whose contexts start with `bos_id` (unless None), never doubled, and
    carry no other special tokens."""

    class BosRuleLM(hflm):
        def tok_encode(
            self,
            string: str,
            add_special_tokens: bool | None = None,
            left_truncate_len: int | None = None,
            **kwargs: Any,
        ) -> list[int]:
            if add_special_tokens is not None:  # an explicit request (empty contexts) stands
                return list(
                    super().tok_encode(string, add_special_tokens, left_truncate_len, **kwargs)
                )
            ids = list(self.tokenizer.encode(string, add_special_tokens=False))
            if bos_id is not None and ids[:1] != [bos_id]:
                ids.insert(0, bos_id)
            return ids[-left_truncate_len:] if left_truncate_len else ids

    return BosRuleLM


def _task_name(subject: str) -> str:
    return f"mmlu_{subject}"


def _subject_task(
    task_class: Any,
    subject: str,
    dev: Sequence[MMLUQuestion],
    test: Sequence[MMLUQuestion],
    n_shot: int,
) -> Any:
    """An lm-eval task scoring `test` with lm-eval's MMLU fields; shots are the first dev rows."""
    import datasets

    features = datasets.Features(
        {
            "question": datasets.Value("string"),
            "choices": datasets.Sequence(datasets.Value("string")),
            "answer": datasets.Value("int64"),
        }
    )

    def as_dataset(rows: Sequence[MMLUQuestion]) -> Any:
        records = [
            {"question": q.question, "choices": list(q.choices), "answer": q.answer} for q in rows
        ]
        if not records:  # from_list cannot take an empty list with features
            return datasets.Dataset.from_dict({name: [] for name in features}, features=features)
        return datasets.Dataset.from_list(records, features=features)

    splits = datasets.DatasetDict({"dev": as_dataset(dev), "test": as_dataset(test)})

    class LocalTask(task_class):
        # lm-eval's own download() would call load_dataset() or warn about custom kwargs;
        # the documents are already in memory.
        def download(self, dataset_kwargs: Any = None, **kwargs: Any) -> None:
            self.dataset = splits

    task = LocalTask(
        config={
            "task": _task_name(subject),
            "test_split": "test",
            "fewshot_split": "dev",
            "fewshot_config": {"sampler": "first_n"},
            "output_type": "multiple_choice",
            "description": _DESCRIPTION.format(subject.replace("_", " ")),
            "doc_to_text": _DOC_TO_TEXT,
            "doc_to_choice": list(LETTERS),
            "doc_to_target": "answer",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
            "metadata": {"version": 1.0},
        }
    )
    task.set_config(key="num_fewshot", value=n_shot)
    task.set_fewshot_seed(seed=1234)  # first_n ignores it; set so no sampler is left unseeded
    return task


def _choose_subjects(data: MMLUData, subjects: Sequence[str] | None) -> tuple[str, ...]:
    if subjects is None:
        if not data.test:
            raise InputError(f"{data.source} holds no {data.split} questions")
        return data.subjects
    if isinstance(subjects, str) or not subjects:
        raise InputError("subjects must be a non-empty list of subject names, or None for all")
    unknown = [s for s in subjects if s not in data.test]
    if unknown:
        known = ", ".join(data.subjects[:8]) + (", ..." if len(data.subjects) > 8 else "")
        raise InputError(f"unknown MMLU subjects {unknown}; {data.source} has: {known}")
    return tuple(dict.fromkeys(subjects))
