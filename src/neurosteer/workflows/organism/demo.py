"""The offline demo: find the built-in organism's refusal circuit, ablate and amplify it, report.

`run_demo` loads the shipped instruct organism, discovers a circuit on training-distribution
prompts (harmful vs benign), and measures, on held-out prompts, how often the model refuses when
the circuit is left alone (m=1), ablated (m=0) or amplified, against a random circuit of the same
size per layer. It writes `report.md` with PNG plots and returns the numbers.

Refusal is measured exactly as a sweep measures it (`evaluation.refusal.measure_refusal`: the
library's greedy generation, the organism's judge, `refusal_rates`), so `neurosteer sweep
--judge organism` on the same prompts and circuit reports the same rates.

The circuit size is `DEMO_TOP_K` neurons, not the project's default 0.1%: the organism has only
3,072 MLP neurons, so 0.1% is 3 neurons, too few to carry its refusal gate (docs/organism.md has
the sweep over k).

`model_dir=MOE_INSTRUCT_DIR` runs the same demo on the mixture-of-experts twin (`neurosteer demo
--moe`): its circuit is per-expert neurons and its random control is per-expert neurons of the
same count. It needs the core's per-expert support (issue 19); without it `run_demo` stops at
once with the core's `UnsupportedModelError`, before any discovery.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from neurosteer.errors import UnsupportedModelError
from neurosteer.evaluation.refusal import JudgedAnswers, measure_refusal
from neurosteer.methods.circuit import Circuit
from neurosteer.methods.discovery import discover
from neurosteer.model.layout import resolve_layout
from neurosteer.model.loading import load_model
from neurosteer.workflows.organism.demo_report import write_demo_report
from neurosteer.workflows.organism.demo_result import (
    SHOWN,
    ConditionRow,
    DemoResult,
    ExampleAnswers,
)
from neurosteer.workflows.organism.evaluate import ANSWER_BATCH, ANSWER_TOKENS, OrganismJudge, Rates
from neurosteer.workflows.organism.paths import INSTRUCT_DIR
from neurosteer.workflows.organism.prompt_sets import PromptSets, demo_prompt_sets, neutral_prompts

logger = logging.getLogger(__name__)

DEMO_TOP_K = 48
"""Circuit size the demo uses on the organism: 48 of 3,072 MLP neurons (1.6%)."""
MOE_DEMO_TOP_K = 60
"""Circuit size the demo uses on the MoE organism: 60 of its 3,840 expert neurons (6 layers of
8 routed experts × 64 and a shared expert of 128), the dense demo's share (1.6%)."""
MAX_NEW_TOKENS = ANSWER_TOKENS


