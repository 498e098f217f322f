"""How prompts are rendered, as one value: the chat-template switch, the system turn and the
template variables.

These three settings travel together from the command line (`--chat-template/--raw`,
`--system`, `--template-var`) through the configs (`SweepConfig`, `OptimizeConfig`, a circuit's
settings) to every function that renders prompts (`render_prompts`, `encode_for_model`,
`generate`, `kl_reference`, `measure_refusal`, ...). Those functions keep their three keywords;
`Rendering` carries the triple between them, and `as_kwargs` passes it on, checked by mypy
against the callee's parameters:

    generate(model, tokenizer, prompts, **config.rendering.as_kwargs())
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypedDict

__all__ = ["Rendering", "RenderingKwargs"]


class RenderingKwargs(TypedDict):
    """The keywords `Rendering.as_kwargs` gives: those of `render_prompts` and its callers."""

    chat_template: bool | None
    system: str | None
    template_vars: Mapping[str, Any] | None


@dataclass(frozen=True, kw_only=True)
class Rendering:
    """Prompt rendering settings (see `neurosteer.prompts.render.render_prompts`).

    Attributes:
        chat_template: True/False forces the chat template on/off; None uses it when the
            tokenizer has one.
        system: a system turn before each user turn; None keeps the template's default.
        template_vars: variables the chat template reads (see
            `neurosteer.prompts.template_vars`); None: none. Held as given, not copied.
    """

    chat_template: bool | None = None
    system: str | None = None
    template_vars: Mapping[str, Any] | None = None

    def as_kwargs(self) -> RenderingKwargs:
        """The three settings as keywords, for `f(..., **rendering.as_kwargs())`."""
        return RenderingKwargs(
            chat_template=self.chat_template,
            system=self.system,
            template_vars=self.template_vars,
        )
