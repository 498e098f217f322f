"""Running the model's own code, so that a failure inside it is reported as the model's.

A model whose forward pass cannot run (a config its family's code cannot handle, a tokenizer
with more tokens than the embedding, an input transformers refuses) raises from transformers or
torch. Reported as an unexpected error, that reads as a neurosteer bug. Every forward pass and
`generate` call neurosteer makes goes through `model_forward` / `model_generate`, which turn
such a failure into a `ModelRunError` (one line: the model's own forward failed, the exception's
type and first line, what to check), with the original chained.

Which code raised is read from the traceback: below the call, the frames are the model's
(transformers, torch, a checkpoint's remote code) and, while neurosteer's hooks run inside the
forward, neurosteer's. An exception with a neurosteer frame there (a hook, the experts
dispatcher, a streamer) is neurosteer's own and propagates unchanged, as do `NeurosteerError`s
and out-of-memory errors (which the batch loops retry at a smaller size).
"""

from __future__ import annotations

import itertools
import os
import traceback
from pathlib import Path
from types import TracebackType
from typing import Any, cast

import torch
from torch import nn
from transformers import PreTrainedModel

from neurosteer.errors import ModelRunError, NeurosteerError
from neurosteer.model.runtime import is_out_of_memory

#: the package's own source folder (src/neurosteer), as imported and with links resolved:
#: frames under it are neurosteer's code
_PACKAGE = tuple(
    {str(Path(__file__).parents[1]) + os.sep, str(Path(__file__).resolve().parents[1]) + os.sep}
)


def model_forward(model: nn.Module, /, **inputs: Any) -> Any:
    """`model(**inputs)`: one forward pass of the model's own code.

    Raises:
        ModelRunError: the model's own code raised (cause chained).
        Anything neurosteer's code raised inside the forward (its hooks), unchanged.
    """
    try:
        return model(**inputs)
    except Exception as err:
        if not raised_by_model(err):
            raise
        raise ModelRunError(model_failure(model, "forward pass", err)) from err


def model_generate(model: PreTrainedModel, /, **inputs: Any) -> torch.Tensor:
    """`model.generate(**inputs)` (token ids [batch, prompt + new]), with failures of the
    model's own code reported as in `model_forward`.

    Raises:
        ModelRunError: the model's own code raised (cause chained).
        Anything neurosteer's code raised inside (hooks, a streamer), unchanged.
    """
    try:
        return cast(torch.Tensor, model.generate(**inputs))  # type: ignore[operator]
    except Exception as err:
        if not raised_by_model(err):
            raise
        raise ModelRunError(model_failure(model, "generation", err)) from err


def raised_by_model(err: BaseException) -> bool:
    """Whether `err`, caught around a call into the model, was raised by the model's own code.

    Its traceback runs from the catching frame down to the raise: first neurosteer's frames
    (the call), then the model's. It is the model's when there are model frames and no
    neurosteer frame among or after them, in it or in an exception it was raised from inside
    the model's code; never for a `NeurosteerError` or an out-of-memory error.
    """
    if isinstance(err, NeurosteerError) or is_out_of_memory(err):
        return False
    inside = list(itertools.dropwhile(_ours, _files(err.__traceback__)))
    return bool(inside) and not any(map(_ours, inside)) and not _chain_passed_ours(err)


def model_failure(model: nn.Module, what: str, err: BaseException) -> str:
    """The one-line message of a `ModelRunError`: e.g. "the model's own forward pass failed
    (IndexError: index out of range in self) ...; check that ... loads and runs with
    transformers alone ..."."""
    lines = str(err).strip().splitlines()
    first = lines[0][:300] if lines else ""
    cause = f"{type(err).__name__}: {first}" if first else type(err).__name__
    name = getattr(getattr(model, "config", None), "name_or_path", None)
    which = f"'{name}'" if isinstance(name, str) and name else "the model"
    return (
        f"the model's own {what} failed ({cause}), inside its transformers/torch code, not "
        f"neurosteer's; check that {which} loads and runs with transformers alone "
        "(AutoModelForCausalLM.from_pretrained, then one forward pass on a prompt); --debug "
        "shows the traceback"
    )


def _ours(file: str) -> bool:
    return file.startswith(_PACKAGE)


def _files(tb: TracebackType | None) -> list[str]:
    """The source files of a traceback's frames, outermost first."""
    return [frame.f_code.co_filename for frame, _line in traceback.walk_tb(tb)]


def _chain_passed_ours(err: BaseException) -> bool:
    """Whether an exception `err` was raised from (its cause or context), caught inside the
    model's code, had passed through neurosteer's code (a hook that failed, which the model's
    code then turned into another error). One caught by neurosteer's code (its first frame
    ours) happened outside the model, before the call, and does not count."""
    seen = {id(err)}
    pending = [err.__cause__, err.__context__]
    while pending:
        link = pending.pop()
        if link is None or id(link) in seen:
            continue
        seen.add(id(link))
        files = _files(link.__traceback__)
        if files and not _ours(files[0]):
            if any(map(_ours, files)):
                return True
            pending += [link.__cause__, link.__context__]
    return False
