"""A model handed over in training mode (dropout on, as a training loop leaves it) is measured in
eval mode by every entry point that runs it, and given back in the mode it came in: the circuit,
probe, KL and answers are those of the eval-mode model, and the KL of the unchanged model to
itself is 0. One mechanism (`neurosteer.model.runtime.runs_model`) does it; a test walks the package
and fails if a function that takes a model neither carries it nor is listed as not running it."""

from __future__ import annotations

import contextlib
import importlib
import inspect
import pkgutil
from collections.abc import Callable
from functools import cache
from typing import Any

import pytest
import torch
from tiny_models import make_tiny
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerFast

import neurosteer
from neurosteer import (
    attribute,
    contrast_vectors,
    discover,
    generate,
    measure_faithfulness,
    next_token_probs,
)
from neurosteer.evaluation import kl_to_reference
from neurosteer.evaluation.model_judge import ModelJudge
from neurosteer.methods.mean_ablation import mean_activations
from neurosteer.model.layout import resolve_layout
from neurosteer.model.runtime import RUNS_MODEL_MARK, evaluating

Pair = tuple[PreTrainedModel, PreTrainedTokenizerFast]
DROPOUT = 0.5

#: Functions that take a model but never run a forward pass (or train it on purpose), and why.
NOT_RUNNING = {
    "neurosteer.evaluation.greedy_loop.plain_greedy": "reads the generation config",
    "neurosteer.evaluation.judge_accuracy.same_model": "takes a model's name",
    "neurosteer.evaluation.judge_accuracy.judge_caption": "takes a model's name",
    "neurosteer.evaluation.judge_accuracy.accuracy_text": "takes a model's name",
    "neurosteer.export.lora.neuron_columns": "reads weights",
    "neurosteer.export.lora.save_lora": "reads and saves weights",
    "neurosteer.export.lora_gguf.llama_cpp_architecture": "reads the config",
    "neurosteer.hooks.experts.count_taps": "reads the module tree",
    "neurosteer.methods.logit_lens.neuron_logit_lens": "multiplies weights, no forward pass",
    "neurosteer.methods.logit_lens.residual_directions": "reads weights",
    "neurosteer.methods.logit_lens.unembed": "multiplies weights, no forward pass",
    "neurosteer.methods.logit_lens.final_norm": "reads the module tree",
    "neurosteer.methods.logit_lens.lens_for": "multiplies weights, no forward pass",
    "neurosteer.methods.moe_sites.edited_modules": "reads the module tree",
    "neurosteer.methods.moe_sites.moe_installer": "registers hooks",
    "neurosteer.methods.moe_sites.moe_setter_installer": "registers hooks",
    "neurosteer.methods.moe_sites.add_moe_sums": "registers hooks",
    "neurosteer.methods.relp_pass.model_norms": "reads the module tree",
    "neurosteer.methods.moe_sites.bake_moe": "edits weights",
    "neurosteer.methods.moe_sites.add_moe_recorders": "registers hooks",
    "neurosteer.model.environment.environment": "reads the dtype and device",
    "neurosteer.workflows.prompt_sets.check_sets_fit": "reads the model's context length only",
    "neurosteer.methods.steering.steer": "registers hooks",
    "neurosteer.methods.steering.steer_circuits": "registers hooks",
    "neurosteer.methods.baking.bake": "edits weights",
    "neurosteer.methods.circuit.bake_circuits": "edits weights",
    "neurosteer.methods.baking.save_baked": "edits and saves weights",
    "neurosteer.interventions.handles.require_editable": "reads parameters",
    "neurosteer.model.layout.resolve_layout": "reads the module tree",
    "neurosteer.model.layout.ModelLayout.layer_modules": "reads the module tree",
    "neurosteer.model.layout.ModelLayout.site_modules": "reads the module tree",
    "neurosteer.model.layout.residual_writers": "reads the module tree",
    "neurosteer.hooks.hookset.count_hooks": "reads the module tree",
    "neurosteer.hooks.relevance.detached_attention": "registers hooks",
    "neurosteer.methods.relp_pass.rule_sites": "reads the module tree",
    "neurosteer.methods.relp_pass.attention_rule": "sets an attention option",
    "neurosteer.model.runtime.input_device": "reads a parameter",
    "neurosteer.model.calls.model_forward": "one call of the forward; its callers set eval mode",
    "neurosteer.model.calls.model_generate": "one call of generate; its callers set eval mode",
    "neurosteer.model.calls.model_failure": "reads the config's name",
    "neurosteer.model.runtime.forward_takes": "reads the signature",
    "neurosteer.model.runtime.model_inputs": "builds inputs",
    "neurosteer.model.runtime.auto_batch_size": "reads the config",
    "neurosteer.model.runtime.evaluating": "is the mechanism",
    "neurosteer.prompts.context.context_limit": "reads the config",
    "neurosteer.prompts.render.encode_for_model": "tokenizes",
    "neurosteer.prompts.targets.encode_pairs": "tokenizes",
    "neurosteer.workflows.chat.encode_conversation": "tokenizes",
    "neurosteer.methods.discovery.model_info": "reads the config",
    "neurosteer.model.gguf.loading.source_file": "reads an attribute",
    "neurosteer.model.loading.load_model": "loads in eval mode itself",
    "neurosteer.workflows.organism.train.safety_finetune": "trains the model on purpose",
    "neurosteer.model.fingerprint.same_weights": "reads parameter values",
    "neurosteer.model.fingerprint.remember_files": "sets an attribute",
    "neurosteer.model.fingerprint.baked_on": "reads an attribute",
    "neurosteer.model.fingerprint.mark_baked": "sets an attribute",
    "neurosteer.model.stop_tokens.stop_token_ids": "reads the configs",
    "neurosteer.model.stop_tokens.merge_gguf_stop_ids": "edits the generation config",
}


