"""Shared pieces of the benchmarks: random-init models of real shapes, an offline tokenizer,
prompts, side-by-side timing, a resident-memory sampler, and the CLI's one-line errors.

Random weights measure speed and memory, not behaviour.
"""

from __future__ import annotations

import json
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

import neurosteer

SHAPES: dict[str, dict[str, object]] = {
    # ~100M parameters without embeddings: GPT-2-small widths in Llama blocks
    "100m": {
        "hidden_size": 768,
        "intermediate_size": 2048,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "num_key_value_heads": 12,
        "vocab_size": 32000,
    },
    # Llama-3.2-1B
    "llama-1b": {
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "tie_word_embeddings": True,
    },
    # Llama-3.1-8B
    "llama-8b": {
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
    },
    "tiny": {
        "hidden_size": 64,
        "intermediate_size": 256,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "vocab_size": 1000,
    },
}


def random_model(
    shape: str, dtype: torch.dtype = torch.float32, device: str = "cpu"
) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(**SHAPES[shape], max_position_embeddings=4096)  # type: ignore[arg-type]
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    return model.eval()


def bench_model(
    shape: str, model_path: str | None = None, dtype: str = "float32", device: str = "cpu"
) -> tuple[Any, Any, str]:
    """(model, tokenizer, label): the model at `model_path` (any MODEL `load_model` takes, a
    GGUF file included) with its own tokenizer, or else a random model of `shape`."""
    if model_path:
        model, tokenizer = neurosteer.load_model(model_path, dtype=dtype, device=device)
        return model, tokenizer, Path(model_path).name
    return random_model(shape, getattr(torch, dtype), device), char_tokenizer(), shape


def char_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer with a chat template, built offline."""
    chars = [chr(c) for c in range(32, 127)]
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3} | {c: i + 4 for i, c in enumerate(chars)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="left",
    )
    fast.chat_template = (
        "<s>{% for m in messages %}User: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}Assistant:{% endif %}"
    )
    return fast


def prompts(n: int, offset: int = 0) -> list[str]:
    """n distinct prompts of varied lengths, from the built-in neutral set."""
    base = neurosteer.neutral_prompts()
    return [
        f"{base[(i + offset) % len(base)]} (variant {(i + offset) // len(base)})" for i in range(n)
    ]


def emit(result: dict[str, Any], path: str | None) -> None:
    """Print a result as JSON, and write it to `path` when one is given."""
    text = json.dumps(result, indent=2)
    print(text)
    if path:
        Path(path).write_text(text + "\n")


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def side_by_side(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each function, the functions alternating within every repeat so that
    drift in machine load hits all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(timed(fn))
    return {name: statistics.median(t) for name, t in times.items()}


def rss_bytes() -> int:
    """Resident memory of this process now (Linux)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    import os

    return pages * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Samples resident memory in a thread; `extra` is the peak above the level at entry."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.start = self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        self.start = self.peak = rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())

    @property
    def extra(self) -> int:
        return self.peak - self.start


def run_main(main: Callable[[], None]) -> None:
    """Run a benchmark's `main` as the CLI runs a command: an error neurosteer raises on purpose
    (bad input, a model that cannot be loaded or run) ends it with one line on stderr and exit
    code 2; `--debug` anywhere on the command line keeps the traceback instead."""
    debug = "--debug" in sys.argv
    if debug:
        sys.argv.remove("--debug")
    try:
        main()
    except neurosteer.NeurosteerError as err:
        if debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def data_folder(path: str | Path, *needed: str) -> Path:
    """The shared data folder `path`, checked before any model loads: each of `needed`
    (paths inside it) must exist.

    Raises:
        InputError: one of them is missing (the message says what --data should hold).
    """
    folder = Path(path)
    for inner in needed:
        if not (folder / inner).exists():
            raise neurosteer.InputError(
                f"--data {path}: no {inner} in it; give the shared data folder (the one holding "
                "jailbreakbench/ and refusal_direction/; in the project's layout ../shared/data)"
            )
    return folder
