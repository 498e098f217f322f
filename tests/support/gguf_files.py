"""Write tiny HF models as GGUF files, the way llama.cpp's converter lays them out.

Tensor names come from gguf-py's name map; 2-D weights are stored (out, in) so that ggml's ne0
is the input width; llama's Q and K rows are permuted for llama.cpp's rotary layout (transformers
undoes this when it loads the file); norms and biases stay F32, and a weight whose rows do not
split into whole blocks of the asked type falls back to F16, as llama.cpp's quantizer does.

`ggml_type` names the type of every other 2-D weight and `down_type` that of the MLP down
projections (the tensors a bake changes). Q6_K, which gguf-py cannot quantize, is encoded by a
small, plain (not llama.cpp's optimising) encoder below; any valid Q6_K data serves, since a
test compares a file with its own dequantized values.

The GGUF vocabulary is the tiny tokenizer's, except that "~" becomes "ĠĠ" (two spaces) with the
merge "Ġ Ġ": llama.cpp refuses a byte-level vocabulary without merges, and transformers refuses
a merge whose result is not in the vocabulary.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch
from tiny_models import SPECIAL_TOKENS, _reinit_, make_tokenizer, tiny_config
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

from neurosteer.methods.circuit import Circuit, CircuitRecipe
from neurosteer.methods.discovery import model_info
from neurosteer.model.layout import resolve_layout

GGUF_FAMILIES = {
    "llama": gguf.MODEL_ARCH.LLAMA,
    "qwen2": gguf.MODEL_ARCH.QWEN2,
    "qwen2_moe": gguf.MODEL_ARCH.QWEN2MOE,
    "qwen3_moe": gguf.MODEL_ARCH.QWEN3MOE,
    "mixtral": gguf.MODEL_ARCH.LLAMA,  # llama.cpp writes Mixtral as llama with expert tensors
    # written for the bake's tests only (transformers does not load these architectures back):
    "olmoe": gguf.MODEL_ARCH.OLMOE,
    "deepseek_v3": gguf.MODEL_ARCH.DEEPSEEK2,
    "gpt_oss": gguf.MODEL_ARCH.GPT_OSS,
    "qwen3_5_moe_text": gguf.MODEL_ARCH.QWEN35MOE,
}
#: d_mlp of the quantized test models: whole Q6_K super-blocks (256), and unlike every other size.
QUANT_D_MLP = 256
REPLACED_TOKEN, MERGED_TOKEN = "~", "\u0120\u0120"
QK_K = 256


def make_quant_tiny(family: str, seed: int = 0) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """A tiny model whose down projections split into Q6_K super-blocks (d_mlp 256)."""
    config = tiny_config(family)
    config.intermediate_size = QUANT_D_MLP
    family_seed = seed * 1_000_003 + zlib.crc32(f"gguf-{family}".encode())
    torch.manual_seed(family_seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    _reinit_(model, family_seed, 0.3)
    return model.eval(), make_tokenizer()


#: Expert widths of the MoE test models: whole Q8_0 blocks (32), and unlike every other size.
MOE_GGUF_WIDTH, MOE_GGUF_SHARED = 64, 96


def make_gguf_moe(family: str, seed: int = 0) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """A tiny MoE model whose experts split into Q8_0 blocks (width 64, shared expert 96), with
    the routing llama.cpp computes (Qwen3-MoE: normalized top-k weights)."""
    config = tiny_config(family)
    config.moe_intermediate_size = MOE_GGUF_WIDTH
    if family in ("mixtral", "olmoe", "gpt_oss"):  # their experts' width
        config.intermediate_size = MOE_GGUF_WIDTH
    if getattr(config, "shared_expert_intermediate_size", None):
        config.shared_expert_intermediate_size = MOE_GGUF_SHARED
    if family == "qwen3_moe":
        config.norm_topk_prob = True
    family_seed = seed * 1_000_003 + zlib.crc32(f"gguf-{family}".encode())
    torch.manual_seed(family_seed)
    model = AutoModelForCausalLM.from_config(
        config, attn_implementation="eager", experts_implementation="eager"
    )
    _reinit_(model, family_seed, 0.3)
    return model.eval(), make_tokenizer()


def write_gguf(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast | None,
    path: Path,
    *,
    ggml_type: str = "F32",
    down_type: str | None = None,
    name: str = "tiny test model",
    token_ids: dict[str, int] | None = None,
    chat_template: str | None = None,
    rename: dict[str, str] | None = None,
    tokenizer_from: Path | None = None,
) -> Path:
    """Write `model` and `tokenizer` to the GGUF file `path`; returns `path`.

    `token_ids` adds `tokenizer.ggml.<key>_token_id` entries (e.g. {"eot": 5, "eom": 6}; "eos"
    replaces the tokenizer's eos);
    `chat_template` replaces the tokenizer's template in the file;
    `rename` writes tensors under other names ({GGUF name: name written});
    `tokenizer_from` copies every `tokenizer.*` entry of that GGUF file (a real vocabulary, e.g.
    Qwen2's 151,936 tokens; the model's vocab_size must match) instead of writing `tokenizer`'s
    (which may then be None), and `token_ids` and `chat_template` are not used.
    """
    config = model.config
    family = config.model_type
    arch = GGUF_FAMILIES[family]
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[arch])
    _write_metadata(writer, config, name)
    if tokenizer_from is not None:
        copy_tokenizer(writer, tokenizer_from)
    elif tokenizer is None:
        raise ValueError("write_gguf needs a tokenizer or tokenizer_from")
    else:
        ids = {"eos": tokenizer.eos_token_id, **(token_ids or {})}
        template = chat_template or tokenizer.chat_template
        _write_tokenizer(writer, tokenizer, template, ids.pop("eos"))
        for key, token in ids.items():
            writer.add_uint32(f"tokenizer.ggml.{key}_token_id", token)
    for gguf_name, values in _gguf_tensors(model, names):
        if arch == gguf.MODEL_ARCH.LLAMA and gguf_name.endswith(("attn_q.weight", "attn_k.weight")):
            q = gguf_name.endswith("attn_q.weight")
            heads = config.num_attention_heads if q else config.num_key_value_heads
            values = _permute_for_rope(values, heads)
        is_down = down_type is not None and ".ffn_down" in gguf_name
        data, stored = encode_tensor(values, down_type if is_down else ggml_type)
        writer.add_tensor((rename or {}).get(gguf_name, gguf_name), data, raw_dtype=stored)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _gguf_tensors(
    model: PreTrainedModel, names: gguf.TensorNameMap
) -> list[tuple[str, np.ndarray]]:
    """(GGUF name, float32 values) of every weight, in llama.cpp's layout: fused experts as
    `ffn_gate_exps` / `ffn_up_exps` [E, I, H] and `ffn_down_exps` [E, H, I] (numpy order; a
    transposed [E, I, H] `down_proj`, as gpt-oss's, is turned; its interleaved gate/up stay one
    `ffn_gate_up_exps` tensor). Names gguf-py does not map (attention of other kinds) are kept."""
    out = []
    for hf_name, tensor in model.state_dict().items():
        values = tensor.detach().float().numpy()
        base, suffix = hf_name.rsplit(".", 1)
        down = names.get_name(f"{base}.down_proj")
        turned = bool(getattr(model.get_submodule(base), "is_transposed", False)) if down else False
        if suffix == "gate_up_proj" and turned:
            out.append((f"{down.replace('_down_', '_gate_up_')}.weight", values.swapaxes(1, 2)))
        elif suffix == "gate_up_proj":  # [E, 2I, H]: gate rows first, then up
            half = values.shape[1] // 2
            out.append((f"{down.replace('_down_', '_gate_')}.weight", values[:, :half]))
            out.append((f"{down.replace('_down_', '_up_')}.weight", values[:, half:]))
        elif suffix == "down_proj":  # fused [E, H, I]
            out.append((f"{down}.weight", values.swapaxes(1, 2) if turned else values))
        elif base.endswith("shared_expert_gate"):  # llama.cpp keeps it as a vector [H]
            out.append((f"{names.get_name(base)}.{suffix}", values.reshape(-1)))
        else:
            out.append((f"{names.get_name(base) or base}.{suffix}", values))
    return out


def _write_metadata(writer: gguf.GGUFWriter, config: Any, name: str) -> None:
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(_rope_theta(config))
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // config.num_attention_heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    experts = getattr(config, "num_experts", None) or getattr(config, "num_local_experts", None)
    if experts:
        writer.add_expert_count(experts)
        writer.add_expert_used_count(config.num_experts_per_tok)
        width = getattr(config, "moe_intermediate_size", None) or config.intermediate_size
        writer.add_expert_feed_forward_length(width)
        shared = getattr(config, "shared_expert_intermediate_size", None)
        if shared:
            writer.add_expert_shared_feed_forward_length(shared)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _rope_theta(config: Any) -> float:
    parameters = getattr(config, "rope_parameters", None) or {}
    return float(parameters.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


def _write_tokenizer(
    writer: gguf.GGUFWriter, tokenizer: PreTrainedTokenizerFast, chat_template: str, eos: int
) -> None:
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    tokens = [MERGED_TOKEN if tok == REPLACED_TOKEN else tok for tok, _ in vocab]
    special = set(SPECIAL_TOKENS)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(
        [gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens]
    )
    writer.add_token_merges([" ".join([MERGED_TOKEN[0]] * 2)])
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(eos)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_unk_token_id(tokenizer.unk_token_id)
    writer.add_add_bos_token(False)
    writer.add_chat_template(chat_template)


def copy_tokenizer(writer: gguf.GGUFWriter, source: Path) -> None:
    """Copy every `tokenizer.*` key of the GGUF file `source` (read as metadata: the reader maps
    the file and no tensor is read) into `writer`, with its stored value types."""
    for key, field in gguf.GGUFReader(source).fields.items():
        if key.startswith("tokenizer."):
            sub_type = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(key, field.contents(), field.types[0], sub_type)


def _permute_for_rope(weights: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's Q/K row order: per head, the two rotary halves interleaved."""
    half = weights.shape[0] // heads // 2
    return weights.reshape(heads, 2, half, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def encode_tensor(
    values: np.ndarray, type_name: str
) -> tuple[np.ndarray, gguf.GGMLQuantizationType]:
    """(data, stored type): 1-D tensors F32; rows that do not fit the blocks F16."""
    qtype = gguf.GGMLQuantizationType[type_name]
    if values.ndim == 1:
        return values.astype(np.float32), gguf.GGMLQuantizationType.F32
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    if values.shape[-1] % block:
        qtype = gguf.GGMLQuantizationType.F16
    if qtype == gguf.GGMLQuantizationType.Q6_K:
        rows = encode_q6_k(values.reshape(-1, values.shape[-1]))
        return rows.reshape(*values.shape[:-1], -1), qtype
    return np.asarray(gguf.quants.quantize(values, qtype)), qtype


def file_values(model: PreTrainedModel, ggml_type: str, down_type: str | None = None) -> None:
    """Replace `model`'s weights, in place, by the values a file written with these types holds
    (each row is quantized on its own, so llama's Q/K row permutation does not matter)."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            wanted = down_type if down_type is not None and "down_proj" in name else ggml_type
            data, stored = encode_tensor(param.detach().float().numpy(), wanted)
            values = gguf.quants.dequantize(data, stored).reshape(param.shape)
            param.copy_(torch.from_numpy(np.ascontiguousarray(values)))


def encode_q6_k(values: np.ndarray) -> np.ndarray:
    """A plain Q6_K encoder: uint8 [rows, row bytes] for float32 [rows, n] (n % 256 == 0).

    The inverse of gguf-py's Q6_K decoder: per 256-value super-block an f16 scale d, 16 int8
    sub-block scales and 6-bit values q (stored q + 32, low nibbles in `ql`, high bits in `qh`).
    """
    rows, n = values.shape
    x = values.astype(np.float32).reshape(-1, QK_K)  # [blocks, 256]
    sub_max = np.abs(x.reshape(-1, 16, 16)).max(axis=-1)  # [blocks, 16]
    sub_scale = sub_max / 31
    d = (sub_scale.max(axis=-1, keepdims=True) / 127).astype(np.float16)
    d32 = d.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        scales = np.where(d32 > 0, np.round(sub_scale / d32), 0).clip(-127, 127).astype(np.int8)
        step = (d32 * scales.astype(np.float32))[..., None]  # [blocks, 16, 1]
        q = np.where(step > 0, np.round(x.reshape(-1, 16, 16) / step), 0)
    q = (q.clip(-32, 31) + 32).astype(np.uint8).reshape(-1, 2, 128)  # two halves of 128
    low, high = q & 0x0F, q >> 4
    ql = low[:, :, :64] | (low[:, :, 64:] << 4)  # [blocks, 2, 64]
    quarters = high.reshape(-1, 2, 4, 32)
    qh = (
        quarters[:, :, 0] | quarters[:, :, 1] << 2 | quarters[:, :, 2] << 4 | quarters[:, :, 3] << 6
    )
    blocks = np.concatenate(
        [ql.reshape(-1, 128), qh.reshape(-1, 64), scales.view(np.uint8), d.view(np.uint8)], axis=1
    )
    return blocks.reshape(rows, n // QK_K * 210)


def hand_circuit(model: PreTrainedModel, neurons: dict[int, list[int]]) -> Circuit:
    """A circuit of the given {layer: neurons} (scores zero) with the model's provenance."""
    layers = torch.tensor([layer for layer, idx in neurons.items() for _ in idx])
    index = torch.tensor([n for idx in neurons.values() for n in idx])
    zeros = torch.zeros(len(index))
    return Circuit(
        layers=layers,
        neurons=index,
        delta=zeros,
        positive_mean=zeros.clone(),
        negative_mean=zeros.clone(),
        model=model_info(model, resolve_layout(model)),
        settings=CircuitRecipe(method="hand"),
    )


def circuit_neurons(d_mlp: int) -> dict[int, list[int]]:
    """Neurons at block edges, two in one block, and the last one, in two layers."""
    if d_mlp == QUANT_D_MLP:
        return {1: [0, 5, 31, 32, 200], 3: [7, 255]}
    return {1: [0, 5, 36], 3: [20]}
