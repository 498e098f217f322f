"""Greedy decoding that drops finished answers from the batch.

`model.generate` runs every row of a batch until the longest answer ends, so a batch of 16
whose answers end after 20, 40, ... and 150 tokens pays 16 rows x 150 steps. Here a row that
has produced a stop token leaves the batch (and its KV cache) at once, so each step costs only
the answers still being written. The tokens are those `model.generate(do_sample=False)` gives:
the same forward inputs per row (left padding, position ids from the mask, a DynamicCache),
argmax over the float32 logits of the last position.

Only for generation configs whose greedy answer is a plain argmax: `plain_greedy` says which;
the others (repetition penalty, banned words, beams, ...) stay on `model.generate`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import DynamicCache, GenerationConfig, PreTrainedModel
from transformers.generation.streamers import BaseStreamer

from neurosteer.model.calls import model_forward
from neurosteer.model.runtime import forward_takes, input_device, model_inputs, runs_model
from neurosteer.prompts.render import Batch

#: Generation-config fields whose logits processors (or search) change a greedy answer; any of
#: them away from transformers' default sends generation to `model.generate`.
_GREEDY_CHANGERS = (
    "num_beams",
    "repetition_penalty",
    "encoder_repetition_penalty",
    "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size",
    "bad_words_ids",
    "force_words_ids",
    "min_length",
    "min_new_tokens",
    "suppress_tokens",
    "begin_suppress_tokens",
    "sequence_bias",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "exponential_decay_length_penalty",
    "guidance_scale",
    "watermarking_config",
    "prefill_chunk_size",
    "penalty_alpha",
    "dola_layers",
)


def plain_greedy(model: PreTrainedModel) -> bool:
    """Whether `model.generate(do_sample=False)` is a plain argmax per step for this model: a
    decoder-only model whose generation config sets none of the fields that add a logits
    processor or another search (`_GREEDY_CHANGERS` at transformers' defaults)."""
    if model.config.is_encoder_decoder or not forward_takes(model, "use_cache"):
        return False
    config, default = model.generation_config, GenerationConfig()
    return all(getattr(config, f, None) == getattr(default, f, None) for f in _GREEDY_CHANGERS)


@runs_model
def greedy_drop_finished(
    model: PreTrainedModel,
    batch: Batch,
    max_new_tokens: int,
    pad_id: int,
    stop_ids: Sequence[int],
    *,
    streamer: BaseStreamer | None = None,
) -> torch.Tensor:
    """[batch, seq + t] int64 on the model's input device, as `greedy_batch` returns it: the
    left-padded prompts, then each row's greedy answer up to and including its first token of
    `stop_ids` (empty: none stops it), padded with `pad_id`; t is the longest answer's length
    (<= `max_new_tokens`). A row leaves the batch and the cache the step it stops.

    `streamer.put` gets the prompt ids, then each step's new tokens of the rows still running
    [running rows], then `end()`. Call under `torch.inference_mode()` with the model in eval mode.
    """
    device = input_device(model)
    ids, mask = batch.input_ids.to(device), batch.attention_mask.to(device)
    answers = torch.full((ids.shape[0], max_new_tokens), pad_id, dtype=ids.dtype, device=device)
    stops = torch.tensor(sorted(set(stop_ids)), dtype=ids.dtype, device=device)
    if streamer is not None:
        streamer.put(ids.cpu())
    cache = DynamicCache(config=model.config)
    logits = _forward(model, model_inputs(model, ids, mask), cache)
    rows = torch.arange(ids.shape[0], device=device)  # the prompts still running
    next_position = mask.long().sum(dim=-1)  # [rows] position id of the next token
    steps = 0
    while True:
        token = logits.argmax(dim=-1)  # [rows]
        answers[rows, steps] = token
        steps += 1
        if streamer is not None:
            streamer.put(token.cpu())
        running = ~torch.isin(token, stops)
        if steps == max_new_tokens or not bool(running.any()):
            break
        if not bool(running.all()):
            keep = running.nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            rows, token, mask, next_position = (
                rows[keep],
                token[keep],
                mask[keep],
                next_position[keep],
            )
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        step_inputs = {"input_ids": token[:, None], "attention_mask": mask}
        if forward_takes(model, "position_ids"):
            step_inputs["position_ids"] = next_position[:, None]
        logits = _forward(model, step_inputs, cache)
        next_position = next_position + 1
    if streamer is not None:
        streamer.end()
    return torch.cat([ids, answers[:, :steps]], dim=1)


def _forward(
    model: PreTrainedModel, inputs: dict[str, torch.Tensor], cache: DynamicCache
) -> torch.Tensor:
    """float32 logits [batch, vocab] of the last position of one pass that extends `cache`."""
    cache_name = "cache" if forward_takes(model, "cache") else "past_key_values"
    extra: dict[str, object] = {cache_name: cache, "use_cache": True}
    if forward_takes(model, "logits_to_keep"):
        extra["logits_to_keep"] = 1
    output = model_forward(model, **inputs, **extra)
    return output.logits[:, -1].float()
