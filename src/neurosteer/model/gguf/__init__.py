"""GGUF files (llama.cpp's format) in and out.

    reader   stage 1: the header, metadata and tensor index of a file, and its identity
    loading  stage 1: a .gguf file as a dequantized transformers model (`load_model` routes here)
    quants   stage 6: scale neurons inside one stored, possibly quantized, tensor
    bake     stage 6: a copy of a GGUF file with a circuit baked in, written tensor by tensor

Reading headers needs nothing extra; everything else needs the `gguf` package
(`pip install 'neurosteer[gguf]'`).
"""
