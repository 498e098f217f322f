"""neurosteer: Contrastive Neuron Attribution for Hugging Face causal LMs.

Find the MLP neurons whose last-token activations separate two prompt sets, steer a model by
scaling just those neurons, or bake the change into an ordinary checkpoint.

    model, tokenizer = neurosteer.load_model("path/or/hub-id")
    circuit = neurosteer.discover(model, tokenizer, positive=harmful, negative=benign)
    with neurosteer.steer(model, circuit, multiplier=0.0):
        ...
    handle = neurosteer.bake(model, circuit, multiplier=0.0)
    handle.undo()

The package follows the pipeline: layout → loading → prompts → recording → attribution →
circuit → steering / baking → generation; `hooks` is the only module that registers hooks.
"""

from neurosteer._version import __version__
from neurosteer.baking import BakeHandle, bake, save_baked
from neurosteer.circuit import Circuit
from neurosteer.discovery import discover, neutral_prompts
from neurosteer.errors import (
    CircuitFormatError,
    CircuitMismatchError,
    InputError,
    ModelLoadError,
    NeurosteerError,
    UnsupportedModelError,
)
from neurosteer.generation import generate
from neurosteer.layout import ModelLayout, resolve_layout
from neurosteer.loading import load_model
from neurosteer.prompts import load_prompts, render_prompts
from neurosteer.steering import SteeringHandle, steer

__all__ = [
    "BakeHandle",
    "Circuit",
    "CircuitFormatError",
    "CircuitMismatchError",
    "InputError",
    "ModelLayout",
    "ModelLoadError",
    "NeurosteerError",
    "SteeringHandle",
    "UnsupportedModelError",
    "__version__",
    "bake",
    "discover",
    "generate",
    "load_model",
    "load_prompts",
    "neutral_prompts",
    "render_prompts",
    "resolve_layout",
    "save_baked",
    "steer",
]
