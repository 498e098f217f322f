"""`workflows.prompt_sets.check_sets_fit`: the sweep's and the search's prompt-length gate."""

from __future__ import annotations

import pytest
from tiny_models import MAX_POSITIONS
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from neurosteer.errors import InputError
from neurosteer.workflows.prompt_sets import check_sets_fit

Tiny = tuple[PreTrainedModel, PreTrainedTokenizerFast]


def _too_long() -> str:
    return " ".join(["word"] * (4 * MAX_POSITIONS))


@pytest.mark.parametrize(("named", "said"), [(True, "held-out positive prompt"), (False, "prompt")])
def test_a_prompt_too_long_in_any_set_is_refused_by_its_set(
    tiny_llama: Tiny, named: bool, said: str
) -> None:
    model, tokenizer = tiny_llama
    sets = {"positive": (["short one"], 0), "held-out positive": (["fine", _too_long()], 1)}
    with pytest.raises(InputError) as raised:
        check_sets_fit(
            model,
            tokenizer,
            sets,
            chat_template=False,
            system=None,
            template_vars=None,
            named=named,
        )
    message = str(raised.value)
    assert message.startswith(said)
    assert ("held-out" in message) == named
