"""Tiny random-init causal LMs of every supported family, built from configs only (no downloads).

Sizes are deliberately odd and pairwise different (hidden 32, d_mlp 37, attention width 32 or
48, vocab 104) so that a transposed or mis-oriented weight raises a shape error instead of
silently "working", the way transformers' own tests catch such bugs. Weights are re-initialised
with a larger std than transformers' 0.02 so MLP activations are far from zero and neurons differ
clearly; everything is seeded so two calls with the same seed give identical models.

The tokenizer is character-level over printable ASCII, built locally with `tokenizers`.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

#: Dense families the package supports (one tiny model each).
FAMILIES: list[str] = [
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma",
    "gemma2",
    "gemma3_text",
    "phi3",
    "gpt2",
    "gpt_neox",
    "olmo2",
]
#: Mixture-of-experts families (per-expert neurons; `neurosteer.model.moe_layout`), kept apart
#: from FAMILIES because their neurons are flattened per layer (e * I + j, then shared ones).
MOE_FAMILIES: list[str] = [
    "mixtral",
    "qwen2_moe",
    "qwen3_moe",
    "olmoe",
    "deepseek_v3",
    "gpt_oss",
    "qwen3_5_moe_text",
]
MOE_EXPERTS = 5  # routed experts per MoE layer (top-2); odd, and differs from N_LAYERS
MOE_WIDTH = 23  # one expert's width I; the shared experts and dense layers use others

HIDDEN = 32
D_MLP = 37  # differs from HIDDEN, from heads * head_dim and from VOCAB
N_LAYERS = 4
N_HEADS = 4
N_KV_HEADS = 2
ODD_HEAD_DIM = 12  # families with an explicit head_dim: heads * head_dim = 48 != HIDDEN
MAX_POSITIONS = 512
INIT_STD = 0.3

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
SPECIAL_TOKENS = [PAD, UNK, BOS, EOS, *ROLE_TOKENS]
#: printable ASCII + newline, spelled as GPT-2 byte-level symbols (space is "Ġ", newline "Ċ") so
#: the vocabulary means the same under our pipeline and under the byte-level one that
#: AutoTokenizer forces on some model types (qwen2 reloads as Qwen2Tokenizer in transformers 5).
CHARS = [chr(c) for c in range(33, 127)] + ["\u0120", "\u010a"]
VOCAB = len(SPECIAL_TOKENS) + len(CHARS)  # 104
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3

DEFAULT_SYSTEM = "You are a tiny test model."
#: One user turn (a system turn is always rendered, with a default text, like Llama-3's template);
#: starts with the bos text, so render with tokenize=False and encode with add_special_tokens=False.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}"
    "{% set system = messages[0]['content'] %}{% set rest = messages[1:] %}"
    "{% else %}{% set system = '" + DEFAULT_SYSTEM + "' %}{% set rest = messages %}{% endif %}"
    "<|system|>{{ system }}<|end|>\n"
    "{% for m in rest %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@dataclass(frozen=True)
class Site:
    """Ground truth for where a family's neurons live, independent of the package's resolver."""

    layers_path: str  # from the model to the decoder-layer ModuleList
    site_path: str  # from one decoder layer to the MLP output projection
    conv1d: bool  # transformers Conv1D (weight [in, out]) instead of nn.Linear ([out, in])


SITES: dict[str, Site] = {
    **{
        f: Site("model.layers", "mlp.down_proj", False)
        for f in FAMILIES
        if f not in ("gpt2", "gpt_neox")
    },
    "gpt2": Site("transformer.h", "mlp.c_proj", True),
    "gpt_neox": Site("gpt_neox.layers", "mlp.dense_4h_to_h", False),
}


def _common(**extra: Any) -> dict[str, Any]:
    """Config fields shared by the Llama-like families (names as in their configs)."""
    return {
        "vocab_size": VOCAB,
        "hidden_size": HIDDEN,
        "intermediate_size": D_MLP,
        "num_hidden_layers": N_LAYERS,
        "num_attention_heads": N_HEADS,
        "num_key_value_heads": N_KV_HEADS,
        "max_position_embeddings": MAX_POSITIONS,
        "pad_token_id": PAD_ID,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "tie_word_embeddings": False,
        **extra,
    }


def tiny_config(family: str) -> PretrainedConfig:
    """The config of the tiny model of `family` (checked against transformers 5.24's fields)."""
    gemma_like = {
        "head_dim": ODD_HEAD_DIM,
        "query_pre_attn_scalar": ODD_HEAD_DIM,
        "hidden_activation": "gelu_pytorch_tanh",
        "tie_word_embeddings": True,  # as the real Gemma checkpoints
    }
    kw: dict[str, Any]
    if family in ("llama", "mistral", "qwen2", "olmo2"):
        kw = _common()
        if family == "mistral":
            kw["sliding_window"] = None
        if family == "qwen2":
            kw["use_sliding_window"] = False
    elif family == "qwen3":
        kw = _common(head_dim=ODD_HEAD_DIM)
    elif family == "gemma":
        kw = _common(**gemma_like)
    elif family in ("gemma2", "gemma3_text"):
        # alternating sliding/full layers; the window exceeds the test prompts, so left padding
        # and batching stay exact, but the sliding code path still runs.
        kw = _common(
            **gemma_like,
            sliding_window=128,
            layer_types=["sliding_attention", "full_attention"] * (N_LAYERS // 2),
        )
        if family == "gemma2":
            kw.update(attn_logit_softcapping=50.0, final_logit_softcapping=30.0)
    elif family == "phi3":
        kw = _common(original_max_position_embeddings=MAX_POSITIONS, resid_pdrop=0.0)
    elif family == "gpt2":
        kw = {
            "vocab_size": VOCAB,
            "n_positions": MAX_POSITIONS,
            "n_embd": HIDDEN,
            "n_layer": N_LAYERS,
            "n_head": N_HEADS,
            "n_inner": D_MLP,
            "resid_pdrop": 0.0,
            "embd_pdrop": 0.0,
            "attn_pdrop": 0.0,
            "pad_token_id": PAD_ID,
            "bos_token_id": BOS_ID,
            "eos_token_id": EOS_ID,
        }
    elif family == "gpt_neox":
        kw = {
            "vocab_size": VOCAB,
            "hidden_size": HIDDEN,
            "intermediate_size": D_MLP,
            "num_hidden_layers": N_LAYERS,
            "num_attention_heads": N_HEADS,
            "max_position_embeddings": MAX_POSITIONS,
            "rotary_pct": 0.5,
            "is_decoder": True,
            "pad_token_id": PAD_ID,
            "bos_token_id": BOS_ID,
            "eos_token_id": EOS_ID,
        }
    elif family in MOE_FAMILIES:
        kw = _moe_kw(family)
    else:
        raise ValueError(f"unknown tiny family {family!r}; known: {FAMILIES + MOE_FAMILIES}")
    return AutoConfig.for_model(family, **kw)


def _moe_kw(family: str) -> dict[str, Any]:
    """Config fields of the tiny MoE families: 5 experts of width 23, top-2; shared experts
    of width 41 (Qwen2/3.5-MoE) or 2 x 23 (DeepSeek-V3); DeepSeek's first layer dense (37)."""
    experts = {"num_experts_per_tok": 2}
    if family == "mixtral":
        return _common(
            **experts,
            num_local_experts=MOE_EXPERTS,
            intermediate_size=MOE_WIDTH,
            sliding_window=None,
        )
    if family == "gpt_oss":
        return _common(
            **experts,
            num_local_experts=MOE_EXPERTS,
            intermediate_size=MOE_WIDTH,
            head_dim=ODD_HEAD_DIM,
            sliding_window=128,
            layer_types=["sliding_attention", "full_attention"] * (N_LAYERS // 2),
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        )
    if family == "deepseek_v3":
        return _common(
            **experts,
            n_routed_experts=MOE_EXPERTS,
            n_shared_experts=2,
            moe_intermediate_size=MOE_WIDTH,
            first_k_dense_replace=1,
            n_group=1,
            topk_group=1,
            q_lora_rank=None,
            kv_lora_rank=16,
            qk_rope_head_dim=8,
            qk_nope_head_dim=8,
            v_head_dim=12,
            num_key_value_heads=N_HEADS,  # multi-head latent attention: one kv head per head
        )
    kw = _common(**experts, num_experts=MOE_EXPERTS, moe_intermediate_size=MOE_WIDTH)
    if family == "qwen2_moe":
        kw.update(
            shared_expert_intermediate_size=41, decoder_sparse_step=1, use_sliding_window=False
        )
    elif family == "olmoe":
        kw.update(intermediate_size=MOE_WIDTH)
    elif family == "qwen3_moe":
        kw.update(head_dim=ODD_HEAD_DIM, decoder_sparse_step=1)
    elif family == "qwen3_5_moe_text":
        kw.update(
            shared_expert_intermediate_size=41,
            head_dim=ODD_HEAD_DIM,
            layer_types=["linear_attention", "full_attention"] * (N_LAYERS // 2),
            linear_key_head_dim=8,
            linear_value_head_dim=8,
            linear_num_key_heads=2,
            linear_num_value_heads=4,
        )
    return kw


def make_tokenizer(chat_template: bool = True) -> PreTrainedTokenizerFast:
    """A byte-level, one-token-per-character tokenizer (printable ASCII + newline; other bytes
    become <unk>) that prepends bos like Llama's when add_special_tokens=True."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + CHARS)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK, fuse_unk=False))
    tok.add_special_tokens(SPECIAL_TOKENS)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, BOS_ID)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        additional_special_tokens=ROLE_TOKENS,
        padding_side="left",
        model_max_length=MAX_POSITIONS,
    )
    if chat_template:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def _reinit_(model: PreTrainedModel, seed: int, std: float) -> None:
    """Redraw every matrix (and 3-D expert tensor) from N(0, std); norms and biases keep defaults.

    transformers' std 0.02 leaves a 32-wide model's MLP activations near zero, which would make
    every neuron look alike; std 0.3 gives O(1) pre-activations.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():  # tied embeddings appear once
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32) * std)


def make_tiny(
    family: str,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    *,
    chat_template: bool = True,
    std: float = INIT_STD,
) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """A seeded tiny model of `family` in eval mode with eager attention, and its tokenizer.

    `chat_template=False` gives a "base model" tokenizer (no chat template).
    """
    config = tiny_config(family)
    impl: dict[str, str] = {"attn_implementation": "eager"}
    if family in MOE_FAMILIES:
        # the default "grouped_mm" experts kernel fails on CPU for odd sizes (strides % 16 bytes)
        impl["experts_implementation"] = "eager"
    # mix the family into the seed so same-architecture families (llama/mistral) still differ
    family_seed = seed * 1_000_003 + zlib.crc32(family.encode())
    torch.manual_seed(family_seed)
    model = AutoModelForCausalLM.from_config(config, **impl)
    _reinit_(model, family_seed, std)
    model = model.to(dtype).eval()
    model.generation_config.pad_token_id = PAD_ID
    model.generation_config.bos_token_id = BOS_ID
    model.generation_config.eos_token_id = EOS_ID
    return model, make_tokenizer(chat_template=chat_template)


def save_tiny(family: str, path: str | Path, **kw: Any) -> Path:
    """Save a tiny model + tokenizer so plain `from_pretrained(path)` loads both; returns path."""
    path = Path(path)
    model, tokenizer = make_tiny(family, **kw)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def neuron_site(model: PreTrainedModel, family: str, layer: int) -> torch.nn.Module:
    """The MLP output projection of decoder layer `layer`, found from `SITES` (ground truth)."""
    site = SITES[family]
    return model.get_submodule(f"{site.layers_path}.{layer}.{site.site_path}")


#: Chat templates that need a system turn, and that refuse one, for the system-turn tests.
NEEDS_SYSTEM = (
    "{% if messages[0]['role'] != 'system' %}"
    "{{ raise_exception('Conversations must start with a system message') }}{% endif %}"
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
REJECTS_SYSTEM = (  # as Gemma's template does
    "{% if messages[0]['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
