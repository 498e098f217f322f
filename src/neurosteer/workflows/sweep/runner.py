"""The loop: every (method, strength) point measured once, saved at once.

For each point not yet in RUN/results.jsonl: greedy answers to the harmful and harmless
evaluation prompts under the intervention, refusal labels from the judge, distinct-4, KL to
the unsteered model on harmless prompts, and optionally MMLU; then the answers file and one
result line are written before the next point starts. Rerunning on the same folder reads the
finished points and computes only the rest.

The unsteered model (s = 0) is one shared point, method "baseline", computed first in every
run; a method's s = 0 is that point, never recomputed per method.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from neurosteer import _run_files
from neurosteer._version import __version__
from neurosteer.errors import InputError
from neurosteer.evaluation.judges import Judge
from neurosteer.evaluation.kl import kl_to_reference
from neurosteer.evaluation.mmlu import mmlu_accuracy
from neurosteer.evaluation.mmlu_data import MMLUData, load_mmlu
from neurosteer.evaluation.quality import quality
from neurosteer.evaluation.refusal import measure_refusal
from neurosteer.interventions.protocol import Intervention
from neurosteer.methods.discovery import model_info
from neurosteer.model.environment import environment
from neurosteer.model.layout import ModelLayout, resolve_layout
from neurosteer.model.runtime import runs_model
from neurosteer.prompts.render import prompt_hash, uses_chat_template
from neurosteer.prompts.template_vars import pin_clock
from neurosteer.workflows.judges import get_judge, run_judge
from neurosteer.workflows.prompt_sets import check_sets_fit
from neurosteer.workflows.sweep.config import BASELINE, SweepConfig, knob
from neurosteer.workflows.sweep.methods import Fitted, fit_methods
from neurosteer.workflows.sweep.store import (
    CONFIG_FILE,
    PointKey,
    answers_name,
    append_result,
    check_or_write_config,
    point_key,
    point_label,
    read_config,
    read_results,
    write_answers,
)

logger = logging.getLogger(__name__)

RECORD_SCHEMA = 1


def planned_points(config: SweepConfig) -> list[PointKey]:
    """Every point of the sweep, baseline first, then method by method in config order."""
    points: list[PointKey] = [(BASELINE, 0.0, None)]
    for method in config.methods:
        seeds: Sequence[int | None] = config.random_seeds if method == "random" else (None,)
        for strength in config.steered_strengths:
            points.extend((method, strength, seed) for seed in seeds)
    return points


@runs_model
def run_sweep(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    config: SweepConfig,
    positive: Sequence[str],
    negative: Sequence[str],
    eval_harmful: Sequence[str],
    eval_harmless: Sequence[str],
    out_dir: str | Path,
    *,
    neutral: Sequence[str] | None = None,
    layout: ModelLayout | None = None,
    progress: bool = False,
    judge_model: str | Path | None = None,
    judge_prompts: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Run (or resume) a strength sweep into `out_dir`; returns every finished point's record.

    Args:
        model, tokenizer: the unsteered model (nothing active on it).
        config: methods, strengths and evaluation settings.
        positive, negative: the prompt sets the circuit and the baselines are fitted from.
        eval_harmful, eval_harmless: evaluation prompts (refusal should fall on the first and
            stay low on the second); `config.eval_limit` keeps the first n of each.
        out_dir: the run folder; created if missing, resumed if it holds the same sweep.
        neutral: prompts for the circuit's universal-neuron filter (default: the built-in set).
        layout: a resolved `ModelLayout` (default: resolved from the model).
        progress: progress bars on stderr.
        judge_model, judge_prompts: for a model judge (`workflows.judges.get_judge`): its
            model (else $NEUROSTEER_JUDGE_MODEL) and prompt file; its verdicts are cached in
            RUN/judge-cache.jsonl.

    Returns:
        The records of results.jsonl (see `neurosteer.workflows.sweep` for the schema).

    Example:
        >>> config = SweepConfig(methods=("cna", "caa"), strengths=(0, 0.5, 1))
        >>> run_sweep(model, tok, config, harmful, benign, jbb, alpaca, "runs/llama-1b")
    """
    run_dir = _run_folder(out_dir)
    sets = _prompt_sets(positive, negative, eval_harmful, eval_harmless, neutral, config)
    judge = run_judge(
        config.judge,
        run_dir,
        judge_model=judge_model,
        judge_prompts=judge_prompts,
        progress=progress,
    )
    mmlu_data = None if config.mmlu is None else load_mmlu(config.mmlu)
    layout = layout or resolve_layout(model)
    config = _pin_clock(tokenizer, config, run_dir)
    meta = _start_run(model, tokenizer, layout, config, sets, run_dir)
    fitted = _fit(model, tokenizer, config, sets, run_dir, meta, judge, layout, progress)
    evaluator = _Evaluator(model, tokenizer, config, judge, sets, mmlu_data)
    _run_points(run_dir, evaluator, fitted, layout, progress=progress)
    return read_results(run_dir)


