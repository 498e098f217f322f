"""The project's exceptions: one base class, a few specific kinds.

The CLI turns any `NeurosteerError` into one line on stderr and exit code 2; everything
else is a bug and keeps its traceback under `--debug`.
"""

from __future__ import annotations


class NeurosteerError(Exception):
    """Base class of every error this library raises on purpose."""


class InputError(NeurosteerError, ValueError):
    """The user gave something we cannot use (a file, an option value, a path)."""


class ModelLoadError(NeurosteerError):
    """A model or tokenizer could not be loaded (not cached offline, not a causal LM, ...)."""


class UnsupportedModelError(NeurosteerError):
    """The model's layout is unknown or not supported (e.g. mixture-of-experts MLPs)."""


class CircuitMismatchError(NeurosteerError):
    """A circuit does not fit the model it is applied to."""


class CircuitFormatError(NeurosteerError):
    """A circuit file is missing, corrupt or of an unknown format version."""


class CircuitLayoutError(CircuitMismatchError, InputError):
    """A circuit's recorded layer/site paths do not resolve on the model, or a layout given
    for it uses other paths."""


class ModelRunError(NeurosteerError):
    """The model's own code (its transformers/torch forward pass or `generate`) raised while
    neurosteer ran it; the original exception is chained as `__cause__`."""