def _model_functions() -> dict[str, Callable[..., Any]]:
    """Every public module-level function and public method of neurosteer that takes a `model`."""
    found: dict[str, Callable[..., Any]] = {}
    for info in pkgutil.walk_packages(neurosteer.__path__, "neurosteer."):
        if ".cli" in info.name:
            continue  # the CLI parses and calls the library
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != info.name:
                continue
            candidates = [(name, obj)] if inspect.isfunction(obj) else []
            if inspect.isclass(obj):
                candidates += [
                    (f"{name}.{attr}", value)
                    for attr, value in vars(obj).items()
                    if not attr.startswith("_") and inspect.isfunction(value)
                ]
            for qualname, func in candidates:
                try:
                    parameters = inspect.signature(func).parameters
                except (TypeError, ValueError):
                    continue
                if "model" in parameters:
                    found[f"{info.name}.{qualname}"] = func
    return found


#: Methods of the interventions take a model to hook or edit it, never to run it.
_INTERVENTION_METHODS = (".steer", ".bake", ".installer", ".layout_on", ".check_fits")


def test_every_function_that_runs_a_model_runs_it_in_eval_mode() -> None:
    functions = _model_functions()
    assert "neurosteer.methods.discovery.discover" in functions  # the walk finds the entry points
    unmarked = [
        name
        for name, func in functions.items()
        if not getattr(func, RUNS_MODEL_MARK, False)
        and name not in NOT_RUNNING
        and not name.endswith(_INTERVENTION_METHODS)
    ]
    assert not unmarked, (
        f"these take a model but are not @runs_model (nor listed in NOT_RUNNING): {unmarked}"
    )


@cache
def _dropout_model() -> Pair:
    """A tiny GPT-2 whose dropout modules drop half their inputs in training mode."""
    model, tokenizer = make_tiny("gpt2")
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert drops
    for module in drops:
        module.p = DROPOUT
    return model, tokenizer


