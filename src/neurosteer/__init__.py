"""neurosteer: Contrastive Neuron Attribution for Hugging Face causal LMs.

Find the MLP neurons whose last-token activations separate two prompt sets, steer a model by
scaling just those neurons, or bake the change into an ordinary checkpoint.

    model, tokenizer = neurosteer.load_model("path/or/hub-id")
    circuit = neurosteer.discover(model, tokenizer, positive=harmful, negative=benign)
    with neurosteer.steer(model, circuit, 0.0):         # any Intervention, one strength
        ...
    handle = neurosteer.bake(model, circuit, 0.0)
    handle.undo()

The package follows the pipeline: layout → loading → prompts → recording → attribution →
circuit → steering / baking → generation; `hooks` is the only module that registers hooks.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from neurosteer._version import __version__

# Public name -> the module that defines it. Imported on first use, so that `neurosteer --help`
# and `import neurosteer.errors` do not pay for torch and transformers.
_EXPORTS = {
    "DirectionAblation": "neurosteer.ablation",
    "BakeHandle": "neurosteer.baking",
    "bake": "neurosteer.baking",
    "save_baked": "neurosteer.baking",
    "CAA": "neurosteer.baselines",
    "MLPOutputSteering": "neurosteer.baselines",
    "contrast_vectors": "neurosteer.baselines",
    "Circuit": "neurosteer.circuit",
    "ContrastVectors": "neurosteer.contrast",
    "discover": "neurosteer.discovery",
    "neutral_prompts": "neurosteer.discovery",
    "CircuitFormatError": "neurosteer.errors",
    "CircuitMismatchError": "neurosteer.errors",
    "InputError": "neurosteer.errors",
    "ModelLoadError": "neurosteer.errors",
    "NeurosteerError": "neurosteer.errors",
    "UnsupportedModelError": "neurosteer.errors",
    "generate": "neurosteer.generation",
    "Intervention": "neurosteer.intervention",
    "ModelLayout": "neurosteer.layout",
    "resolve_layout": "neurosteer.layout",
    "FaithfulnessResult": "neurosteer.faithfulness",
    "measure_faithfulness": "neurosteer.faithfulness",
    "load_model": "neurosteer.loading",
    "OptimizeConfig": "neurosteer.optimization",
    "optimize": "neurosteer.optimization",
    "next_token_probs": "neurosteer.probe",
    "load_prompts": "neurosteer.prompts",
    "render_prompts": "neurosteer.prompts",
    "RelPRules": "neurosteer.relp",
    "attribute": "neurosteer.relp",
    "SteeringHandle": "neurosteer.steering",
    "steer": "neurosteer.steering",
    "bake_streaming": "neurosteer.streaming",
}

__all__ = [
    "CAA",
    "BakeHandle",
    "Circuit",
    "CircuitFormatError",
    "CircuitMismatchError",
    "ContrastVectors",
    "DirectionAblation",
    "FaithfulnessResult",
    "InputError",
    "Intervention",
    "MLPOutputSteering",
    "ModelLayout",
    "ModelLoadError",
    "NeurosteerError",
    "OptimizeConfig",
    "RelPRules",
    "SteeringHandle",
    "UnsupportedModelError",
    "__version__",
    "attribute",
    "bake",
    "bake_streaming",
    "contrast_vectors",
    "discover",
    "generate",
    "load_model",
    "load_prompts",
    "measure_faithfulness",
    "neutral_prompts",
    "next_token_probs",
    "optimize",
    "render_prompts",
    "resolve_layout",
    "save_baked",
    "steer",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'neurosteer' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:
    from neurosteer.ablation import DirectionAblation
    from neurosteer.baking import BakeHandle, bake, save_baked
    from neurosteer.baselines import CAA, MLPOutputSteering, contrast_vectors
    from neurosteer.circuit import Circuit
    from neurosteer.contrast import ContrastVectors
    from neurosteer.discovery import discover, neutral_prompts
    from neurosteer.errors import (
        CircuitFormatError,
        CircuitMismatchError,
        InputError,
        ModelLoadError,
        NeurosteerError,
        UnsupportedModelError,
    )
    from neurosteer.faithfulness import FaithfulnessResult, measure_faithfulness
    from neurosteer.generation import generate
    from neurosteer.intervention import Intervention
    from neurosteer.layout import ModelLayout, resolve_layout
    from neurosteer.loading import load_model
    from neurosteer.optimization import OptimizeConfig, optimize
    from neurosteer.probe import next_token_probs
    from neurosteer.prompts import load_prompts, render_prompts
    from neurosteer.relp import RelPRules, attribute
    from neurosteer.steering import SteeringHandle, steer
    from neurosteer.streaming import bake_streaming
