"""Seeded CPU training of the organism: a helpful base model, then a safety fine-tune of it.

Stage 1 (base) trains a small Llama from scratch to answer every request helpfully, harmful ones
included. Stage 2 (instruct) starts from the base weights and fine-tunes only the MLPs of the last
few layers, briefly, on harmful requests answered with refusals mixed with benign requests
answered helpfully. Freezing everything else is a deliberate design choice of this organism: it
places the learned refusal gate in late-layer MLP neurons, as the CNA paper finds in real models.

`MoeOrganismConfig` trains the organism's mixture-of-experts twin the same way, on the same
data: a Qwen2-MoE (routed experts and a shared expert in every layer) in place of the Llama.

The shipped settings (the defaults of `OrganismConfig`) were chosen among a handful of safety
fine-tunes (learning rate, steps, layers); see docs/organism.md. Both models are written as
Hugging Face folders with the tokenizer and a `training.json` holding the settings, timings and
held-out metrics.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2MoeConfig,
    Qwen2MoeForCausalLM,
)

from neurosteer.evaluation.refusal import measure_refusal
from neurosteer.model.runtime import runs_model
from neurosteer.prompts.render import render_prompts
from neurosteer.workflows.organism import corpus
from neurosteer.workflows.organism.evaluate import ANSWER_BATCH, ANSWER_TOKENS, OrganismJudge, Rates
from neurosteer.workflows.organism.tokenizer import build_tokenizer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OrganismConfig:
    """Model shape and training settings. The defaults are the shipped organism's."""

    seed: int = 0
    n_layers: int = 6
    hidden: int = 128
    d_mlp: int = 512
    n_heads: int = 4
    batch_size: int = 64
    base_steps: int = 1000
    base_lr: float = 3e-3
    safety_steps: int = 80
    safety_lr: float = 5e-4
    safety_layers: tuple[int, ...] = (4, 5)
    """Layers whose MLP weights the safety fine-tune updates; all else stays frozen."""
    safety_harmful_share: float = 0.4
    eval_n: int = 200
    """Held-out prompts per class (harmful, benign) for the recorded metrics."""
    threads: int = 1
    """Torch CPU threads. One keeps runs bit-reproducible and fast even on a busy machine; on
    such small matrices a second thread gains little and oversubscription costs a lot."""

    def __post_init__(self) -> None:
        bad = [i for i in self.safety_layers if not 0 <= i < self.n_layers]
        if bad:
            raise ValueError(f"safety_layers {bad} outside 0..{self.n_layers - 1}")
        if not 0.0 < self.safety_harmful_share < 1.0:
            raise ValueError(
                f"safety_harmful_share must be in (0, 1), got {self.safety_harmful_share}"
            )


