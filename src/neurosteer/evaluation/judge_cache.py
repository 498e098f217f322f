"""Stage 8 of the pipeline (evaluation): the model judge's memory: its model and its verdicts.

A judge model is loaded once per process (`shared_judge_model`, keyed by path, dtype and
device), so a judge made again per trial or per report does not read the weights again.

A judge model's verdict on one (prompt, answer) costs a forward pass over a few hundred tokens
(seconds on a CPU); `optimize` trials and re-scored reports ask the same questions again. The
cache keeps each question's yes-probability under a SHA-256 of everything that decides it: the
judge's identity (weights fingerprint, dtype, answer words, answer cut), the prompt template, the
prompt and the answer. It lives in memory and, when given a file, in a JSONL file of
`{"key": hex, "p_yes": float}` lines that later runs read back (a run folder's
`judge-cache.jsonl`, say). A line that does not parse (a run killed while writing) is skipped.

    cache = VerdictCache(run_dir / "judge-cache.jsonl")
    key = verdict_key(identity, template, prompt, answer)
    cache.get(key)            # None the first time
    cache.put({key: 0.93})    # kept in memory and appended to the file
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from neurosteer.errors import InputError
from neurosteer.model.loading import load_model

logger = logging.getLogger(__name__)

#: How to get a judge model here (the largest local instruct model `neurosteer models` knows).
FETCH_HINT = "neurosteer models fetch qwen2.5-coder-1.5b-instruct"


def verdict_key(identity: str, template: str, prompt: str, answer: str) -> str:
    """Hex SHA-256 of one judge question: who asks (`identity`), how, about what."""
    text = json.dumps([identity, template, prompt, answer], ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


class VerdictCache:
    """Yes-probabilities by `verdict_key`, in memory and optionally in a JSONL file.

    Args:
        file: a JSONL file to read at start (if it exists) and append new entries to; None
            keeps the cache in memory only.
        memory: the dict to keep entries in (judges over one loaded model share one, so that
            a judge made again per trial still remembers); a new one by default.

    Attributes:
        hits, misses: lookups answered from the cache, and not.

    Raises:
        InputError: `file` is a folder, or cannot be read.
    """

    def __init__(self, file: str | Path | None = None, memory: dict[str, float] | None = None):
        self.file = Path(file).expanduser() if file is not None else None
        self._values: dict[str, float] = {} if memory is None else memory
        self.hits = 0
        self.misses = 0
        if self.file is not None:
            self._values.update(_read(self.file))

    def __len__(self) -> int:
        return len(self._values)

    def get(self, key: str) -> float | None:
        """The stored yes-probability of `key`, or None (counted as a hit or a miss)."""
        value = self._values.get(key)
        if value is None:
            self.misses += 1
        else:
            self.hits += 1
        return value

    def put(self, values: Mapping[str, float]) -> None:
        """Keep `values` and append them to the file, if any (one line per entry)."""
        self._values.update(values)
        if self.file is None or not values:
            return
        self.file.parent.mkdir(parents=True, exist_ok=True)
        with self.file.open("a", encoding="utf-8") as handle:
            for key, p in values.items():
                handle.write(json.dumps({"key": key, "p_yes": p}) + "\n")


def _read(file: Path) -> dict[str, float]:
    """The entries of a cache file (none if it does not exist); bad lines are skipped."""
    if file.is_dir():
        raise InputError(f"the judge cache '{file}' is a folder; give a .jsonl file path")
    if not file.exists():
        return {}
    try:
        lines = file.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as err:
        raise InputError(f"cannot read the judge cache '{file}': {err.strerror}") from None
    values: dict[str, float] = {}
    skipped = 0
    for line in lines:
        entry = _entry(line)
        if entry is None:
            skipped += bool(line.strip())
        else:
            values[entry[0]] = entry[1]
    if skipped:
        logger.warning("skipped %d unreadable lines of the judge cache %s", skipped, file)
    return values


def _entry(line: str) -> tuple[str, float] | None:
    try:
        data = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    key, p = data.get("key"), data.get("p_yes")
    if not isinstance(key, str) or not isinstance(p, int | float) or not math.isfinite(p):
        return None
    return key, float(p)


#: Judge models loaded in this process: (path, dtype, device) -> model, tokenizer, verdicts.
_LOADED: dict[
    tuple[str, str, str | None],
    tuple[PreTrainedModel, PreTrainedTokenizerBase, dict[str, float]],
] = {}


def shared_judge_model(
    path: str | Path, dtype: str | torch.dtype, device: str | None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, dict[str, float]]:
    """The judge model at `path`, loaded on first use and kept for the rest of the process."""
    source = Path(path).expanduser()
    if not source.exists():
        raise InputError(
            f"judge model '{source}' does not exist; give a local model folder or .gguf file "
            f"(`{FETCH_HINT}` prints the path of one)"
        )
    key = (str(source.resolve()), str(dtype), device)
    if key not in _LOADED:
        logger.info("loading the judge model %s", source)
        model, tokenizer = load_model(source, dtype=dtype, device=device)
        _LOADED[key] = (model, tokenizer, {})
    return _LOADED[key]


def release_judge_models() -> None:
    """Forget the judge models loaded so far (their memory is freed once nothing holds them)."""
    _LOADED.clear()
