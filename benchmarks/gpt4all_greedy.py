"""Greedy tokens from the llama.cpp build bundled in the gpt4all wheel, for llama_cpp_check.py
and llama_cpp_moe_check.py (through llama_cpp_common.run_engine).

    /path/to/gpt4all-venv/bin/python benchmarks/gpt4all_greedy.py < job.json

Runs in a virtual environment of its own (`python3 -m venv V && V/bin/pip install gpt4all==2.8.2`):
it imports only the standard library and gpt4all, never neurosteer or torch, and gpt4all is no
dependency of the project. The job (JSON on stdin) is {"files": [.gguf paths], "prompts":
[texts], "tokens": N, "threads": T, "n_ctx": C, "special": bool (optional, false), "output":
path}; the answer, written as JSON to `output`, is {"engine": ..., "runs": {file:
[{"prompt_ids": [...], "tokens": [...]}, ...]}}.

How llama.cpp is run: gpt4all's low-level `LLModel` on its "kompute" build with no GPU device
initialised, i.e. ggml's CPU kernels; the prompt alone (template "%1%2": nothing before or
after it; no BOS since Qwen2's file says add_bos_token = false); special-token texts in it
(a chat template's "<|im_start|>") parsed as those tokens only when "special" is true, as
transformers' tokenizer does, else tokenized as plain text; a fresh context per prompt;
strictly greedy (GREEDY): temperature 0, which is llama.cpp's argmax sampler, top-k 1, and the
repeat penalty 1 (off). gpt4all's higher-level `GPT4All.generate` applies a repeat penalty of
1.18 by default and parses no special tokens outside a chat session, which is why it is not
used. Generation stops at the file's EOS token or after N tokens; the EOS token is not
reported. gpt4all also stops at its own stop texts ("### Instruction", "### Human", ...); an
answer cut there would show as a shorter llama.cpp answer in the callers' tables.
`prompt_ids` are the tokens llama.cpp evaluated for the prompt (its prompt callback), so the
caller can check that both sides tokenized alike.
"""

from __future__ import annotations

import json
import sys
from importlib.metadata import version
from typing import Any

from gpt4all._pyllmodel import LLModel

#: The sampling options of every prompt: llama.cpp's argmax, nothing that reweighs the logits.
GREEDY = {"top_k": 1, "temp": 0.0, "repeat_penalty": 1.0, "repeat_last_n": 0}


def greedy(model: LLModel, prompt: str, tokens: int, special: bool) -> dict[str, list[int]]:
    """The prompt's token ids and up to `tokens` greedy answer token ids of one prompt."""
    prompt_ids: list[int] = []
    answer: list[int] = []
    errors: list[str] = []

    def on_prompt_token(token: int) -> bool:
        prompt_ids.append(token)
        return True

    def on_answer_token(token: int, text: str) -> bool:
        if token < 0:  # gpt4all reports an error as token -1 with its message
            errors.append(text)
            return False  # (an exception would not leave a ctypes callback)
        answer.append(token)
        return True

    model._prompt_callback = on_prompt_token  # type: ignore[method-assign]
    model.prompt_model(
        prompt,
        "%1%2",
        on_answer_token,
        n_predict=tokens,
        reset_context=True,
        special=special,
        **GREEDY,
    )
    if errors:
        raise SystemExit(f"llama.cpp failed on {prompt!r}: {errors[0]}")
    return {"prompt_ids": prompt_ids, "tokens": answer}


def run_file(path: str, job: dict[str, Any]) -> list[dict[str, list[int]]]:
    """Load one GGUF file in llama.cpp and answer every prompt of the job."""
    model = LLModel(path, job["n_ctx"], 0, "kompute")
    if not model.load_model():
        raise SystemExit(f"llama.cpp (gpt4all) could not load {path}; see the log above")
    model.set_thread_count(job["threads"])
    try:
        special = bool(job.get("special", False))
        return [greedy(model, prompt, job["tokens"], special) for prompt in job["prompts"]]
    finally:
        model.close()


def main() -> None:
    job = json.load(sys.stdin)
    runs = {path: run_file(path, job) for path in job["files"]}
    engine = f"llama.cpp bundled in gpt4all {version('gpt4all')} (CPU)"
    with open(job["output"], "w") as out:
        json.dump({"engine": engine, "runs": runs}, out)


if __name__ == "__main__":
    main()
