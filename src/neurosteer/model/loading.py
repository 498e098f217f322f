"""Load a causal LM and its tokenizer, ready for batched work.

Local folders, hub ids and GGUF files (`neurosteer.model.gguf.loading`) all go through
`transformers`; every way this commonly fails (not cached while offline, not a causal LM, a bad
dtype or device) becomes one `ModelLoadError`/`InputError` that says what to do. The tokenizer
always pads on the left and has a pad token, so that the last real token of every prompt in a
batch sits at position -1.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import huggingface_hub.constants
import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from neurosteer.errors import InputError, ModelLoadError
from neurosteer.model.fingerprint import remember_files, weight_files
from neurosteer.model.gguf.loading import find_gguf, load_gguf

logger = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype | str] = {
    "auto": "auto",
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype | str:
    """Map a dtype name ("auto", "bf16", "float32", ...) to what `from_pretrained` takes."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise InputError(f"unknown dtype '{dtype}'; use one of: {', '.join(DTYPES)}")
    return DTYPES[dtype]


def parse_device(device: str) -> torch.device:
    """Check that a device string names a device this machine has."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise InputError(
            f"unknown device '{device}'; use cpu, cuda, cuda:N or mps (or --device-map auto)"
        ) from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device '{device}' was asked for but CUDA is not available; use cpu")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"device '{device}' was asked for but MPS is not available; use cpu")
    return parsed


# over 60 lines: a 12-line signature and 24-line docstring of public arguments; body 36 lines
def load_model(
    name_or_path: str | Path,
    *,
    dtype: str | torch.dtype = "auto",
    device_map: str | dict[str, Any] | None = None,
    device: str | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    max_memory: dict[Any, Any] | None = None,
    offload_folder: str | Path | None = None,
    progress: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer from a local folder, a GGUF file or a hub id.

    Args:
        name_or_path: a folder written by `save_pretrained`, a .gguf file (or a folder
            without config.json holding one; needs the gguf package), or a hub id such as
            "meta-llama/Llama-3.2-1B-Instruct" (must be in the local cache when offline).
        dtype: "auto" (the checkpoint's dtype; float32 for GGUF files, whose weights are
            dequantized), "float32", "bfloat16", "float16" or a torch dtype.
        device_map: passed to `from_pretrained` (e.g. "auto" to spread layers over devices).
        device: a single device to move the model to ("cpu", "cuda:0"); not with `device_map`.
        revision: hub revision (branch, tag or commit).
        trust_remote_code: allow custom modelling code shipped with the checkpoint.
        max_memory: per-device memory caps for `device_map="auto"` (accelerate's format,
            e.g. {0: "70GiB", 1: "70GiB", "cpu": "200GiB"}).
        offload_folder: where layers that fit nowhere else are offloaded to disk.
        progress: show on stderr which step of reading a GGUF file is running (the file's
            metadata is parsed three times and its weights dequantized: tens of seconds).

    Returns:
        The model in eval mode, and its tokenizer with a pad token and left padding.

    Example:
        >>> model, tokenizer = load_model("path/to/folder", dtype="bfloat16")
    """
    torch_dtype = parse_dtype(dtype)
    if (max_memory or offload_folder) and device_map is None:
        raise InputError("max_memory and offload_folder need a device map (e.g. 'auto')")
    if device is not None and device_map is not None:
        raise InputError("give either a device or a device map, not both")
    target = parse_device(device) if device is not None else None
    local_path = Path(name_or_path).expanduser()
    gguf_file = find_gguf(local_path) if local_path.exists() else None
    if gguf_file is not None:
        if offload_folder is not None:
            raise InputError("GGUF files cannot be offloaded to disk; drop --offload-folder")
        model, tokenizer = load_gguf(
            gguf_file,
            dtype=torch_dtype,
            device_map=device_map,
            max_memory=max_memory,
            progress=progress,
        )
        remember_files(model, [gguf_file])
        return _ready(model, tokenizer, target)
    source, local = _resolve_source(name_or_path)
    common: dict[str, Any] = {"revision": revision, "trust_remote_code": trust_remote_code}
    config = _load_config(source, local=local, common=common)
    _check_causal(source, config)
    placement = {
        "device_map": device_map,
        "max_memory": max_memory,
        "offload_folder": str(offload_folder) if offload_folder is not None else None,
    }
    model = _load_weights(source, config, torch_dtype, {**placement, **common})
    remember_files(model, _checkpoint_files(source, local=local, revision=revision))
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **common)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot load the tokenizer of '{source}': {err}") from None
    return _ready(model, tokenizer, target)


def _resolve_source(name_or_path: str | Path) -> tuple[str, bool]:
    """(what `from_pretrained` is given, whether it is a local folder); a path-like name that
    does not exist is an `InputError` rather than a hub lookup."""
    source = str(name_or_path)
    local = Path(source).expanduser()
    if local.exists():
        _check_local_folder(local)
        return str(local), True
    if source.startswith((".", "/", "~")) or source.count("/") > 1:
        what = "model file" if local.suffix.lower() == ".gguf" else "model folder"
        raise InputError(
            f"{what} '{source}' does not exist; check the path (`neurosteer models fetch` "
            "prints the real test model's)"
        )
    return source, False


