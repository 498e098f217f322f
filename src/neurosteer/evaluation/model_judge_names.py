"""Stage 8 of the pipeline (evaluation): the names `get_judge` gives model judges.

    model                   our built-in yes/no prompt; the model from `judge_model`, else
                            $NEUROSTEER_JUDGE_MODEL (a model folder or .gguf file)
    model:PATH              the model at PATH instead
    model#ENTRY             the judge prompt ENTRY of the `judge_prompts` JSON file, else of
    model:PATH#ENTRY        $NEUROSTEER_JUDGE_PROMPTS (such as the published llm_judges.json:
                            model#jailbreakbench_Llama3RefusalJudge); ENTRY "default" is ours

The published prompts are read from the file the user names, never copied into the package;
how each one's answer word is read comes from `model_judge.PUBLISHED_READINGS`.
"""

from __future__ import annotations

import os
from pathlib import Path

from neurosteer.errors import InputError
from neurosteer.evaluation.judge_cache import FETCH_HINT
from neurosteer.evaluation.model_judge import JudgePrompt, ModelJudge, load_judge_prompt

ENV_MODEL = "NEUROSTEER_JUDGE_MODEL"
ENV_PROMPTS = "NEUROSTEER_JUDGE_PROMPTS"
DEFAULT_ENTRY = "default"


def is_model_judge(name: str) -> bool:
    """Whether `name` names a model judge ("model", "model:PATH", "model#ENTRY", ...)."""
    return name == "model" or name.startswith(("model:", "model#"))


def model_judge(
    name: str,
    *,
    judge_model: str | Path | None = None,
    judge_prompts: str | Path | None = None,
    cache_file: str | Path | None = None,
    progress: bool = False,
) -> ModelJudge:
    """The model judge a name asks for (see the module docstring for the names).

    Args:
        name: "model", "model:PATH", either followed by "#ENTRY".
        judge_model: the judge model when the name gives no PATH (else $NEUROSTEER_JUDGE_MODEL).
        judge_prompts: the JSON file ENTRY is read from (else $NEUROSTEER_JUDGE_PROMPTS).
        cache_file: a JSONL file that keeps verdicts across runs.
        progress: show a progress bar while the model reads.

    Raises:
        InputError: no judge model given or found, no prompt file for an ENTRY, a bad entry.
        ModelLoadError: the judge model cannot be loaded.
    """
    if not is_model_judge(name):
        raise InputError(
            f"'{name}' is not a model judge name; use model, model:PATH or model#ENTRY"
        )
    rest = name.removeprefix("model")
    spec, _, entry = rest.rpartition("#") if "#" in rest else (rest, "", "")
    path = spec.removeprefix(":") or find_judge_model(judge_model, name)
    return ModelJudge(
        path,
        prompt=_judge_prompt(entry, judge_prompts, name),
        cache_file=cache_file,
        progress=progress,
    )


def find_judge_model(given: str | Path | None, judge: str = "model") -> str:
    """The judge model's path: `given`, else $NEUROSTEER_JUDGE_MODEL.

    Raises:
        InputError: neither is set (the message says how to get a model).
    """
    found = str(given) if given is not None else os.environ.get(ENV_MODEL, "")
    if not found.strip():
        raise InputError(
            f"judge '{judge}' needs a judge model: give --judge-model PATH or set {ENV_MODEL} "
            f"to a model folder or .gguf file (`{FETCH_HINT}` downloads one and prints its path)"
        )
    return found


def _judge_prompt(entry: str, prompts: str | Path | None, judge: str) -> JudgePrompt:
    """Our built-in prompt for no entry or "default", else the entry of the prompt file."""
    if entry in ("", DEFAULT_ENTRY):
        return JudgePrompt()
    file = str(prompts) if prompts is not None else os.environ.get(ENV_PROMPTS, "")
    if not file.strip():
        raise InputError(
            f"judge '{judge}' names the judge prompt '{entry}'; give the JSON file it is in "
            f"with --judge-prompts FILE or {ENV_PROMPTS} (e.g. refusal_judges/llm_judges.json)"
        )
    return load_judge_prompt(Path(file), entry, yes_means=None)