@runs_model
def _fit(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    config: SweepConfig,
    sets: dict[str, list[str]],
    run_dir: Path,
    meta: dict[str, Any],
    judge: Judge,
    layout: ModelLayout,
    progress: bool,
) -> Fitted:
    """`fit_methods` on the run's prompt sets, and what was fitted recorded in config.json
    beside `meta` (checked against what it records when resuming)."""
    fitted = fit_methods(
        model,
        tokenizer,
        config,
        sets["positive"],
        sets["negative"],
        run_dir,
        judge=judge,
        neutral=sets.get("neutral"),
        layout=layout,
        progress=progress,
    )
    check_or_write_config(run_dir, {**meta, "fitted": fitted.settings()})
    return fitted


def _pin_clock(
    tokenizer: PreTrainedTokenizerBase, config: SweepConfig, run_dir: Path
) -> SweepConfig:
    """The config with the date fixed for a template that reads the clock: the one the run
    folder recorded when resuming, else today (see `neurosteer.prompts.template_vars`)."""
    if not uses_chat_template(tokenizer, config.chat_template):
        return config
    stored = ((read_config(run_dir) or {}).get("identity") or {}).get("template_vars")
    return replace(config, template_vars=pin_clock(tokenizer, config.template_vars, stored))


def _run_folder(out_dir: str | Path) -> Path:
    """The run folder, refused before any work when it cannot hold this sweep."""
    run_dir = Path(out_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise InputError(f"'{run_dir}' is a file; give a folder for the sweep")
    if _run_files.recorded(run_dir) and read_config(run_dir) is None:
        raise InputError(
            f"'{run_dir}' exists and is not a sweep folder (no {CONFIG_FILE}); choose a new or "
            "empty folder"
        )
    if not run_dir.parent.exists():
        raise InputError(f"the folder '{run_dir.parent}' does not exist; create it first")
    return run_dir


def _prompt_sets(
    positive: Sequence[str],
    negative: Sequence[str],
    eval_harmful: Sequence[str],
    eval_harmless: Sequence[str],
    neutral: Sequence[str] | None,
    config: SweepConfig,
) -> dict[str, list[str]]:
    """The checked prompt sets by name ("neutral" only when given); evaluation sets limited."""
    harmful = _prompts(eval_harmful, config.eval_limit, "harmful evaluation")
    harmless = _prompts(eval_harmless, config.eval_limit, "harmless evaluation")
    sets = {
        "positive": _prompts(positive, None, "positive"),
        "negative": _prompts(negative, None, "negative"),
        "harmful": harmful,
        "harmless": harmless,
    }
    if neutral is not None:
        sets["neutral"] = _prompts(neutral, None, "neutral")
    return sets


def _start_run(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    layout: ModelLayout,
    config: SweepConfig,
    sets: dict[str, list[str]],
    run_dir: Path,
) -> dict[str, Any]:
    """Refuse prompts too long for the model, then a folder holding another sweep, before any
    model work; writes config.json (a resumed run's "fitted" section is kept) and returns what
    it records about the run."""
    _check_fits(model, tokenizer, config, sets)  # before any folder is made or model run
    info = model_info(model, layout)
    meta: dict[str, Any] = {
        "identity": config.identity(),
        "prompts": {k: {"count": len(v), "sha256": prompt_hash(v)} for k, v in sets.items()},
        "model": {
            "name_or_path": info.name_or_path,
            "config_hash": info.config_hash,
            "weights": None if info.weights is None else asdict(info.weights),
        },
        "settings": config.to_dict(),
        "library_version": __version__,
        "environment": environment(model),
    }
    run_dir.mkdir(exist_ok=True)
    check_or_write_config(run_dir, meta)
    return meta


def _run_points(
    run_dir: Path,
    evaluator: _Evaluator,
    fitted: Fitted,
    layout: ModelLayout,
    *,
    progress: bool,
) -> None:
    """Measure every planned point not yet in results.jsonl, each saved as soon as it is done."""
    done = {point_key(r) for r in read_results(run_dir)}
    todo = [p for p in planned_points(evaluator.config) if p not in done]
    logger.info("sweep: %d points done, %d to go", len(done), len(todo))
    with tqdm(total=len(todo), desc="sweep", disable=not progress) as bar:
        for method, strength, seed in todo:
            bar.set_postfix_str(f"{point_label(method, seed)} s={strength:g}")
            record, answers = evaluator.point(fitted, layout, method, strength, seed)
            write_answers(run_dir, record["answers_file"], answers)
            append_result(run_dir, record)
            logger.info("finished %s at s=%g", point_label(method, seed), strength)
            bar.update(1)


@runs_model
def measure_point(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    config: SweepConfig,
    sets: dict[str, list[str]],
    fitted: Fitted,
    layout: ModelLayout,
    point: PointKey,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(result record, answer rows) of one point, measured as `run_sweep` measures it.

    Args:
        sets: "harmful" and "harmless" evaluation prompts (already limited).
        fitted: the run's interventions (`fit_methods`).
        point: (method, strength, seed).
    """
    mmlu_data = None if config.mmlu is None else load_mmlu(config.mmlu)
    evaluator = _Evaluator(model, tokenizer, config, get_judge(config.judge), sets, mmlu_data)
    return evaluator.point(fitted, layout, *point)


class _Evaluator:
    """Measures one point: the evaluation sets and settings shared by every point."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        config: SweepConfig,
        judge: Judge,
        sets: dict[str, list[str]],
        mmlu_data: MMLUData | None,
    ) -> None:
        self.model, self.tokenizer, self.config, self.judge = model, tokenizer, config, judge
        self.harmful, self.harmless = sets["harmful"], sets["harmless"]
        limit = config.kl_limit
        self.kl_prompts = self.harmless if limit is None else self.harmless[:limit]
        self.mmlu_data = mmlu_data

    def point(
        self, fitted: Fitted, layout: ModelLayout, method: str, strength: float, seed: int | None
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """(result record, answer rows) of one point."""
        config, started = self.config, time.perf_counter()
        baseline = method == BASELINE
        steering = None if baseline else fitted.intervention(method, seed, layout=layout)
        value = None if baseline else knob(method, strength)[1]
        sets: dict[str, dict[str, Any]] = {}
        rows: list[dict[str, Any]] = []
        for name, prompts in (("harmful", self.harmful), ("harmless", self.harmless)):
            judged = measure_refusal(
                self.model,
                self.tokenizer,
                prompts,
                self.judge,
                intervention=steering,
                strength=value,
                max_new_tokens=config.max_new_tokens,
                batch_size=config.batch_size,
                **config.rendering.as_kwargs(),
            )
            report = quality(judged.answers)
            sets[name] = {"n": len(prompts)}
            sets[name].update({str(k): v for k, v in judged.rates.items()})
            sets[name]["distinct4"] = report.mean_distinct4
            rows += [
                {"set": name, "prompt": p, "answer": a, "label": lab, "distinct4": d}
                for p, a, lab, d in zip(
                    prompts, judged.answers, judged.labels, report.distinct4, strict=True
                )
            ]
        name, value = knob(method, strength)
        return {
            "schema": RECORD_SCHEMA,
            "method": method,
            "strength": strength,
            "seed": seed,
            "knob": {"name": name, "value": value},
            "harmful": sets["harmful"],
            "harmless": sets["harmless"],
            "kl": self._kl(steering, value),
            "mmlu": self._mmlu(steering, value),
            "answers_file": answers_name(method, strength, seed),
            "seconds": round(time.perf_counter() - started, 3),
        }, rows

    def _kl(self, steering: Intervention | None, strength: float | None) -> dict[str, Any]:
        n, tokens = len(self.kl_prompts), self.config.kl_max_new_tokens
        if steering is None:  # the unsteered model is its own reference: exactly 0
            return {"first_token": 0.0, "mean": 0.0, "n_prompts": n, "max_new_tokens": tokens}
        report = kl_to_reference(
            self.model,
            self.tokenizer,
            self.kl_prompts,
            intervention=steering,
            strength=strength,
            max_new_tokens=tokens,
            batch_size=self.config.batch_size,
            **self.config.rendering.as_kwargs(),
        )
        return {
            "first_token": report.first_token,
            "mean": report.mean,
            "n_prompts": n,
            "max_new_tokens": tokens,
        }

    def _mmlu(self, steering: Intervention | None, strength: float | None) -> dict[str, Any] | None:
        if self.mmlu_data is None:
            return None
        result = mmlu_accuracy(
            self.model,
            self.tokenizer,
            self.mmlu_data,
            n_shot=self.config.mmlu_shots,
            limit=self.config.mmlu_limit,
            batch_size=self.config.batch_size,
            intervention=steering,
            strength=strength,
        )
        return {
            "accuracy": result.accuracy,
            "n": result.n,
            "n_shot": result.n_shot,
            "per_subject": result.per_subject,
        }


def _check_fits(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    config: SweepConfig,
    sets: dict[str, list[str]],
) -> None:
    """Render every prompt set once and refuse prompts too long for the model's context (the
    sets answered by generation need one more position)."""
    generated = {"harmful", "harmless"}
    if {"caa", "direction"} & set(config.methods) and config.layer_scan_prompts:
        generated.add("positive")  # the CAA layer scan generates from the positive prompts
    check_sets_fit(
        model,
        tokenizer,
        {name: (prompts, 1 if name in generated else 0) for name, prompts in sets.items()},
        **config.rendering.as_kwargs(),
        named=False,
    )


def _prompts(prompts: Sequence[str], limit: int | None, name: str) -> list[str]:
    if isinstance(prompts, str):
        raise InputError(f"the {name} prompts must be a list of strings, not one string")
    kept = [p for p in prompts if isinstance(p, str) and p.strip()]
    if len(kept) != len(prompts):
        raise InputError(f"the {name} prompts contain empty or non-text entries; remove them")
    if not kept:
        raise InputError(f"the {name} prompt set is empty; give at least one prompt")
    return kept[:limit] if limit is not None else kept
