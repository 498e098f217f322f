"""`load_model`: local folders, dtypes, devices, and the errors for everything that can go wrong."""

from __future__ import annotations

import time
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from tiny_models import EOS, make_tiny, make_tokenizer
from transformers import BertConfig, BertModel

from neurosteer.errors import InputError, ModelLoadError
from neurosteer.model.loading import load_model, parse_device, parse_dtype, prepare_tokenizer


def test_loads_local_folder_ready_for_batches(tiny_llama_dir: Path) -> None:
    model, tokenizer = load_model(tiny_llama_dir)
    assert not model.training
    assert model.config.model_type == "llama"
    assert model.dtype == torch.float32  # "auto": the checkpoint's dtype
    assert tokenizer.pad_token is not None
    assert tokenizer.padding_side == "left"
    assert tokenizer.chat_template  # the saved template came along
    # left padding puts each prompt's last real token at -1
    batch = tokenizer(["a", "abcd"], padding=True, return_tensors="pt")
    assert batch["attention_mask"][:, -1].tolist() == [1, 1]
    assert batch["attention_mask"][0, 0].item() == 0


def test_loads_str_path(tiny_llama_dir: Path) -> None:
    model, _ = load_model(str(tiny_llama_dir))
    assert model.config.model_type == "llama"


def test_tokenizer_without_pad_token_gets_one(tmp_path: Path) -> None:
    model, _ = make_tiny("llama")
    tokenizer = make_tokenizer()
    tokenizer.pad_token = None
    tokenizer.padding_side = "right"
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)

    _, loaded = load_model(tmp_path)
    assert loaded.pad_token == EOS
    assert loaded.pad_token_id == loaded.eos_token_id
    assert loaded.padding_side == "left"


def test_prepare_tokenizer_keeps_an_existing_pad_token() -> None:
    tokenizer = make_tokenizer()
    tokenizer.padding_side = "right"
    assert prepare_tokenizer(tokenizer) is tokenizer
    assert tokenizer.pad_token == "<pad>"
    assert tokenizer.padding_side == "left"


@pytest.mark.parametrize(
    ("name", "dtype"),
    [
        ("float32", torch.float32),
        ("fp32", torch.float32),
        ("bfloat16", torch.bfloat16),
        ("bf16", torch.bfloat16),
        ("float16", torch.float16),
        ("fp16", torch.float16),
        (torch.bfloat16, torch.bfloat16),
    ],
)
def test_dtype_names(name: str | torch.dtype, dtype: torch.dtype) -> None:
    assert parse_dtype(name) == dtype


def test_dtype_auto() -> None:
    assert parse_dtype("auto") == "auto"


@pytest.mark.parametrize("dtype", ["bf16", "float16"])
def test_load_in_dtype(tiny_llama_dir: Path, dtype: str) -> None:
    model, _ = load_model(tiny_llama_dir, dtype=dtype)
    assert model.dtype == parse_dtype(dtype)
    assert all(p.dtype == model.dtype for p in model.parameters())


@pytest.mark.parametrize("dtype", ["float8", "half precision", "", "BF16x"])
def test_unknown_dtype(tiny_llama_dir: Path, dtype: str) -> None:
    with pytest.raises(InputError, match="unknown dtype") as info:
        load_model(tiny_llama_dir, dtype=dtype)
    assert "bfloat16" in str(info.value)  # says what is allowed


def test_load_on_cpu(tiny_llama_dir: Path) -> None:
    model, _ = load_model(tiny_llama_dir, device="cpu")
    assert all(p.device.type == "cpu" for p in model.parameters())


@pytest.mark.parametrize("device", ["bogus", "gpu", "cuda:x"])
def test_unknown_device(tiny_llama_dir: Path, device: str) -> None:
    with pytest.raises(InputError, match="unknown device"):
        load_model(tiny_llama_dir, device=device)


@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_when_absent(
    tiny_llama_dir: Path, monkeypatch: pytest.MonkeyPatch, device: str
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InputError, match="CUDA is not available"):
        load_model(tiny_llama_dir, device=device)


def test_mps_when_absent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(InputError, match="MPS is not available"):
        parse_device("mps")


def test_parse_device_cpu() -> None:
    assert parse_device("cpu") == torch.device("cpu")


def test_device_and_device_map_together(tiny_llama_dir: Path) -> None:
    with pytest.raises(InputError, match="not both"):
        load_model(tiny_llama_dir, device="cpu", device_map="auto")


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        load_model(tmp_path / "no-such-model")


def test_a_mistyped_gguf_path_is_a_missing_file_with_the_fetch_hint(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"model file '.*instrcut\.gguf' does not exist.*fetch"):
        load_model(tmp_path / "qwen-instrcut.gguf")


def test_missing_relative_folder() -> None:
    with pytest.raises(InputError, match="does not exist"):
        load_model("./no-such-model-folder-here")


def test_folder_without_config(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(InputError, match=r"no config\.json"):
        load_model(tmp_path)


def test_file_instead_of_folder(tiny_llama_dir: Path) -> None:
    with pytest.raises(InputError, match="is a file"):
        load_model(tiny_llama_dir / "config.json")


def test_non_causal_model(tmp_path: Path) -> None:
    config = BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=20,
        max_position_embeddings=32,
    )
    BertModel(config).save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="not a causal language model") as info:
        load_model(tmp_path)
    assert "BertModel" in str(info.value)


def test_uncached_hub_id_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(ModelLoadError) as info:
        load_model("neurosteer-tests/no-such-model-0f3a9c")
    elapsed = time.monotonic() - start
    message = str(info.value)
    assert "not in the local Hugging Face cache" in message
    assert "local folder" in message
    assert "neurosteer-tests/no-such-model-0f3a9c" in message
    assert elapsed < 10, f"took {elapsed:.1f}s; an offline miss must answer in seconds"
