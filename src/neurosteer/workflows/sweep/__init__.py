"""Strength sweeps of CNA against its baselines, resumable.

    config = SweepConfig(methods=("cna", "caa", "direction", "random"), strengths=(0, 0.5, 1))
    records = run_sweep(model, tok, config, positive, negative, harmful, harmless, "RUN")

    config      SweepConfig, the strength mapping (`knob`), METHODS
    store       the run folder: config.json, results.jsonl, answers/, circuit, vectors
    methods     fit every intervention once; build one at any strength
    layers      the layer scans that choose CAA's and the direction's layer
    runner      run_sweep: the loop over points, each saved as soon as it is finished

One line of results.jsonl (schema 1):

    {"schema": 1, "method": "cna", "strength": 0.5, "seed": null,
     "knob": {"name": "m", "value": 0.5},
     "harmful":  {"n": 100, "refusal": .., "compliance": .., "degenerate": .., "distinct4": ..},
     "harmless": {same keys},
     "kl": {"first_token": .., "mean": .., "n_prompts": 32, "max_new_tokens": 32},
     "mmlu": {"accuracy": .., "n": .., "n_shot": 5, "per_subject": {..}} or null,
     "answers_file": "answers/cna_0.5.jsonl", "seconds": 12.3}

`method` is "baseline" (s = 0, once per run) or one of METHODS; `seed` is set for "random"
only. Reports (`neurosteer.workflows.report`) read these files and never a model.
"""

from neurosteer.workflows.sweep.config import BASELINE, METHODS, STRENGTH_MAPPING, SweepConfig, knob
from neurosteer.workflows.sweep.runner import RECORD_SCHEMA, planned_points, run_sweep
from neurosteer.workflows.sweep.store import (
    CIRCUIT_DIR,
    CONFIG_FILE,
    RESULTS_FILE,
    point_key,
    point_label,
    read_answers,
    read_config,
    read_results,
)

__all__ = [
    "BASELINE",
    "CIRCUIT_DIR",
    "CONFIG_FILE",
    "METHODS",
    "RECORD_SCHEMA",
    "RESULTS_FILE",
    "STRENGTH_MAPPING",
    "SweepConfig",
    "knob",
    "planned_points",
    "point_key",
    "point_label",
    "read_answers",
    "read_config",
    "read_results",
    "run_sweep",
]
