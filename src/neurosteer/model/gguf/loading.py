"""Load a .gguf file as an ordinary, dequantized transformers model.

transformers reads the config, the tokenizer (vocabulary, merges, special tokens and chat
template, all from the file's metadata) and the tensors, which it dequantizes into the requested
dtype. The result is a plain `*ForCausalLM` whose layout resolves as for any model. The model
also carries the file's identity (`source_file`), which circuits found on it record.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from neurosteer.errors import InputError, ModelLoadError
from neurosteer.model.gguf.reader import FileIdentity, GGUFHeader, read_header, require_gguf
from neurosteer.model.stop_tokens import GGUF_STOP_KEYS, merge_gguf_stop_ids

logger = logging.getLogger(__name__)

SUFFIX = ".gguf"
_SPLIT = re.compile(r"-\d{5}-of-\d{5}\.gguf$")
_SOURCE_ATTRIBUTE = "neurosteer_source_file"


def find_gguf(path: Path) -> Path | None:
    """The GGUF file `path` names: itself if it is a .gguf file, or the one .gguf file in a
    folder without a config.json; None for anything else (a transformers folder, a hub id).

    Raises:
        InputError: a folder with several .gguf files, or one part of a split GGUF.
    """
    if path.is_file():
        found = path if path.suffix.lower() == SUFFIX else None
    elif path.is_dir() and not (path / "config.json").is_file():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() == SUFFIX and p.is_file())
        if len(files) > 1:
            names = ", ".join(p.name for p in files)
            raise InputError(f"'{path}' holds several GGUF files ({names}); give one of them")
        found = files[0] if files else None
    else:
        found = None
    if found is not None and _SPLIT.search(found.name):
        raise InputError(
            f"'{found.name}' is one part of a split GGUF; merge the parts into one file first "
            "(llama.cpp's `llama-gguf-split --merge`)"
        )
    return found


def load_gguf(
    path: Path,
    *,
    dtype: torch.dtype | str = "auto",
    device_map: str | dict[str, Any] | None = None,
    max_memory: dict[Any, Any] | None = None,
    progress: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a GGUF file through transformers, dequantized to `dtype`.

    Args:
        path: the .gguf file.
        dtype: a torch dtype, or "auto" for float32 (the dequantized values exactly).
        device_map, max_memory: as for `from_pretrained` (no disk offload for GGUF files).
        progress: show on stderr which of the three steps (config, weights, tokenizer; each
            parses the file's metadata, the weights also dequantize) is running.

    Returns:
        The model (not yet moved, not yet in eval mode) and the raw tokenizer.

    Raises:
        ModelLoadError: the gguf package is missing, transformers does not support the
            file's architecture, or the file cannot be read.
    """
    require_gguf()
    header = read_header(path)
    folder, name = str(path.parent), path.name
    torch_dtype = torch.float32 if dtype == "auto" else dtype
    kwargs: dict[str, Any] = {"device_map": device_map, "max_memory": max_memory}
    gguf_config = _dequantizing_config()
    if gguf_config is not None:
        kwargs["quantization_config"] = gguf_config
    with _steps(header, progress) as step:
        try:
            step("config")
            config = AutoConfig.from_pretrained(folder, gguf_file=name)
            _expert_widths(config, header)
            step(f"weights (dequantizing to {str(torch_dtype).removeprefix('torch.')})")
            model = AutoModelForCausalLM.from_pretrained(
                folder, gguf_file=name, config=config, dtype=torch_dtype, **kwargs
            )
            step("tokenizer")
            tokenizer = _tokenizer(folder, name, config.model_type)
        except (ValueError, NotImplementedError, KeyError) as err:
            raise _unsupported(header, err) from None
    model.config._name_or_path = str(path)
    stops = {key: header.value(key) for key in GGUF_STOP_KEYS}
    merge_gguf_stop_ids(model, stops, len(tokenizer))
    setattr(model, _SOURCE_ATTRIBUTE, header.identity())
    return model, tokenizer


#: llama.cpp's expert widths and the config fields they set (transformers leaves them at the
#: config class's defaults, so a file whose experts are narrower or wider fails to load).
_EXPERT_WIDTHS = {
    "expert_feed_forward_length": "moe_intermediate_size",
    "expert_shared_feed_forward_length": "shared_expert_intermediate_size",
}


def _expert_widths(config: Any, header: GGUFHeader) -> None:
    """Set the config's expert widths from the file's `{arch}.expert_*feed_forward_length`,
    for the config classes that have those fields (Qwen2-MoE, Qwen3-MoE)."""
    for key, field in _EXPERT_WIDTHS.items():
        width = header.value(f"{header.architecture}.{key}")
        if isinstance(width, int) and hasattr(config, field):
            setattr(config, field, width)


@contextmanager
def _steps(header: GGUFHeader, progress: bool) -> Iterator[Callable[[str], None]]:
    """A bar over the loading steps: `step(name)` finishes the running step (if any) and
    names the next one on the bar; nothing is shown unless `progress`."""
    size = f"{header.file_size / 1e6:.0f} MB"
    with tqdm(
        total=3,
        desc=f"reading {header.path.name} ({size})",
        unit="step",
        disable=not progress,
        leave=False,
    ) as bar:
        started = [False]

        def step(name: str) -> None:
            if started[0]:
                bar.update(1)
            started[0] = True
            bar.set_postfix_str(name, refresh=True)

        yield step
        bar.update(1)  # the last step is done


def source_file(model: Any) -> FileIdentity | None:
    """The identity of the GGUF file `model` was loaded from (None for other models)."""
    identity = getattr(model, _SOURCE_ATTRIBUTE, None)
    return identity if isinstance(identity, FileIdentity) else None


def _tokenizer(folder: str, name: str, model_type: str) -> PreTrainedTokenizerBase:
    """The tokenizer, built by the tokenizer class of the model type when transformers has one
    (naming it skips a second full parse of the file's metadata for the config)."""
    from transformers.models.auto.tokenization_auto import TOKENIZER_MAPPING_NAMES

    if TOKENIZER_MAPPING_NAMES.get(model_type):
        return AutoTokenizer.from_pretrained(folder, gguf_file=name, tokenizer_type=model_type)
    return AutoTokenizer.from_pretrained(folder, gguf_file=name)


def _dequantizing_config() -> Any:
    """transformers >= 5 may keep GGUF blocks packed; ask for plain dense weights."""
    try:
        from transformers import GgufConfig
    except ImportError:  # older transformers always dequantize
        return None
    return GgufConfig(dequantize=True)


def _unsupported(header: GGUFHeader, err: Exception) -> ModelLoadError:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return ModelLoadError(
        f"transformers cannot load '{header.path.name}' (architecture "
        f"'{header.architecture}'): {first}; a newer transformers may support it"
    )
