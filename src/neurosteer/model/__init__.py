"""The model: where its MLP sites are (`layout`), loading it from a folder, a hub id or a GGUF
file (`loading`, `gguf/`), running it in batches (`runtime`), the fingerprint of its weights,
its stop tokens, and fetching the real test models (`fetch`)."""
