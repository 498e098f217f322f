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
import contextlib
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
    from neurosteer.prompts.render import render_prompts

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
def pooled_states(
    model: Any, layers: list[Any], ids: list[int], start: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and last-token residual stream after each of `layers`, over positions `start:`.

    The pass stops after the last of `layers` (nothing later, the unembedding included, runs):
    the states are recorded by output hooks, removed when the pass ends.

    Returns:
        (mean, last), each [len(layers), d_model] float32.
    """
    from neurosteer.hooks import HookSet, StopForward
    from neurosteer.hooks.recorders import first_tensor

    seen: list[torch.Tensor] = []

    def record(_module: Any, _args: tuple[Any, ...], output: Any) -> None:
        seen.append(first_tensor(output)[0, start:, :].float())  # [T_answer, d]
        if len(seen) == len(layers):
            raise StopForward

    with HookSet() as hooks:
        for layer in layers:
            hooks.post(layer, record)
        with contextlib.suppress(StopForward):
            model(torch.tensor([ids]), use_cache=False)
    states = torch.stack(seen)  # [len(layers), T_answer, d]
    return states.mean(dim=1), states[:, -1, :]


def extract(
    model_path: str, rows: list[dict[str, Any]], threads: int, depth: int, output: Path
) -> dict[str, Any]:
    """Pooled states after decoder layers 0..depth-1 of every row's answer, saved as they come.

    Rows run in id order (a hash), so a cache cut short holds a random part of both halves;
    the cache is rewritten every 25 answers. `layer` k in the cache is the output of decoder
    layer k (0-based), i.e. `hidden_states[k + 1]`.
    """
    from neurosteer.model.layout import resolve_layout
    from neurosteer.model.loading import load_model

    torch.set_num_threads(threads)
    model, tokenizer = load_model(model_path, dtype="float32")
    layers = list(resolve_layout(model).layer_modules(model))[:depth]
    rows = sorted(rows, key=lambda r: r["id"])
    means, lasts, tokens = [], [], []
    began = time.perf_counter()
    for i, row in enumerate(rows):
        ids, start = answer_span(tokenizer, row["prompt"], row["answer"])
        mean, last = pooled_states(model, layers, ids, start)
        means.append(mean)
        lasts.append(last)
        tokens.append(len(ids) - start)
        if (i + 1) % 25 == 0 or i + 1 == len(rows):
            seconds = time.perf_counter() - began
            features = {
                "ids": [r["id"] for r in rows[: i + 1]],
                "mean": torch.stack(means),  # [n, depth, d]
                "last": torch.stack(lasts),  # [n, depth, d]
                "answer_tokens": tokens,
                "seconds_per_answer": seconds / (i + 1),
                "model": model_path,
                "threads": threads,
                "depth": depth,
            }
            torch.save(features, output)
            print(f"{i + 1}/{len(rows)} {seconds:.0f}s", flush=True)
    return features


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a model folder or GGUF file")
    parser.add_argument("-o", "--output", type=Path, required=True, help="the .pt cache")
    parser.add_argument("--labels", type=Path, default=LABELS_DIR, help="the judge_labels folder")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--depth", type=int, default=17, help="decoder layers to run (from 0)")
    args = parser.parse_args(argv)
    rows = load_labelled(args.labels)
    features = extract(args.model, rows, args.threads, args.depth, args.output)
    print(f"{len(features['ids'])} answers, {features['seconds_per_answer']:.2f} s/answer")


if __name__ == "__main__":
    main()