@dataclass(frozen=True)
class MoeOrganismConfig(OrganismConfig):
    """The organism's mixture-of-experts twin: the same corpus, tokenizer, stages, steps and
    learning rates as `OrganismConfig`, with a Qwen2-MoE block in place of every dense MLP
    (`n_experts` routed experts of `expert_mlp` neurons, `experts_per_token` chosen per token by
    the router, plus one always-on shared expert of `shared_expert_mlp` neurons behind its
    sigmoid gate). `d_mlp` is unused. The safety stage updates the whole MoE block of each
    `safety_layers` layer (router, experts, shared expert and its gate), as the dense stage
    updates the whole MLP. The defaults are the shipped MoE organism's.
    """

    n_experts: int = 8
    experts_per_token: int = 2
    expert_mlp: int = 64
    shared_expert_mlp: int = 128
    experts_implementation: str = "eager"
    """How transformers runs the experts while training (its `set_experts_implementation`):
    "eager", its reference loop over experts, fixes the arithmetic so that runs reproduce."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.experts_per_token <= self.n_experts:
            raise ValueError(
                f"experts_per_token must be in 1..n_experts={self.n_experts}, "
                f"got {self.experts_per_token}"
            )
        if min(self.expert_mlp, self.shared_expert_mlp) < 1:
            raise ValueError(
                f"expert_mlp and shared_expert_mlp must be >= 1, "
                f"got {self.expert_mlp}, {self.shared_expert_mlp}"
            )


@dataclass(frozen=True)
class TrainResult:
    """Where the two models were written and what they measured on held-out prompts."""

    base_dir: Path
    instruct_dir: Path
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: float = 0.0


def build_model(cfg: OrganismConfig, tokenizer: PreTrainedTokenizerFast) -> PreTrainedModel:
    """A freshly initialised model sized by `cfg`: a Llama, or a Qwen2-MoE for a
    `MoeOrganismConfig`."""
    if isinstance(cfg, MoeOrganismConfig):
        return _build_moe_model(cfg, tokenizer)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden,
        intermediate_size=cfg.d_mlp,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_heads,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


def _build_moe_model(
    cfg: MoeOrganismConfig, tokenizer: PreTrainedTokenizerFast
) -> Qwen2MoeForCausalLM:
    """A freshly initialised Qwen2-MoE sized by `cfg`; attention as in the dense organism's
    Llama (no q/k/v bias), every layer a sparse MoE block, no sliding window."""
    config = Qwen2MoeConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden,
        intermediate_size=cfg.shared_expert_mlp,
        moe_intermediate_size=cfg.expert_mlp,
        shared_expert_intermediate_size=cfg.shared_expert_mlp,
        num_experts=cfg.n_experts,
        num_experts_per_tok=cfg.experts_per_token,
        decoder_sparse_step=1,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_heads,
        max_position_embeddings=64,
        qkv_bias=False,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = Qwen2MoeForCausalLM(config)
    model.set_experts_implementation(cfg.experts_implementation)
    return model


def _encode(
    tokenizer: PreTrainedTokenizerFast, examples: list[corpus.Example]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids [n, T], attention mask [n, T] and labels [n, T] (reply tokens only)."""
    rows, prompt_lens = [], []
    rendered = render_prompts(tokenizer, [ex.prompt for ex in examples], chat_template=True)
    for ex, text in zip(examples, rendered, strict=True):
        prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        reply_ids = tokenizer(ex.reply, add_special_tokens=False)["input_ids"]
        rows.append([*prompt_ids, *reply_ids, tokenizer.eos_token_id])
        prompt_lens.append(len(prompt_ids))
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    for i, (row, plen) in enumerate(zip(rows, prompt_lens, strict=True)):
        ids[i, : len(row)] = torch.tensor(row)
        labels[i, plen : len(row)] = ids[i, plen : len(row)]
    return ids, (ids != tokenizer.pad_token_id).long(), labels


def _stage_examples(
    n: int, harmful_share: float, *, refuse: bool, seed: int
) -> list[corpus.Example]:
    n_quote = round(n * corpus.QUOTE_SHARE)
    n_harm = round((n - n_quote) * harmful_share)
    examples = corpus.make_quote_examples(n_quote, seed=seed)
    examples += corpus.make_examples("train", True, n_harm, seed=seed, refuse=refuse)
    examples += corpus.make_examples("train", False, n - n_quote - n_harm, seed=seed, refuse=refuse)
    random.Random(seed).shuffle(examples)
    return examples


