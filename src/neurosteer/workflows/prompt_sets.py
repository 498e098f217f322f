"""One check shared by the sweep and the search: every prompt set fits the model's context."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from neurosteer.prompts.render import encode_for_model


def check_sets_fit(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    sets: Mapping[str, tuple[Sequence[str], int]],
    *,
    chat_template: bool | None,
    system: str | None,
    template_vars: Mapping[str, Any] | None,
    named: bool = True,
) -> None:
    """Render every set once (name -> (prompts, positions to reserve for generation)) and
    refuse prompts too long for the model, before any work.

    With `named`, the error names the set ("held-out positive prompt 3 ..."), else it reads
    "prompt 3 ...".

    Raises:
        InputError: a prompt that does not fit (`encode_for_model`).
    """
    for name, (prompts, reserve) in sets.items():
        encode_for_model(
            model,
            tokenizer,
            prompts,
            chat_template=chat_template,
            system=system,
            template_vars=template_vars,
            reserve=reserve,
            what=f"{name} prompt" if named else "prompt",
        )
