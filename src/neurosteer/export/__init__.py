"""Writing a steered model without loading it whole: a safetensors checkpoint shard by shard
(`streaming`) and a GGUF file tensor by tensor (`gguf`, with the quantized formats in
`gguf_quants`); and a circuit as a LoRA adapter served beside the unchanged model (`lora`: PEFT,
`lora_gguf`: llama.cpp)."""
