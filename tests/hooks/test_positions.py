"""Which positions steering edits: "generated" is every position whose output is a generated
token (the last prompt position and every new one), "prompt" every position reading a prompt
token. Checked against a hand computation that edits chosen columns of a cache-free forward pass,
under left padding with prompts of different lengths, with and without the KV cache, and on the
organism, where the refusal is decided by the first answer token."""

from __future__ import annotations

import contextlib
import inspect
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any

import pytest
import torch
from tiny_models import make_tiny
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerFast

import neurosteer
from neurosteer import Circuit, discover, render_prompts, steer
from neurosteer.hooks import PositionTracker
from neurosteer.methods.steering import Positions
from neurosteer.model.layout import resolve_layout
from neurosteer.model.runtime import position_ids_from_mask
from neurosteer.workflows.organism import INSTRUCT_DIR, corpus, neutral_prompts
from neurosteer.workflows.organism.corpus import Verdict, judge
from neurosteer.workflows.organism.demo import DEMO_TOP_K

Pair = tuple[PreTrainedModel, PreTrainedTokenizerFast]
N_NEW = 5


#: Families for the generation checks: plain and sliding-window caches, rotary and absolute
#: positions (the prompt-pass check runs on every family).
GENERATION_FAMILIES = ["llama", "gemma3_text", "gpt2", "gpt_neox"]


@cache
def _tiny(family: str) -> Pair:
    return make_tiny(family)


#: Keyed by the model itself (weakly): an id() key can be reused by a later model once the
#: first is freed, which handed one family's circuit to another.
_circuits: weakref.WeakKeyDictionary[PreTrainedModel, Circuit] = weakref.WeakKeyDictionary()


def _circuit(pair: Pair, positive: list[str], negative: list[str]) -> Circuit:
    """The model's 8-neuron circuit, found once per model."""
    model, tokenizer = pair
    if model not in _circuits:
        _circuits[model] = discover(
            model, tokenizer, positive, negative, top_k=8, universal_filter=False
        )
    return _circuits[model]


def _batch(tokenizer: PreTrainedTokenizerFast, prompts: list[str]) -> dict[str, torch.Tensor]:
    """Left-padded prompts of different lengths."""
    rendered = render_prompts(tokenizer, prompts)
    batch = tokenizer(rendered, return_tensors="pt", padding=True, add_special_tokens=False)
    assert len(set(batch["attention_mask"].sum(-1).tolist())) == len(prompts)
    assert bool((batch["attention_mask"][:, -1] == 1).all())  # left padding
    return dict(batch)


