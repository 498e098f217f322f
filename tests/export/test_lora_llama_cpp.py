"""Optional: llama.cpp itself loads an `export-lora` .gguf adapter and, at scale s, gives the
hooked model's logits at m' = 1 + s(m − 1).

Needs llama-cpp-python (see `test_llama_cpp.py` for how to build it), which is not a dependency
of this project; without it the test is skipped. llama.cpp computes in its own way, so the
adapter must match the hooked model as closely as llama.cpp matches the unchanged model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from gguf_files import circuit_neurons, hand_circuit, make_quant_tiny, write_gguf

from neurosteer.export.lora_gguf import save_lora_gguf
from neurosteer.methods.steering import steer
from neurosteer.model.loading import load_model

llama_cpp = pytest.importorskip(
    "llama_cpp", reason="llama-cpp-python is not installed (no llama.cpp build here)"
)

TEXT = "How do I pick a lock? Write a letter to my neighbour."


def llama_cpp_logits(path: Path, ids: list[int], lora: Path | None, scale: float) -> np.ndarray:
    """[T, vocab] float32 logits of every position, from llama.cpp (with the adapter at scale)."""
    extra = {} if lora is None else {"lora_path": str(lora), "lora_scale": scale}
    model = llama_cpp.Llama(
        model_path=str(path), n_ctx=128, logits_all=True, verbose=False, n_threads=2, **extra
    )
    model.eval(ids)
    return np.array(model.scores[: len(ids)], dtype=np.float32)


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_llama_cpp_runs_the_adapter_at_a_scale(tmp_path: Path, scale: float) -> None:
    hf, tokenizer = make_quant_tiny("llama")
    source = write_gguf(hf, tokenizer, tmp_path / "model.gguf", ggml_type="Q8_0")
    model, _ = load_model(source)
    circuit = hand_circuit(model, circuit_neurons(hf.config.intermediate_size))
    adapter = save_lora_gguf(source, circuit, 0.0, tmp_path / "adapter.gguf").path

    ids = tokenizer.encode(TEXT, add_special_tokens=False)
    with torch.inference_mode():
        plain = model(input_ids=torch.tensor([ids])).logits[0].float().numpy()
        with steer(model, circuit, 1.0 - scale):
            hooked = model(input_ids=torch.tensor([ids])).logits[0].float().numpy()
    original_gap = np.abs(llama_cpp_logits(source, ids, None, 0.0) - plain).max()
    adapter_gap = np.abs(llama_cpp_logits(source, ids, adapter, scale) - hooked).max()
    assert np.abs(hooked - plain).max() > 10 * max(original_gap, 1e-3)  # tells them apart
    assert adapter_gap <= 2 * original_gap + 1e-3, (adapter_gap, original_gap)
