"""neurosteer: Contrastive Neuron Attribution for Hugging Face causal LMs.

Find the MLP neurons whose last-token activations separate two prompt sets, steer a model by
scaling just those neurons, or bake the change into an ordinary checkpoint.

    model, tokenizer = neurosteer.load_model("path/or/hub-id")
    circuit = neurosteer.discover(model, tokenizer, positive=harmful, negative=benign)
    with neurosteer.steer(model, circuit, 0.0):         # any Intervention, one strength
        ...
    handle = neurosteer.bake(model, circuit, 0.0)
    handle.undo()

The folders follow the pipeline (README, "Layout of the code"): prompts and hooks → model →
interventions → methods → evaluation / export → workflows → cli; `hooks` alone registers hooks.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from neurosteer._compat import install_old_paths
from neurosteer._version import __version__

install_old_paths()

# Public name -> the module that defines it. Imported on first use, so that `neurosteer --help`
# and `import neurosteer.errors` do not pay for torch and transformers.
_EXPORTS = {
    "DirectionAblation": "neurosteer.methods.ablation",
    "BakeHandle": "neurosteer.methods.baking",
    "bake": "neurosteer.methods.baking",
    "save_baked": "neurosteer.methods.baking",
    "CAA": "neurosteer.methods.baselines",
    "MLPOutputSteering": "neurosteer.methods.baselines",
    "contrast_vectors": "neurosteer.methods.baselines",
    "Circuit": "neurosteer.methods.circuit",
    "ContrastVectors": "neurosteer.methods.contrast",
    "discover": "neurosteer.methods.discovery",
    "neutral_prompts": "neurosteer.methods.discovery",
    "CircuitFormatError": "neurosteer.errors",
    "CircuitMismatchError": "neurosteer.errors",
    "InputError": "neurosteer.errors",
    "ModelLoadError": "neurosteer.errors",
    "ModelRunError": "neurosteer.errors",
    "NeurosteerError": "neurosteer.errors",
    "UnsupportedModelError": "neurosteer.errors",
    "generate": "neurosteer.evaluation.generation",
    "Intervention": "neurosteer.interventions.protocol",
    "ModelLayout": "neurosteer.model.layout",
    "resolve_layout": "neurosteer.model.layout",
    "FaithfulnessResult": "neurosteer.evaluation.faithfulness",
    "measure_faithfulness": "neurosteer.evaluation.faithfulness",
    "load_model": "neurosteer.model.loading",
    "OptimizeConfig": "neurosteer.workflows.optimization",
    "optimize": "neurosteer.workflows.optimization",
    "next_token_probs": "neurosteer.evaluation.probe",
    "load_prompts": "neurosteer.prompts.render",
    "render_prompts": "neurosteer.prompts.render",
    "RelPRules": "neurosteer.methods.relp",
    "attribute": "neurosteer.methods.relp",
    "SteeringHandle": "neurosteer.methods.steering",
    "steer": "neurosteer.methods.steering",
    "bake_streaming": "neurosteer.export.streaming",
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
    "ModelRunError",
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
    from neurosteer.errors import (
        CircuitFormatError,
        CircuitMismatchError,
        InputError,
        ModelLoadError,
        ModelRunError,
        NeurosteerError,
        UnsupportedModelError,
    )
    from neurosteer.evaluation.faithfulness import FaithfulnessResult, measure_faithfulness
    from neurosteer.evaluation.generation import generate
    from neurosteer.evaluation.probe import next_token_probs
    from neurosteer.export.streaming import bake_streaming
    from neurosteer.interventions.protocol import Intervention
    from neurosteer.methods.ablation import DirectionAblation
    from neurosteer.methods.baking import BakeHandle, bake, save_baked
    from neurosteer.methods.baselines import CAA, MLPOutputSteering, contrast_vectors
    from neurosteer.methods.circuit import Circuit
    from neurosteer.methods.contrast import ContrastVectors
    from neurosteer.methods.discovery import discover, neutral_prompts
    from neurosteer.methods.relp import RelPRules, attribute
    from neurosteer.methods.steering import SteeringHandle, steer
    from neurosteer.model.layout import ModelLayout, resolve_layout
    from neurosteer.model.loading import load_model
    from neurosteer.prompts.render import load_prompts, render_prompts
    from neurosteer.workflows.optimization import OptimizeConfig, optimize