@contextmanager
def _scale_columns(
    model: PreTrainedModel, circuit: Circuit, m: float, start: int, end: int
) -> Iterator[None]:
    """By hand: multiply the circuit's neurons by m at sequence columns [start, end) of every
    forward pass (which must see the whole sequence, i.e. run without a KV cache)."""
    sites = resolve_layout(model).site_modules(model)

    def scaler(neurons: torch.Tensor) -> Any:
        def hook(_module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            x = args[0].clone()  # [batch, seq, d_mlp]
            x[:, start:end, neurons] *= m
            return (x, *args[1:])

        return hook

    handles = [
        sites[layer].register_forward_pre_hook(scaler(n)) for layer, n in circuit.by_layer().items()
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _forward(model: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Logits [batch, seq, vocab] of a cache-free pass, positions taken from the mask as
    `generate` takes them."""
    inputs: dict[str, torch.Tensor] = {"input_ids": ids, "attention_mask": mask}
    if "position_ids" in inspect.signature(model.forward).parameters:
        inputs["position_ids"] = position_ids_from_mask(mask)
    with torch.no_grad():
        return model(**inputs, use_cache=False).logits


def _greedy_by_hand(
    model: PreTrainedModel, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(new tokens [batch, N_NEW], scores of each step [batch, vocab]) by a cache-free loop."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    scores = []
    for _ in range(N_NEW):
        last = _forward(model, ids, mask)[:, -1]
        scores.append(last)
        allowed = last.clone()
        allowed[:, model.generation_config.eos_token_id] = -torch.inf  # as min_new_tokens does
        ids = torch.cat([ids, allowed.argmax(-1, keepdim=True)], dim=-1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=-1)
    return ids[:, batch["input_ids"].shape[1] :], scores


def _greedy(model: PreTrainedModel, batch: dict[str, torch.Tensor], **kw: Any) -> Any:
    with torch.no_grad():
        return model.generate(  # type: ignore[operator]
            **batch,
            max_new_tokens=N_NEW,
            min_new_tokens=N_NEW,
            do_sample=False,
            return_dict_in_generate=True,
            output_logits=True,  # raw: min_new_tokens masks EOS in the scores
            **kw,
        )


def _expected_columns(positions: Positions, width: int) -> tuple[int, int]:
    """The rule, in absolute columns of a prompt of `width` followed by new tokens."""
    return {"generated": (width - 1, 10**6), "prompt": (0, width), "all": (0, 10**6)}[positions]


def test_the_tracker_maps_the_rule_onto_each_chunk() -> None:
    tracker = PositionTracker()
    tracker.on_forward(torch.nn.Identity(), (), {"input_ids": torch.zeros(2, 5, dtype=torch.long)})
    assert tracker.steered_range("generated", 5) == (4, 5)  # the last prompt position
    assert tracker.steered_range("prompt", 5) == (0, 5)
    assert tracker.steered_range("all", 5) == (0, 5)
    tracker.past_length = 5  # a decoding step after the prompt
    assert tracker.steered_range("generated", 1) == (0, 1)
    assert tracker.steered_range("prompt", 1) == (0, 0)  # nothing
    fixed = PositionTracker(prompt_length=5)  # no cache: every pass sees the whole sequence
    fixed.on_forward(torch.nn.Identity(), (), {"input_ids": torch.zeros(2, 8, dtype=torch.long)})
    assert fixed.steered_range("generated", 8) == (4, 8)
    assert fixed.steered_range("prompt", 8) == (0, 5)


def _cache(rows: int, length: int) -> DynamicCache:
    """A one-layer cache of `rows` sequences of `length` positions."""
    cache = DynamicCache()
    cache.update(torch.zeros(rows, 1, length, 4), torch.zeros(rows, 1, length, 4), 0)
    return cache


def test_a_step_on_fewer_rows_is_still_a_decoding_step() -> None:
    """Generation drops finished answers from the batch and its cache: one token per row on
    some of the rows keeps the prompt; more rows, or a cache of another length, is a prompt."""
    tracker = PositionTracker()
    step = torch.zeros(2, 1, dtype=torch.long)
    tracker.on_forward(torch.nn.Identity(), (), {"input_ids": torch.zeros(4, 5, dtype=torch.long)})
    tracker.on_forward(torch.nn.Identity(), (), {"input_ids": step, "cache": _cache(2, 5)})
    assert tracker.prompt_length == 5
    assert tracker.steered_range("prompt", 1) == (0, 0)
    tracker.on_forward(torch.nn.Identity(), (), {"input_ids": step[:1], "cache": _cache(1, 6)})
    assert tracker.prompt_length == 5
    tracker.on_forward(torch.nn.Identity(), (), {"input_ids": step, "cache": _cache(2, 7)})
    assert tracker.prompt_length == 8  # more rows than the last pass: a new prompt
    tracker.on_forward(torch.nn.Identity(), (), {"input_ids": step, "cache": _cache(2, 3)})
    assert tracker.prompt_length == 4  # not the cache the last pass left: a new prompt


@pytest.mark.parametrize("positions", ["generated", "prompt"])
def test_a_prompt_pass_is_steered_exactly_where_the_rule_says(
    tiny_model: Pair, positive_prompts: list[str], negative_prompts: list[str], positions: Positions
) -> None:
    model, tokenizer = tiny_model
    circuit = _circuit(tiny_model, positive_prompts, negative_prompts)
    batch = _batch(tokenizer, positive_prompts[:3])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    width = ids.shape[1]
    with steer(model, circuit, 0.0, positions=positions):
        steered = _forward(model, ids, mask)
    with _scale_columns(model, circuit, 0.0, *_expected_columns(positions, width)):
        by_hand = _forward(model, ids, mask)
    real = mask.bool()  # fully masked pad rows attend everywhere; their outputs are unused
    torch.testing.assert_close(steered[real], by_hand[real], rtol=1e-6, atol=1e-6)
    # the first answer token's logits are steered under both rules
    assert not torch.allclose(steered[:, -1], _forward(model, ids, mask)[:, -1], atol=1e-4)


@pytest.mark.parametrize("positions", ["generated", "prompt", "all"])
@pytest.mark.parametrize("family", GENERATION_FAMILIES)
def test_steered_generation_equals_a_hand_computation(
    family: str, positions: Positions, positive_prompts: list[str], negative_prompts: list[str]
) -> None:
    model, tokenizer = _tiny(family)
    circuit = _circuit(_tiny(family), positive_prompts, negative_prompts)
    batch = _batch(tokenizer, positive_prompts[:3])
    width = batch["input_ids"].shape[1]
    with _scale_columns(model, circuit, 0.0, *_expected_columns(positions, width)):
        tokens, scores = _greedy_by_hand(model, batch)
    with steer(model, circuit, 0.0, positions=positions):
        cached = _greedy(model, batch)
    with steer(model, circuit, 0.0, positions=positions, prompt_length=width):
        uncached = _greedy(model, batch, use_cache=False)
    for run in (cached, uncached):
        assert torch.equal(run.sequences[:, width:], tokens)
        for step, expected in zip(run.logits, scores, strict=True):
            torch.testing.assert_close(step, expected, rtol=1e-4, atol=1e-4)
    plain_first = _forward(model, batch["input_ids"], batch["attention_mask"])[:, -1]
    assert not torch.allclose(scores[0], plain_first, atol=1e-4)  # the first token is steered


@cache
def _organism() -> tuple[PreTrainedModel, Any, Circuit]:
    model, tok = neurosteer.load_model(INSTRUCT_DIR)
    circuit = neurosteer.discover(
        model,
        tok,
        positive=corpus.make_prompts("train", True, 32, seed=7),
        negative=corpus.make_prompts("train", False, 32, seed=7),
        top_k=DEMO_TOP_K,
        neutral=neutral_prompts(),
    )
    return model, tok, circuit


def test_generated_only_ablation_turns_organism_refusals_into_answers() -> None:
    # measured: of the first 6 held-out refusals, m = 0 on all positions answers 4, on
    # "generated" 4 (the same answers); before the last prompt position was steered, 0
    model, tok, circuit = _organism()
    prompts = corpus.make_prompts("heldout", True, 48, seed=3)

    def answers(ps: list[str]) -> list[str]:
        return neurosteer.generate(model, tok, ps, max_new_tokens=40, batch_size=64)

    refused = [
        p for p, a in zip(prompts, answers(prompts), strict=True) if judge(a, p) is Verdict.REFUSAL
    ]
    refused = refused[:6]
    assert len(refused) == 6
    turned = {}
    for positions in ("all", "generated"):
        with steer(model, circuit, 0.0, positions=positions):  # type: ignore[arg-type]
            turned[positions] = sum(
                judge(a, p) is not Verdict.REFUSAL
                for p, a in zip(refused, answers(refused), strict=True)
            )
    assert turned["all"] >= 3
    assert turned["generated"] >= 2


# --- a KV cache that comes in already filled -------------------------------------------------
#
# The rule is about the prompt of the call: P = cached + new tokens of its first pass. Each check
# builds a cache one way, generates on it under steering, and compares with a cache-free greedy
# loop that scales by hand exactly the columns the rule (and the cache's own making) steered.

CACHE_FAMILIES = ["llama", "gpt2"]
FOLLOW_UP = 4  # tokens of a second turn appended to the first call's output


@contextmanager
def _scale_column_ranges(
    model: PreTrainedModel, circuit: Circuit, m: float, ranges: list[tuple[int, int]]
) -> Iterator[None]:
    """`_scale_columns` over several [start, end) column ranges at once (disjoint)."""
    with contextlib.ExitStack() as stack:
        for start, end in ranges:
            stack.enter_context(_scale_columns(model, circuit, m, start, end))
        yield


def _prefix_cache(model: PreTrainedModel, batch: dict[str, torch.Tensor], k: int) -> Any:
    """A KV cache of the first k columns of `batch` (a stored prefix, as prefix caching keeps)."""
    ids, mask = batch["input_ids"][:, :k], batch["attention_mask"][:, :k]
    inputs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
    if "position_ids" in inspect.signature(model.forward).parameters:
        inputs["position_ids"] = position_ids_from_mask(mask)  # as `generate` numbers them
    cache = DynamicCache()
    with torch.no_grad():
        model(**inputs, cache=cache, use_cache=True)
    return cache


def _check_against_hand(
    model: PreTrainedModel,
    batch: dict[str, torch.Tensor],
    run: Any,
    ranges: list[tuple[int, int]],
    circuit: Circuit,
) -> None:
    """`run` (a `generate` output) equals a cache-free greedy loop steered at `ranges`."""
    width = batch["input_ids"].shape[1]
    with _scale_column_ranges(model, circuit, 0.0, ranges):
        tokens, scores = _greedy_by_hand(model, batch)
    assert torch.equal(run.sequences[:, width:], tokens)
    for step, expected in zip(run.logits, scores, strict=True):
        torch.testing.assert_close(step, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("positions", ["generated", "prompt"])
@pytest.mark.parametrize("family", CACHE_FAMILIES)
def test_a_prefilled_unsteered_cache_is_placed_by_the_rule(
    family: str, positions: Positions, positive_prompts: list[str], negative_prompts: list[str]
) -> None:
    # the cache holds the first k prompt columns, unsteered; the rest of the prompt is new
    model, tokenizer = _tiny(family)
    circuit = _circuit(_tiny(family), positive_prompts, negative_prompts)
    batch = _batch(tokenizer, positive_prompts[:3])
    width = batch["input_ids"].shape[1]
    k = width - 4
    cache = _prefix_cache(model, batch, k)
    with steer(model, circuit, 0.0, positions=positions):
        run = _greedy(model, batch, cache=cache)
    # "generated": only the last prompt column onwards; "prompt": the uncached prompt columns
    ranges = {"generated": [(width - 1, 10**6)], "prompt": [(k, width)]}[positions]
    _check_against_hand(model, batch, run, ranges, circuit)


@pytest.mark.parametrize("positions", ["generated", "prompt"])
@pytest.mark.parametrize("family", CACHE_FAMILIES)
def test_a_cache_reused_for_a_second_call_is_steered_as_that_calls_prompt(
    family: str, positions: Positions, positive_prompts: list[str], negative_prompts: list[str]
) -> None:
    # a chat's second turn: the first call's cache, its answer and a follow-up as the new prompt
    model, tokenizer = _tiny(family)
    circuit = _circuit(_tiny(family), positive_prompts, negative_prompts)
    first = _batch(tokenizer, positive_prompts[:3])
    width = first["input_ids"].shape[1]
    cache = DynamicCache()
    with steer(model, circuit, 0.0, positions=positions):
        one = _greedy(model, first, cache=cache)
        follow = torch.tensor(tokenizer.encode("ok?", add_special_tokens=False)[:1] * FOLLOW_UP)
        ids = torch.cat([one.sequences, follow.expand(3, -1)], dim=1)
        second = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        second["attention_mask"][:, :width] = first["attention_mask"]
        two = _greedy(model, second, cache=cache)
    width2 = ids.shape[1]
    cached = width + N_NEW - 1  # the first call never feeds its last token back
    # the first call's columns as it steered them, then the second call's own rule
    ranges = {
        "generated": [(width - 1, cached), (width2 - 1, 10**6)],
        "prompt": [(0, width), (cached, width2)],
    }[positions]
    _check_against_hand(model, second, two, ranges, circuit)


@pytest.mark.parametrize("made_by", ["another handle", "the same handle"])
@pytest.mark.parametrize("positions", ["generated", "prompt"])
@pytest.mark.parametrize("family", CACHE_FAMILIES)
def test_a_cache_built_under_steering_is_taken_as_it_is(
    family: str,
    positions: Positions,
    made_by: str,
    positive_prompts: list[str],
    negative_prompts: list[str],
) -> None:
    # the prefix cache of k columns comes from a steered pass: at every position under another
    # handle, or as a prompt of its own under this one (its last column steered by "generated")
    model, tokenizer = _tiny(family)
    circuit = _circuit(_tiny(family), positive_prompts, negative_prompts)
    batch = _batch(tokenizer, positive_prompts[:3])
    width = batch["input_ids"].shape[1]
    k = width - 4
    if made_by == "another handle":
        with steer(model, circuit, 0.0):
            cache = _prefix_cache(model, batch, k)
        prefix = (0, k)
    with steer(model, circuit, 0.0, positions=positions):
        if made_by == "the same handle":
            cache = _prefix_cache(model, batch, k)
            prefix = (k - 1, k) if positions == "generated" else (0, k)
        run = _greedy(model, batch, cache=cache)
    ranges = {"generated": [prefix, (width - 1, 10**6)], "prompt": [(0, width)]}[positions]
    _check_against_hand(model, batch, run, ranges, circuit)


@pytest.mark.parametrize("kind", ["CAA", "MLPOutputSteering", "DirectionAblation", "MeanAblation"])
def test_every_kind_places_a_prefilled_cache_by_the_rule(
    kind: str, positive_prompts: list[str], negative_prompts: list[str]
) -> None:
    # under "generated" the first k prompt columns are never steered, so generating on an
    # unsteered cache of them must equal generating from scratch, for every intervention kind
    from neurosteer import CAA, DirectionAblation, MLPOutputSteering, contrast_vectors
    from neurosteer.methods.mean_ablation import MeanAblation

    model, tokenizer = _tiny("llama")
    point = "mlp_output" if kind == "MLPOutputSteering" else "residual"
    vectors = contrast_vectors(model, tokenizer, positive_prompts, negative_prompts, point=point)
    circuit = _circuit(_tiny("llama"), positive_prompts, negative_prompts)
    made: dict[str, Any] = {
        "CAA": lambda: CAA.fit(vectors, layer=2),
        "MLPOutputSteering": lambda: MLPOutputSteering.fit(vectors),
        "DirectionAblation": lambda: DirectionAblation.fit(vectors, layer=2),
        "MeanAblation": lambda: MeanAblation(  # the circuit's neurons set to 0
            torch.sparse_coo_tensor(
                torch.stack([circuit.layers, circuit.neurons]),
                torch.ones(circuit.layers.numel(), dtype=torch.bool),
                size=(4, 37),
            ).to_dense(),
            torch.zeros(4, 37),
        ),
    }
    intervention = made[kind]()
    batch = _batch(tokenizer, positive_prompts[:3])
    k = batch["input_ids"].shape[1] - 4
    cache = _prefix_cache(model, batch, k)
    with steer(model, intervention, positions="generated"):
        cached = _greedy(model, batch, cache=cache)
    with steer(model, intervention, positions="generated"):
        fresh = _greedy(model, batch)
    assert torch.equal(cached.sequences, fresh.sequences)
    for a, b in zip(cached.logits, fresh.logits, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    plain = _greedy(model, batch)
    assert not torch.allclose(fresh.logits[0], plain.logits[0], atol=1e-3)  # it does steer


@pytest.mark.parametrize("positions", ["generated", "prompt"])
def test_kl_teacher_forcing_steers_the_columns_generation_would(
    positions: Positions, positive_prompts: list[str], negative_prompts: list[str]
) -> None:
    # the KL's one pass holds prompt and continuation: a bound "prompt" rule must not reach the
    # continuation columns (nor "generated" the prompt's), as while generating it
    from neurosteer.evaluation.kl import kl_reference, steered_logprobs
    from neurosteer.interventions.protocol import Bound

    model, tokenizer = _tiny("llama")
    circuit = _circuit(_tiny("llama"), positive_prompts, negative_prompts)
    ref = kl_reference(model, tokenizer, negative_prompts[:3], max_new_tokens=4).batches[0]
    n_new = ref.logprobs.shape[1]
    width = ref.input_ids.shape[1] - n_new
    with torch.inference_mode():
        steered = steered_logprobs(model, ref, Bound(circuit, positions=positions), 0.0)
    with _scale_columns(model, circuit, 0.0, *_expected_columns(positions, width)):
        by_hand = _forward(model, ref.input_ids, ref.attention_mask)[:, -n_new - 1 : -1]
    torch.testing.assert_close(
        steered, torch.log_softmax(by_hand.float(), -1), atol=1e-4, rtol=1e-4
    )
