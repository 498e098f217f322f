"""What a run's numbers depend on besides its code, settings and prompts: the environment.

Circuits, sweeps, searches and baked files record `environment()` beside the prompt hashes
they record, so that a run reproduced later (`neurosteer reproduce`) can say what differs when
its numbers do. The record is one flat JSON object of strings and numbers:

    {"neurosteer": "0.1.0", "torch": "2.5.1", "transformers": "4.57.0", "python": "3.11.9",
     "platform": "Linux-6.1-x86_64-with-glibc2.36", "cpu": "AVX2", "threads": 2,
     "dtype": "float32", "device": "cpu"}

("dtype" and "device" only where a model is given: its parameters' dtype and input device).
"""

from __future__ import annotations

import platform
from typing import Any

import torch
import transformers
from torch import nn

from neurosteer._version import __version__

#: The keys whose difference can change floats (not the version of this package: its code).
NUMERIC_KEYS = ("torch", "transformers", "cpu", "threads", "dtype", "device")


def environment(model: nn.Module | None = None) -> dict[str, Any]:
    """The environment record of this process, and of `model` when given (module docstring)."""
    record: dict[str, Any] = {
        "neurosteer": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
    }
    if model is not None:
        parameter = next(model.parameters(), None)
        if parameter is not None:
            record["dtype"] = str(parameter.dtype).removeprefix("torch.")
            record["device"] = str(parameter.device)
    return record


def environment_differences(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """What differs between a recorded environment and this one, one "key: old -> new" each
    (keys missing on one side are left out); empty when the record is missing or equal."""
    if not old:
        return []
    return [
        f"{key}: {old[key]} -> {new[key]}"
        for key in sorted(set(old) & set(new))
        if old[key] != new[key]
    ]
