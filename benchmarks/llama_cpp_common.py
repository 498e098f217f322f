"""What llama_cpp_check.py (dense) and llama_cpp_moe_check.py share: llama.cpp's greedy tokens
from gpt4all_greedy.py, neurosteer's greedy tokens with their logit margins, and the table that
compares the two token by token.

The engine runs in gpt4all's own virtual environment (`engine_python`), so this module only
writes its job and reads its answer; neither side samples: llama.cpp at temperature 0, top-k 1
and repeat penalty 1 (gpt4all_greedy.py), transformers with `do_sample=False`.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from neurosteer.evaluation.greedy_loop import plain_greedy
from neurosteer.methods.circuit import Circuit
from neurosteer.methods.steering import steer

#: Per prompt: the greedy answer token ids and, per step, the best minus second-best logit.
Greedy = tuple[list[int], list[float]]


@dataclass(frozen=True)
class EngineRun:
    """llama.cpp's answer for a job: `tokens[key][i]` are the greedy answer ids of prompt i on
    the file named `key`, `prompt_ids[key][i]` the ids llama.cpp evaluated for that prompt."""

    engine: str
    tokens: dict[str, list[list[int]]]
    prompt_ids: dict[str, list[list[int]]]

    def same_prompts(self, prompt_ids: list[list[int]]) -> bool:
        """Whether llama.cpp tokenized every prompt, on every file, as `prompt_ids`."""
        return all(ids == prompt_ids for ids in self.prompt_ids.values())


def run_engine(
    engine_python: str,
    files: dict[str, Path],
    prompts: list[str],
    tokens: int,
    threads: int,
    out: Path,
    *,
    n_ctx: int = 512,
    special: bool = False,
) -> EngineRun:
    """llama.cpp's greedy answers (up to `tokens` ids) for every file and prompt.

    `special` makes llama.cpp parse special-token texts in a prompt (a chat template's
    "<|im_start|>") as those tokens, as transformers' tokenizer does; without it they are
    tokenized as plain text. The worker's answer is kept at `out` (JSON). Raises
    CalledProcessError when the worker fails (its message is on stderr)."""
    job = {
        "files": [str(path) for path in files.values()],
        "prompts": prompts,
        "tokens": tokens,
        "threads": threads,
        "n_ctx": n_ctx,
        "special": special,
        "output": str(out),
    }
    worker = Path(__file__).with_name("gpt4all_greedy.py")
    subprocess.run([engine_python, str(worker)], input=json.dumps(job), text=True, check=True)
    answer = json.loads(out.read_text())
    runs = {key: answer["runs"][str(path)] for key, path in files.items()}
    return EngineRun(
        engine=answer["engine"],
        tokens={key: [r["tokens"] for r in got] for key, got in runs.items()},
        prompt_ids={key: [r["prompt_ids"] for r in got] for key, got in runs.items()},
    )


def neurosteer_greedy(model: Any, prompt_ids: list[int], tokens: int, eos: int) -> Greedy:
    """Greedy answer ids of one unpadded prompt (stopping at `eos`, which is not kept) and each
    step's margin between the best and second-best logit (float)."""
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([prompt_ids]),
            attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
            max_new_tokens=tokens,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=eos,
            output_logits=True,
            return_dict_in_generate=True,
        )
    answer = out.sequences[0, len(prompt_ids) :].tolist()
    best = [step[0].topk(2).values for step in out.logits]
    margins = [float(two[0] - two[1]) for two in best]
    if eos in answer:
        answer = answer[: answer.index(eos)]
    return answer, margins


def agreement(a: list[int], b: list[int]) -> int:
    """How many leading tokens `a` and `b` share."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def cell(mine: list[int], theirs: list[int], margins: list[float] | None) -> str:
    """ "k/n" (k leading tokens shared of n), with neurosteer's logit margin where they part."""
    shared, n = agreement(mine, theirs), max(len(mine), len(theirs))
    if shared == n or margins is None or shared >= len(margins):
        return f"{shared}/{n}"
    return f"{shared}/{n} (margin {margins[shared]:.2g})"


def table(llama: dict[str, list[list[int]]], ours: dict[str, list[Greedy]]) -> list[str]:
    """Markdown rows: llama.cpp on each file (key "original", or a baked file's key such as
    "m=-1") against neurosteer unchanged or hooked at the same key, then the controls (each
    baked answer against the original one, in each engine). One column per prompt."""
    count = len(llama["original"])
    head = "| pair | " + " | ".join(f"prompt {i + 1}" for i in range(count)) + " |"
    lines = [head, "|---|" + "---|" * count]
    for key in llama:
        name = "original" if key == "original" else f"baked {key}"
        hooked = "unchanged" if key == "original" else f"hooked {key}"
        cells = [cell(a, b, mg) for a, (b, mg) in zip(llama[key], ours[key], strict=True)]
        lines.append(f"| llama.cpp {name} vs neurosteer {hooked} | " + " | ".join(cells) + " |")
    ns_tokens = {key: [tokens for tokens, _ in runs] for key, runs in ours.items()}
    for key in [k for k in llama if k != "original"]:
        for engine, runs in (("llama.cpp", llama), ("neurosteer", ns_tokens)):
            pairs = zip(runs[key], runs["original"], strict=True)
            cells = [cell(a, b, None) for a, b in pairs]
            lines.append(f"| {engine}: {key} vs original | " + " | ".join(cells) + " |")
    return lines


def neurosteer_side(
    model: Any,
    prompt_ids: list[list[int]],
    circuit: Circuit,
    multipliers: Sequence[float],
    tokens: int,
    eos: int,
) -> dict[str, list[Greedy]]:
    """{"original": unchanged, "m=0": hooked at m = 0, ...}: per prompt (tokens, margins), the
    keys `table` expects. Exits when the model's generation config would make
    `model.generate(do_sample=False)` more than an argmax (a repetition penalty, ...)."""
    if not plain_greedy(model):
        raise SystemExit(
            f"{type(model).__name__}'s generation config changes greedy decoding "
            f"({model.generation_config.to_diff_dict()}); reset it to compare plain argmax answers"
        )
    runs = {"original": [neurosteer_greedy(model, ids, tokens, eos) for ids in prompt_ids]}
    for m in multipliers:
        with steer(model, circuit, m):
            runs[f"m={m:g}"] = [neurosteer_greedy(model, ids, tokens, eos) for ids in prompt_ids]
    return runs