def _load_weights(
    source: str, config: Any, torch_dtype: torch.dtype | str, options: dict[str, Any]
) -> PreTrainedModel:
    """`AutoModelForCausalLM.from_pretrained`, its failures turned into `ModelLoadError`s."""
    try:
        model: PreTrainedModel = AutoModelForCausalLM.from_pretrained(
            source, config=config, dtype=torch_dtype, **options
        )
    except ValueError as err:
        if "Unrecognized configuration class" in str(err):
            raise ModelLoadError(
                f"'{source}' is not a causal language model (model_type "
                f"'{config.model_type}'); neurosteer needs a decoder-only LM"
            ) from None
        raise ModelLoadError(f"cannot load '{source}': {err}") from None
    except OSError as err:
        raise _not_available(source, err) from None
    return model


def _checkpoint_files(source: str, *, local: bool, revision: str | None) -> list[Path]:
    """The weight files `from_pretrained` just read (a hub id: from the local cache); none
    when they cannot be found, which leaves the weights to the params fingerprint."""
    try:
        if local:
            return weight_files(Path(source))
        folder = huggingface_hub.snapshot_download(source, revision=revision, local_files_only=True)
        return weight_files(Path(folder))
    except (OSError, ValueError, InputError) as err:
        logger.info("no weight files found for %s (%s); fingerprinting the values", source, err)
        return []


def _ready(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, target: torch.device | None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    if target is not None:
        model.to(target)  # type: ignore[arg-type]
    model.eval()
    _cpu_experts(model)
    prepare_tokenizer(tokenizer)
    return model, tokenizer


def _cpu_experts(model: PreTrainedModel) -> None:
    """Compute fused MoE experts with transformers' eager loop when the model is on the CPU.

    transformers 5 defaults to "grouped_mm", whose CPU kernel needs 16-byte aligned strides
    and fails on expert widths that are not (RuntimeError "strides should be multiple of 16
    bytes"); the eager loop is the same computation (and what our hooks run while tapped).
    """
    config = getattr(model, "config", None)
    if getattr(config, "_experts_implementation", None) in (None, "eager"):
        return
    if next(model.parameters()).device.type != "cpu":
        return
    logger.info("MoE model on the CPU: computing experts with transformers' eager loop")
    model.set_experts_implementation("eager")


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Give the tokenizer a pad token (its EOS or UNK) if it has none, and pad on the left."""
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise ModelLoadError("the tokenizer has no pad, eos or unk token to pad batches with")
        tokenizer.pad_token = fallback
        logger.info("tokenizer has no pad token; using %r", fallback)
    tokenizer.padding_side = "left"
    return tokenizer


def _load_config(source: str, *, local: bool, common: dict[str, Any]) -> Any:
    """The config, from the folder, the local cache, or (when reachable) the hub, in that order.

    Trying the cache first and checking that the hub answers at all avoids minutes of
    retries on a machine without a network.
    """
    try:
        try:
            return AutoConfig.from_pretrained(source, local_files_only=True, **common)
        except OSError:
            if local or huggingface_hub.constants.HF_HUB_OFFLINE or not _hub_reachable():
                raise
            return AutoConfig.from_pretrained(source, **common)
    except OSError as err:
        raise _not_available(source, err) from None
    except ValueError as err:
        raise ModelLoadError(f"cannot read the model config of '{source}': {err}") from None


def _hub_reachable(timeout: float = 3.0) -> bool:
    endpoint = urlparse(huggingface_hub.constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname or "", port), timeout=timeout).close()
    except OSError:
        return False
    return True


def _check_causal(source: str, config: Any) -> None:
    """Refuse checkpoints saved as something other than a causal LM (e.g. `BertModel`)."""
    saved = list(getattr(config, "architectures", None) or [])
    causal = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    if saved and not any(name in causal or name.endswith("ForCausalLM") for name in saved):
        raise ModelLoadError(
            f"'{source}' is not a causal language model (it was saved as {', '.join(saved)}); "
            "neurosteer needs a decoder-only LM such as a *ForCausalLM checkpoint"
        )


def _check_local_folder(folder: Path) -> None:
    if not folder.is_dir():
        raise InputError(
            f"'{folder}' is a file; give the model's folder (with config.json) or a .gguf file"
        )
    if not (folder / "config.json").is_file():
        raise InputError(f"'{folder}' has no config.json; give a folder written by save_pretrained")


def _not_available(source: str, err: Exception) -> ModelLoadError:
    text = str(err)
    if (
        "offline" in text.lower()
        or "cannot find the requested files" in text.lower()
        or ("couldn't connect" in text.lower())
    ):
        return ModelLoadError(
            f"'{source}' is not in the local Hugging Face cache and the hub cannot be reached; "
            "download it on a connected machine (`hf download "
            f"{source}`) or pass the path of a local folder"
        )
    first_line = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    return ModelLoadError(
        f"cannot load '{source}': {first_line}; if it is a hub id, check the spelling and that it "
        "is cached (or pass a local folder)"
    )
