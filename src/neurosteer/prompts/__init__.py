"""Prompts: prompt files (`files`), rendering and encoding them (`render`), the chat template's
variables, the context limit, text checks, and RelP's prompt/target pairs (`targets`).

`neurosteer.prompts` was one module before the package was layered; its names (`load_prompts`,
`render_prompts`, `encode_for_model` ...) are still served here, from `render`, on first use (so
importing `neurosteer.prompts.files` does not load torch).
"""

from __future__ import annotations

import importlib
from typing import Any


def __getattr__(name: str) -> Any:
    render = importlib.import_module("neurosteer.prompts.render")
    try:
        return getattr(render, name)
    except AttributeError:
        raise AttributeError(f"module 'neurosteer.prompts' has no attribute {name!r}") from None
