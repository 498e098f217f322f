"""Judges by name, for the command line and the run folders that record a judge's name.

The names reach every layer's judge: the phrase judges of `neurosteer.evaluation.judges`, the
judge model, and the organism's own judge (a workflow), so the look-up sits above them all.
"""

from __future__ import annotations

from pathlib import Path

from neurosteer.errors import InputError
from neurosteer.evaluation.judges import Judge, PhraseJudge
from neurosteer.evaluation.phrases import (
    BUILTIN_LISTS,
    PUBLISHED_WINDOWS,
    builtin_list,
    load_phrase_list,
)
from neurosteer.workflows.organism.evaluate import OrganismJudge


def get_judge(
    name: str,
    *,
    judge_model: str | Path | None = None,
    judge_prompts: str | Path | None = None,
    cache_file: str | Path | None = None,
    progress: bool = False,
) -> Judge:
    """A judge from a name, for the command line.

    Accepts a built-in list ("strict", "sweep", "patterns"), a JSON phrase-list file with an
    optional entry ("lists.json" or "lists.json#entry"), "organism" for the built-in organism's
    judge (`neurosteer.workflows.organism.evaluate.OrganismJudge`, the one `neurosteer demo`
    counts with),
    or a model judge (`model_judge_names`): "model" (the model from `judge_model` or
    $NEUROSTEER_JUDGE_MODEL, a folder or .gguf file), "model:PATH", and either with "#ENTRY" for
    a judge prompt of the `judge_prompts` file (the published llm_judges.json, say). A model is
    loaded once per process, however often its judge is asked for. The literature's lists of
    refusal_substrings.json,
    named by entry ("refusal_substrings.json#cna_neural_steering_jailbreak_benchmark_regex",
    see `PUBLISHED_WINDOWS`), are applied literally over the characters their code searched;
    other file lists get the same answer preparation as the built-in lists.

    Args:
        name: as above.
        judge_model, judge_prompts: see above; other judges ignore them.
        cache_file: a JSONL file where a model judge keeps its verdicts between runs.
        progress: show a model judge's progress bar.

    Raises:
        InputError: an unknown name, a bad file, or a model judge without a model.
    """
    if name in BUILTIN_LISTS:
        return PhraseJudge(builtin_list(name))
    if name == "organism":
        return OrganismJudge()
    if name == "model" or name.startswith(("model:", "model#")):
        # imported here: the model judge pulls in torch and transformers, phrase judges do not
        from neurosteer.evaluation.model_judge_names import model_judge

        return model_judge(
            name,
            judge_model=judge_model,
            judge_prompts=judge_prompts,
            cache_file=cache_file,
            progress=progress,
        )
    file, _, entry = name.partition("#")
    if file.lower().endswith(".json") or Path(file).is_file():
        phrases = load_phrase_list(file, entry or None)
        if phrases.name in PUBLISHED_WINDOWS:
            return PhraseJudge(phrases, window=PUBLISHED_WINDOWS[phrases.name], literal=True)
        return PhraseJudge(phrases)
    raise InputError(
        f"unknown judge '{name}'; use {', '.join(BUILTIN_LISTS)}, organism, a phrase-list "
        ".json file (optionally file.json#entry), model or model:PATH (a model folder or "
        ".gguf file), optionally with #ENTRY of a judge prompt file"
    )


#: The model judge's verdict cache in a sweep's or search's run folder (`judge_cache`).
RUN_CACHE_FILE = "judge-cache.jsonl"


def run_judge(
    name: str,
    run_dir: str | Path | None,
    *,
    judge_model: str | Path | None = None,
    judge_prompts: str | Path | None = None,
    progress: bool = False,
) -> Judge:
    """`get_judge` for a run: a model judge keeps its verdicts in RUN/judge-cache.jsonl (none
    for a run kept in memory, `run_dir` None), so a resumed run or a re-score of its answers
    asks the judge model nothing twice.

    Raises:
        InputError: as `get_judge` (a model judge without a model: the one-line error that
            names --judge-model and $NEUROSTEER_JUDGE_MODEL).
    """
    cache = None if run_dir is None else Path(run_dir) / RUN_CACHE_FILE
    return get_judge(
        name,
        judge_model=judge_model,
        judge_prompts=judge_prompts,
        cache_file=cache,
        progress=progress,
    )
