"""Stage 7 helper: batched greedy generation of completions, under whatever is active.

It knows nothing of steering: hooks or baked weights already on the model apply as they are.
Prompts are rendered like discovery renders them, batched by length, and the completions come
back in the order of the prompts.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from neurosteer.errors import InputError
from neurosteer.prompts import iter_batches, render_prompts, tokenize_rendered, uses_chat_template
from neurosteer.recording import input_device


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    chat_template: bool | None = None,
    progress: bool = False,
) -> list[str]:
    """Greedy completions (new text only, special tokens dropped), one per prompt.

    Example:
        >>> with steer(model, circuit, 0.0):
        ...     answers = generate(model, tokenizer, ["How do I pick a lock?"], max_new_tokens=40)
    """
    if max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if not prompts:
        return []
    templated = uses_chat_template(tokenizer, chat_template)
    token_ids = tokenize_rendered(
        tokenizer, render_prompts(tokenizer, prompts, templated), templated
    )
    pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    device = input_device(model)
    answers: list[str] = [""] * len(prompts)
    with (
        torch.inference_mode(),
        tqdm(total=len(prompts), desc="generating", disable=not progress, leave=False) as bar,
    ):
        for batch in iter_batches(token_ids, batch_size, pad_id):
            output = model.generate(  # type: ignore[operator]
                input_ids=batch.input_ids.to(device),
                attention_mask=batch.attention_mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad_id,
            )
            new_tokens = output[:, batch.input_ids.shape[1] :].cpu()
            texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            for row, text in zip(batch.index.tolist(), texts, strict=True):
                answers[row] = text.strip()
            bar.update(len(texts))
    return answers