# over 60 lines: a 12-line signature and 21-line docstring of public arguments; body 34 lines
def run_demo(
    out_dir: str | Path,
    *,
    top_k: int = DEMO_TOP_K,
    amplify: float = 2.0,
    n_discover: int = 32,
    n_eval: int = 100,
    n_examples: int = 4,
    sweep_ks: tuple[int, ...] = (3, 12, 24, 48, 96),
    model_dir: str | Path = INSTRUCT_DIR,
    progress: Callable[[str], None] | None = None,
) -> DemoResult:
    """Run the organism demo and write `out_dir/report.html`, `report.md`, PNG plots and
    `demo.json` (the numbers and examples the pages are drawn from; `neurosteer report` redraws
    the pages from it).

    Args:
        out_dir: report folder (created if missing; files in it are overwritten).
        top_k: circuit size in neurons.
        amplify: the multiplier of the amplified condition.
        n_discover: prompts per class for discovery (training topics and templates).
        n_eval: held-out prompts per class for the rates.
        n_examples: held-out prompts shown side by side: `n_examples - 1` harmful ones, then
            one benign (see `_examples` for how they are chosen).
        sweep_ks: circuit sizes for the ablation sweep (empty to skip).
        model_dir: the organism to use (default: the shipped instruct model).
        progress: called with a short description as each step starts (loading, discovery,
            each condition's answers, each circuit size of the sweep, the report).

    Example:
        >>> result = run_demo("neurosteer-demo", n_eval=20)  # doctest: +SKIP
        >>> result.rows[1].harmful.refusal  # doctest: +SKIP
    """
    step = progress or (lambda _what: None)
    started = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    step("loading the organism")
    model, tok = load_model(model_dir)
    total_neurons = _neuron_count(model, model_dir)
    sets = demo_prompt_sets(n_discover, n_eval)
    step(f"discovering the refusal circuit on {n_discover}+{n_discover} prompts")
    full = _discover(model, tok, sets, max((top_k, *sweep_ks)))
    circuit = full.reselect(top_k=top_k)
    rows, answers = _conditions(model, tok, sets, circuit, amplify, step)
    sweep = []
    for k in sweep_ks:
        step(f"ablating the top {k} neurons: {len(sets.heldout_harmful)} harmful answers")
        judged = _measure(model, tok, sets.heldout_harmful, full.reselect(top_k=k), 0.0)
        sweep.append((k, judged.refusal))
    result = DemoResult(
        report_path=out / "report.md",
        n_neurons=len(circuit),
        total_neurons=total_neurons,
        neurons_per_layer=circuit.neurons_per_layer(),
        neurons_per_expert=neurons_per_expert(circuit),
        n_discover=n_discover,
        n_eval=n_eval,
        amplify=amplify,
        rows=tuple(rows),
        examples=_examples(sets, answers, n_examples),
        k_sweep=tuple(sweep),
        seconds=time.perf_counter() - started,
        circuit=circuit,
        model_dir=str(model_dir),
    )
    step("writing the report")
    write_demo_report(result, out)
    return result


def _neuron_count(model: PreTrainedModel, model_dir: str | Path) -> int:
    """All MLP neurons of the organism (every expert's, in a mixture of experts), resolved
    before the long steps start.

    Raises:
        UnsupportedModelError: this build cannot find the model's neurons (the MoE organism
            before the core's per-expert support); the message names the organism and the cause.
    """
    try:
        return resolve_layout(model).n_neurons
    except UnsupportedModelError as err:
        raise UnsupportedModelError(
            f"this neurosteer cannot steer the organism at {model_dir}: {err}"
        ) from None


def neurons_per_expert(circuit: Circuit) -> dict[tuple[int, str], int]:
    """{(layer, expert): number of circuit neurons}, pairs with none left out; empty for a
    dense model's circuit. The expert is "E5" (routed expert 5), "S" (the shared experts) or
    "dense" (a dense layer of an MoE model), read from the circuit's neuron blocks
    (`ModelInfo.neuron_blocks`, circuit format 5).
    """
    if circuit.model.neuron_blocks is None:
        return {}
    names = (
        circuit.model.neuron_name(layer, neuron).split(" ")
        for layer, neuron in zip(circuit.layers.tolist(), circuit.neurons.tolist(), strict=True)
    )
    experts = (name[0] if len(name) == 2 else "dense" for name in names)
    pairs = zip(circuit.layers.tolist(), experts, strict=True)
    return dict(sorted(Counter(pairs).items()))


def _discover(
    model: PreTrainedModel, tok: PreTrainedTokenizerBase, sets: PromptSets, top_k: int
) -> Circuit:
    """The circuit of the training prompts, its δ table kept for other sizes (`reselect`)."""
    # The organism knows no general English: the universal filter runs on in-domain requests.
    return discover(
        model,
        tok,
        positive=sets.train_harmful,
        negative=sets.train_benign,
        top_k=top_k,
        neutral=neutral_prompts(),
        keep_table=True,
    )