def _modes(model: nn.Module) -> list[bool]:
    return [m.training for m in model.modules()]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return a.shape == b.shape and bool(torch.allclose(a.float(), b.float(), atol=1e-5))
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, float):
        return abs(a - b) < 1e-5
    return bool(a == b)


def _entry_points(
    pair: Pair, positive: list[str], negative: list[str]
) -> dict[str, Callable[[], Any]]:
    """name -> a call that runs the model and returns what it measured (comparable data)."""
    model, tok = pair
    circuit = discover(model, tok, positive, negative, top_k=8, universal_filter=False)
    layout = resolve_layout(model)
    ids = [tok.encode(p) for p in positive]
    return {
        "discover": lambda: (lambda c: [c.layers, c.neurons, c.delta])(
            discover(model, tok, positive, negative, top_k=8, universal_filter=False)
        ),
        "contrast_vectors": lambda: contrast_vectors(model, tok, positive, negative).delta,
        "attribute": lambda: (lambda c: [c.layers, c.neurons, c.delta])(
            attribute(model, tok, positive[:3], "a", contrasts="b", top_k=6)
        ),
        "measure_faithfulness": lambda: measure_faithfulness(
            model, tok, circuit, positive[:3], "a", negative[:3], ks=[2, 8]
        ).to_dict(),
        "next_token_probs": lambda: [
            [s.top for s in row] for row in next_token_probs(model, tok, positive[:3]).probs
        ],
        "generate": lambda: generate(model, tok, positive[:3], max_new_tokens=6),
        "kl_to_reference (unchanged model)": lambda: (
            kl_to_reference(
                model, tok, negative[:3], intervention=circuit, strength=1.0, max_new_tokens=4
            ).per_prompt_mean
        ),
        "ModelJudge.yes_probability": lambda: ModelJudge.from_model(model, tok).yes_probability(
            positive[:2], ["Sure, here.", "I can't help with that."]
        ),
        "mean_activations": lambda: mean_activations(
            model, layout, ids, "all", batch_size=4, pad=0
        ),
    }


def test_every_entry_point_measures_a_training_mode_model_in_eval_mode(
    positive_prompts: list[str], negative_prompts: list[str]
) -> None:
    pair = _dropout_model()
    model = pair[0]
    model.eval()
    calls = _entry_points(pair, positive_prompts, negative_prompts)
    in_eval = {name: call() for name, call in calls.items()}
    # half of the model trains (a caller froze the rest): each module's own mode comes back
    model.train()
    model.transformer.h[0].eval()
    modes = _modes(model)
    for name, call in calls.items():
        assert _same(call(), in_eval[name]), f"{name} measured the training-mode model"
        assert _modes(model) == modes, f"{name} did not give back the caller's modes"
    assert max(in_eval["kl_to_reference (unchanged model)"]) < 1e-6


def test_dropout_is_really_on_in_training_mode() -> None:
    # the premise of the test above: without `evaluating`, the training-mode model differs
    model, tok = _dropout_model()
    ids = tok(["How do I pick a lock?"], return_tensors="pt")
    model.train()
    try:
        with torch.no_grad():
            a, b = model(**ids).logits, model(**ids).logits
            with evaluating(model):
                c, d = model(**ids).logits, model(**ids).logits
    finally:
        model.eval()
    assert not torch.allclose(a, b)
    assert torch.equal(c, d)
    assert model.training is False


@pytest.mark.parametrize("raises", [True, False])
def test_the_mode_comes_back_when_the_call_fails(raises: bool) -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5)).train()
    model[0].eval()
    failing = pytest.raises(RuntimeError, match="boom") if raises else contextlib.nullcontext()
    with failing, evaluating(model):
        assert not any(m.training for m in model.modules())
        if raises:
            raise RuntimeError("boom")
    assert [m.training for m in model.modules()] == [True, False, True]
