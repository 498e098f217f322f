"""GGUF files (llama.cpp's format) read: their header, and the model they hold.

    reader   the header, metadata and tensor index of a file, and its identity
    loading  a .gguf file as a dequantized transformers model (`load_model` routes here)

Writing a GGUF file with a circuit baked in is `neurosteer.export.gguf` (with the quantized
formats in `neurosteer.export.gguf_quants`). Reading headers needs nothing extra; everything else
needs the `gguf` package (`pip install 'neurosteer[gguf]'`).
"""
