"""The one place that registers hooks on models.

Everything else (recording, steering, baselines, evaluation) hands this package plain data
(modules, index tensors, vectors, a state object to read the strength from) and gets back a
`HookSet`, which removes exactly the hooks it registered, in `finally`, also when registration
fails half-way or the block raises. We never clear a module's hook dictionaries, so our hooks
compose with each other and with anyone else's.

Hook bodies never edit a tensor in place: other hooks (a recorder, a second circuit) may hold
the same tensor. They return a new input or output instead.

- `hookset`: `HookSet`, `StopForward`, `count_hooks`
- `positions`: which token positions an edit applies to, under KV-cache decoding too
- `recorders`: capture of a module's input or output at the last token (or every real token)
- `edits`: scale neurons, set neurons to values, add vectors, project out a direction
- `relevance`: RelP's gradient rules (norm scale, attention weights, activation, gated product)
  and the capture of neuron tensors for a backward pass
"""

from neurosteer.hooks.edits import (
    add_direction_projectors,
    add_neuron_scalers,
    add_neuron_setters,
    add_vector_adders,
)
from neurosteer.hooks.hookset import HookSet, StopForward, count_hooks
from neurosteer.hooks.positions import EditState, PositionTracker
from neurosteer.hooks.recorders import add_last_token_recorders

__all__ = [
    "EditState",
    "HookSet",
    "PositionTracker",
    "StopForward",
    "add_direction_projectors",
    "add_last_token_recorders",
    "add_neuron_scalers",
    "add_neuron_setters",
    "add_vector_adders",
    "count_hooks",
]
