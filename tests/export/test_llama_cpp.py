"""Optional: a baked GGUF runs in llama.cpp itself and gives the hooked model's logits.

Needs llama-cpp-python (e.g. built from its source distribution:
`CMAKE_ARGS=-DGGML_NATIVE=OFF pip install llama-cpp-python --no-binary :all:`; a native build
on a virtual machine may use instructions the host withholds and die with SIGILL), which is not
a dependency of this project; without it the test is skipped. llama.cpp computes in its own
way (quantized dot products, its own kernels), so the baked file must match the hooked model as
closely as llama.cpp matches the unchanged model on the original file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from gguf_files import circuit_neurons, hand_circuit, make_quant_tiny, write_gguf

from neurosteer.export.gguf import bake_gguf
from neurosteer.methods.steering import steer
from neurosteer.model.loading import load_model

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")

TEXT = "How do I pick a lock? Write a letter to my neighbour."


def llama_cpp_logits(path: Path, ids: list[int]) -> np.ndarray:
    """[T, vocab] float32 logits of every position, from llama.cpp."""
    model = llama_cpp.Llama(
        model_path=str(path), n_ctx=128, logits_all=True, verbose=False, n_threads=2
    )
    model.eval(ids)
    return np.array(model.scores[: len(ids)], dtype=np.float32)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize(("ggml_type", "down_type"), [("Q8_0", "Q8_0"), ("Q8_0", "Q6_K")])
def test_llama_cpp_runs_the_baked_file(
    tmp_path: Path, family: str, ggml_type: str, down_type: str
) -> None:
    hf, tokenizer = make_quant_tiny(family)
    source = write_gguf(
        hf, tokenizer, tmp_path / "model.gguf", ggml_type=ggml_type, down_type=down_type
    )
    model, _ = load_model(source)
    circuit = hand_circuit(model, circuit_neurons(hf.config.intermediate_size))
    baked = bake_gguf(source, circuit, 0.0, tmp_path / "steered.gguf").path

    ids = tokenizer.encode(TEXT, add_special_tokens=False)
    with torch.inference_mode():
        plain = model(input_ids=torch.tensor([ids])).logits[0].float().numpy()
        with steer(model, circuit, 0.0):
            hooked = model(input_ids=torch.tensor([ids])).logits[0].float().numpy()
    original_gap = np.abs(llama_cpp_logits(source, ids) - plain).max()
    baked_gap = np.abs(llama_cpp_logits(baked, ids) - hooked).max()
    steering_effect = np.abs(hooked - plain).max()
    assert steering_effect > 10 * max(original_gap, 1e-3)  # the check can tell them apart
    assert baked_gap <= 2 * original_gap + 1e-3, (baked_gap, original_gap)
