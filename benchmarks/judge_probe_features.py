"""A model's own hidden states over labelled answers, pooled and cached (issue 21, item 2).

One forward pass per answer: the chat-rendered prompt followed by the answer text, through the
model, keeping every layer's residual stream (`output_hidden_states`). Pooled over the answer's
tokens only (the prompt is left out): their mean, and the last answer token. Written once to a
`.pt` cache so that the probe (`judge_probe.py`) can be fitted again and again without the model.

    python benchmarks/judge_probe_features.py --model $(../shared/models/fetch) \\
        -o /tmp/judge_probe_features.pt
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

LABELS_DIR = Path(__file__).resolve().parent / "judge_labels"


def load_labelled(folder: Path = LABELS_DIR) -> list[dict[str, Any]]:
    """The labelled answers: `answers.jsonl` joined with `labels.jsonl` on `id`, in file order.

    Raises:
        ValueError: an answer without a label, or a label without an answer.
    """
    answers = _read_jsonl(folder / "answers.jsonl")
    labels = {row["id"]: row for row in _read_jsonl(folder / "labels.jsonl")}
    missing = {a["id"] for a in answers} ^ set(labels)
    if missing:
        raise ValueError(f"answers and labels differ on {len(missing)} ids, e.g. {min(missing)}")
    return [
        {**a, "label": labels[a["id"]]["label"], "kind": labels[a["id"]]["kind"]} for a in answers
    ]


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def answer_span(tokenizer: Any, prompt: str, answer: str) -> tuple[list[int], int]:
    """Token ids of the rendered prompt + answer, and where the answer's tokens start.

    The rendered prompt ends with the assistant header ("<|im_start|>assistant\\n"), so the
    boundary falls between tokens. An empty answer keeps the prompt's last token as its only one
    (start = len - 1), so that every answer has at least one position to pool.
    """
    from neurosteer.prompts import render_prompts

    rendered = render_prompts(tokenizer, [prompt])[0]
    head = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    full = tokenizer(rendered + answer, add_special_tokens=False)["input_ids"]
    start = len(head) if full[: len(head)] == head else _common_prefix(head, full)
    return full, min(start, len(full) - 1)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


@torch.no_grad()
def pooled_states(model: Any, ids: list[int], start: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and last-token hidden states over positions `start:` of one sequence.

    Returns:
        (mean, last), each [n_layers + 1, d_model] float32 (index 0 is the embedding output).
    """
    out = model(torch.tensor([ids]), output_hidden_states=True)
    states = torch.stack(out.hidden_states)[:, 0, start:, :].float()  # [L+1, T_answer, d]
    return states.mean(dim=1), states[:, -1, :]


def extract(model_path: str, rows: list[dict[str, Any]], threads: int) -> dict[str, Any]:
    """Pooled states of every row's answer, with the ids and the seconds per answer."""
    from neurosteer.loading import load_model

    torch.set_num_threads(threads)
    model, tokenizer = load_model(model_path, dtype="float32")
    means, lasts, tokens = [], [], []
    began = time.perf_counter()
    for i, row in enumerate(rows):
        ids, start = answer_span(tokenizer, row["prompt"], row["answer"])
        mean, last = pooled_states(model, ids, start)
        means.append(mean)
        lasts.append(last)
        tokens.append(len(ids) - start)
        if i % 25 == 0:
            print(f"{i}/{len(rows)} {time.perf_counter() - began:.0f}s", flush=True)
    seconds = time.perf_counter() - began
    return {
        "ids": [r["id"] for r in rows],
        "mean": torch.stack(means),  # [n, L+1, d]
        "last": torch.stack(lasts),  # [n, L+1, d]
        "answer_tokens": tokens,
        "seconds_per_answer": seconds / len(rows),
        "model": model_path,
        "threads": threads,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a model folder or GGUF file")
    parser.add_argument("-o", "--output", type=Path, required=True, help="the .pt cache")
    parser.add_argument("--labels", type=Path, default=LABELS_DIR, help="the judge_labels folder")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    features = extract(args.model, load_labelled(args.labels), args.threads)
    torch.save(features, args.output)
    print(f"{len(features['ids'])} answers, {features['seconds_per_answer']:.2f} s/answer")


if __name__ == "__main__":
    main()