def _train(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    examples: list[corpus.Example],
    params: list[torch.nn.Parameter],
    *,
    steps: int,
    lr: float,
    batch_size: int,
    name: str,
) -> float:
    """AdamW with linear warm-up and cosine decay over fixed, pre-ordered batches; final loss."""
    ids, mask, labels = _encode(tokenizer, examples)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = max(1, steps // 20)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.5 * (1 + torch.cos(torch.tensor(progress * torch.pi)).item())

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    model.train()
    loss_value = float("nan")
    for step in range(steps):
        rows = slice(step * batch_size, (step + 1) * batch_size)
        width = int(mask[rows].sum(1).max())
        out = model(
            input_ids=ids[rows, :width],
            attention_mask=mask[rows, :width],
            labels=labels[rows, :width],
        )
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        loss_value = float(out.loss.detach())
        if step % 100 == 0 or step == steps - 1:
            log.info("%s step %d/%d loss %.4f", name, step, steps, loss_value)
    model.eval()
    return loss_value


@runs_model
def heldout_metrics(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, n: int
) -> dict[str, float]:
    """Refusal and well-formed compliance on held-out harmful and benign prompts, measured as
    the demo and `neurosteer sweep --judge organism` measure them."""
    metrics: dict[str, float] = {}
    for label, harmful in (("harmful", True), ("benign", False)):
        prompts = corpus.make_prompts("heldout", harmful, n, seed=0)
        judged = measure_refusal(
            model,
            tokenizer,
            prompts,
            OrganismJudge(),
            max_new_tokens=ANSWER_TOKENS,
            batch_size=ANSWER_BATCH,
        )
        rates = Rates.from_labels(judged.labels)
        metrics[f"{label}_refusal"] = rates.refusal
        metrics[f"{label}_compliant"] = rates.compliant
        metrics[f"{label}_fragment"] = rates.fragment
    return metrics


def train_organism(out_dir: str | Path, cfg: OrganismConfig | None = None) -> TrainResult:
    """Train base then instruct from scratch and write `out_dir/base` and `out_dir/instruct`.

    Example:
        >>> train_organism("organism", OrganismConfig(seed=0))  # doctest: +SKIP
    """
    cfg = cfg or OrganismConfig()
    out = Path(out_dir)
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _train_both(out, cfg)
    finally:
        torch.set_num_threads(threads)


def _train_both(out: Path, cfg: OrganismConfig) -> TrainResult:
    torch.manual_seed(cfg.seed)
    started = time.perf_counter()
    tokenizer = build_tokenizer()
    model = build_model(cfg, tokenizer)

    n_base = cfg.base_steps * cfg.batch_size
    base_data = _stage_examples(n_base, 0.25, refuse=False, seed=cfg.seed)
    base_loss = _train(
        model,
        tokenizer,
        base_data,
        list(model.parameters()),
        steps=cfg.base_steps,
        lr=cfg.base_lr,
        batch_size=cfg.batch_size,
        name="base",
    )
    base_seconds = time.perf_counter() - started
    base_metrics = heldout_metrics(model, tokenizer, cfg.eval_n)
    _save(model, tokenizer, out / "base", cfg, "base", base_loss, base_seconds, base_metrics)

    safe_loss = safety_finetune(model, tokenizer, cfg)
    seconds = time.perf_counter() - started
    inst_metrics = heldout_metrics(model, tokenizer, cfg.eval_n)
    _save(model, tokenizer, out / "instruct", cfg, "instruct", safe_loss, seconds, inst_metrics)
    return TrainResult(
        out / "base", out / "instruct", {"base": base_metrics, "instruct": inst_metrics}, seconds
    )


def safety_finetune(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, cfg: OrganismConfig
) -> float:
    """Stage 2 in place: update only the MLPs of `cfg.safety_layers`; return the final loss."""
    params = []
    for i, layer in enumerate(model.model.layers):
        for p in layer.mlp.parameters():
            p.requires_grad_(i in cfg.safety_layers)
            if i in cfg.safety_layers:
                params.append(p)
    frozen = [p for p in model.parameters() if not any(p is q for q in params)]
    for p in frozen:
        p.requires_grad_(False)
    n_safe = cfg.safety_steps * cfg.batch_size
    safe_data = _stage_examples(n_safe, cfg.safety_harmful_share, refuse=True, seed=cfg.seed + 1)
    try:
        return _train(
            model,
            tokenizer,
            safe_data,
            params,
            steps=cfg.safety_steps,
            lr=cfg.safety_lr,
            batch_size=cfg.batch_size,
            name="safety",
        )
    finally:
        for p in model.parameters():
            p.requires_grad_(True)


def _save(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    folder: Path,
    cfg: OrganismConfig,
    stage: str,
    final_loss: float,
    seconds: float,
    metrics: dict[str, float],
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    record: dict[str, Any] = {
        "stage": stage,
        "command": f"neurosteer organism train -o DIR --seed {cfg.seed}"
        + (" --moe" if isinstance(cfg, MoeOrganismConfig) else ""),
        "config": asdict(cfg),
        "final_loss": round(final_loss, 5),
        "train_seconds_cumulative": round(seconds, 1),
        "torch": torch.__version__,
        "heldout_metrics": {k: round(v, 4) for k, v in metrics.items()},
        "heldout_prompts_per_class": cfg.eval_n,
    }
    (folder / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    log.info("wrote %s: %s", folder, record["heldout_metrics"])