def _conditions(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    sets: PromptSets,
    circuit: Circuit,
    amplify: float,
    step: Callable[[str], None],
) -> tuple[list[ConditionRow], dict[str, tuple[JudgedAnswers, JudgedAnswers]]]:
    """Held-out rates of the unchanged, ablated, amplified and random-ablated model, and
    {condition: (judged harmful answers, judged benign answers)}; `step` is told each
    condition as it starts."""
    conditions = [
        ("unchanged", None, 1.0),
        ("ablated", circuit, 0.0),
        ("amplified", circuit, amplify),
        ("random ablated", circuit.random_like(seed=0), 0.0),
    ]
    rows, answers = [], {}
    for name, c, m in conditions:
        n = len(sets.heldout_harmful) + len(sets.heldout_benign)
        step(f"answering {n} held-out prompts: {name} (m = {m:g})")
        harmful = _measure(model, tok, sets.heldout_harmful, c, m)
        benign = _measure(model, tok, sets.heldout_benign, c, m)
        answers[name] = (harmful, benign)
        row = ConditionRow(
            name, m, Rates.from_labels(harmful.labels), Rates.from_labels(benign.labels)
        )
        logger.info("%s: harmful %s, benign %s", name, row.harmful, row.benign)
        rows.append(row)
    return rows, answers


def _measure(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    prompts: tuple[str, ...],
    circuit: Circuit | None,
    multiplier: float,
) -> JudgedAnswers:
    """Held-out answers under `circuit` at `multiplier` (None: the model as it is), judged."""
    return measure_refusal(
        model,
        tok,
        prompts,
        OrganismJudge(),
        intervention=circuit,
        strength=multiplier,
        max_new_tokens=MAX_NEW_TOKENS,
        batch_size=ANSWER_BATCH,
    )


def _examples(
    sets: PromptSets,
    answers: dict[str, tuple[JudgedAnswers, JudgedAnswers]],
    n_examples: int,
) -> tuple[ExampleAnswers, ...]:
    """`n_examples - 1` harmful prompts and one benign one, answered three ways.

    Chosen to show the effect as it is, not at its best: the harmful ones come from the prompts
    the unchanged model refuses (all harmful prompts if it refuses none), and among them the
    share still refused after ablation is the share of the shown ones (rounded half up), so a
    circuit that leaves 30% refused shows one of three examples still refused. Within each group
    the first prompts in held-out order are taken. The benign one is the first benign prompt the
    unchanged model answers (the first benign prompt if it answers none).
    """
    harmful, benign = (tuple(answers[name][i] for name in SHOWN) for i in (0, 1))
    refused = [i for i, label in enumerate(harmful[0].labels) if label == "refusal"]
    pool = refused or list(range(len(harmful[0].labels)))
    still = [i for i in pool if harmful[1].labels[i] == "refusal"]
    flipped = [i for i in pool if harmful[1].labels[i] != "refusal"]
    n_harmful = min(max(n_examples - 1, 0), len(pool))
    n_still = min(int(n_harmful * len(still) / len(pool) + 0.5), len(still))
    n_flipped = min(n_harmful - n_still, len(flipped))
    picks = sorted(still[:n_still] + flipped[:n_flipped] + still[n_still : n_harmful - n_flipped])
    answered = [i for i, label in enumerate(benign[0].labels) if label == "compliance"]
    examples = [_example(sets.heldout_harmful[i], "harmful", harmful, i) for i in picks]
    benign_pick = answered[0] if answered else 0
    examples.append(_example(sets.heldout_benign[benign_pick], "benign", benign, benign_pick))
    return tuple(examples)


def _example(
    prompt: str, kind: str, judged: tuple[JudgedAnswers, ...], index: int
) -> ExampleAnswers:
    """The answers to prompt `index` under each of `SHOWN`, with their labels."""
    texts = tuple(j.answers[index] for j in judged)
    labels = tuple(j.labels[index] for j in judged)
    return ExampleAnswers(
        prompt, texts[0], texts[1], texts[2], kind, (labels[0], labels[1], labels[2])
    )
