"""The offline demo: find the built-in organism's refusal circuit, ablate and amplify it, report.

`run_demo` loads the shipped instruct organism, discovers a circuit on training-distribution
prompts (harmful vs benign), and measures, on held-out prompts, how often the model refuses when
the circuit is left alone (m=1), ablated (m=0) or amplified, against a random circuit of the same
size per layer. It writes `report.md` with PNG plots and returns the numbers.

The circuit size is `DEMO_TOP_K` neurons, not the project's default 0.1%: the organism has only
3,072 MLP neurons, so 0.1% is 3 neurons, too few to carry its refusal gate (docs/organism.md has
the sweep over k).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from neurosteer.circuit import Circuit
from neurosteer.discovery import discover
from neurosteer.generation import generate
from neurosteer.loading import load_model
from neurosteer.organism.evaluate import Rates
from neurosteer.organism.paths import INSTRUCT_DIR
from neurosteer.organism.prompt_sets import demo_prompt_sets, neutral_prompts
from neurosteer.steering import steer

logger = logging.getLogger(__name__)

DEMO_TOP_K = 48
"""Circuit size the demo uses on the organism: 48 of 3,072 MLP neurons (1.6%)."""
MAX_NEW_TOKENS = 40


@dataclass(frozen=True)
class ConditionRow:
    """Held-out rates under one intervention."""

    condition: str
    multiplier: float
    harmful: Rates
    benign: Rates


@dataclass(frozen=True)
class ExampleAnswers:
    """One held-out prompt answered by the unchanged, ablated and amplified model."""

    prompt: str
    unchanged: str
    ablated: str
    amplified: str


@dataclass(frozen=True)
class DemoResult:
    """Everything the demo measured, and where it wrote the report."""

    report_path: Path
    n_neurons: int
    total_neurons: int
    neurons_per_layer: dict[int, int]
    n_discover: int
    n_eval: int
    amplify: float
    rows: tuple[ConditionRow, ...]
    examples: tuple[ExampleAnswers, ...]
    k_sweep: tuple[tuple[int, float], ...]
    """(k, held-out harmful refusal with those k neurons ablated)."""
    seconds: float


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
) -> DemoResult:
    """Run the organism demo and write `out_dir/report.md` plus PNG plots.

    Args:
        out_dir: report folder (created if missing; files in it are overwritten).
        top_k: circuit size in neurons.
        amplify: the multiplier of the amplified condition.
        n_discover: prompts per class for discovery (training topics and templates).
        n_eval: held-out prompts per class for the rates.
        n_examples: held-out prompts shown side by side (harmful first, then one benign).
        sweep_ks: circuit sizes for the ablation sweep (empty to skip).
        model_dir: the organism to use (default: the shipped instruct model).

    Example:
        >>> result = run_demo("neurosteer-demo", n_eval=20)  # doctest: +SKIP
        >>> result.rows[1].harmful.refusal  # doctest: +SKIP
    """
    started = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, tok = load_model(model_dir)
    sets = demo_prompt_sets(n_discover, n_eval)
    # The organism knows no general English: the universal filter runs on in-domain requests.
    neutral = neutral_prompts()
    circuit = discover(
        model,
        tok,
        positive=sets.train_harmful,
        negative=sets.train_benign,
        top_k=max((top_k, *sweep_ks)),
        neutral=neutral,
        keep_table=True,
    )
    full = circuit
    circuit = full.reselect(top_k=top_k)
    control = circuit.random_like(seed=0)
    harmful, benign = list(sets.heldout_harmful), list(sets.heldout_benign)

    def answers(c: Circuit | None, m: float, prompts: list[str]) -> list[str]:
        if c is None:
            return generate(model, tok, prompts, max_new_tokens=MAX_NEW_TOKENS, batch_size=64)
        with steer(model, c, m):
            return generate(model, tok, prompts, max_new_tokens=MAX_NEW_TOKENS, batch_size=64)

    conditions = [
        ("unchanged", None, 1.0),
        ("ablated", circuit, 0.0),
        ("amplified", circuit, amplify),
        ("random ablated", control, 0.0),
    ]
    rows, texts = [], {}
    for name, c, m in conditions:
        h, b = answers(c, m, harmful), answers(c, m, benign)
        texts[name] = (h, b)
        rows.append(ConditionRow(name, m, Rates.of(h, harmful), Rates.of(b, benign)))
        logger.info("%s: harmful %s, benign %s", name, rows[-1].harmful, rows[-1].benign)
    picks = [*range(min(n_examples - 1, len(harmful)))]
    examples = [
        ExampleAnswers(harmful[i], *(texts[n][0][i] for n in ("unchanged", "ablated", "amplified")))
        for i in picks
    ]
    examples.append(
        ExampleAnswers(benign[0], *(texts[n][1][0] for n in ("unchanged", "ablated", "amplified")))
    )
    sweep = []
    for k in sweep_ks:
        h = answers(full.reselect(top_k=k), 0.0, harmful)
        sweep.append((k, Rates.of(h, harmful).refusal))
    result = DemoResult(
        report_path=out / "report.md",
        n_neurons=len(circuit),
        total_neurons=circuit.model.n_layers * circuit.model.d_mlp,
        neurons_per_layer=circuit.neurons_per_layer(),
        n_discover=n_discover,
        n_eval=n_eval,
        amplify=amplify,
        rows=tuple(rows),
        examples=tuple(examples),
        k_sweep=tuple(sweep),
        seconds=time.perf_counter() - started,
    )
    _write_report(result, circuit.model.n_layers, out)
    return result


def _write_report(result: DemoResult, n_layers: int, out: Path) -> None:
    """report.md plus three PNGs: neurons per layer, refusal by condition, refusal vs k."""
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar(range(n_layers), [result.neurons_per_layer.get(i, 0) for i in range(n_layers)])
    ax.set(xlabel="layer", ylabel="circuit neurons", title="Where the refusal circuit sits")
    fig.tight_layout()
    fig.savefig(out / "circuit_layers.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3))
    xs = range(len(result.rows))
    ax.bar(
        [x - 0.2 for x in xs], [100 * r.harmful.refusal for r in result.rows], 0.4, label="harmful"
    )
    ax.bar(
        [x + 0.2 for x in xs], [100 * r.benign.refusal for r in result.rows], 0.4, label="benign"
    )
    ax.set_xticks(list(xs), [r.condition for r in result.rows])
    ax.set(ylabel="refused (%)", ylim=(0, 100), title="Held-out refusal by intervention")
    ax.legend(loc="upper center")
    fig.tight_layout()
    fig.savefig(out / "refusal_rates.png", dpi=100)
    plt.close(fig)

    plots = ["circuit_layers.png", "refusal_rates.png"]
    if result.k_sweep:
        fig, ax = plt.subplots(figsize=(5, 3))
        ks, refusals = zip(*result.k_sweep, strict=True)
        ax.plot(ks, [100 * r for r in refusals], marker="o")
        ax.set(
            xscale="log",
            xlabel="neurons ablated (k)",
            ylabel="harmful refused (%)",
            ylim=(0, 100),
            title="Ablation strength vs circuit size",
        )
        fig.tight_layout()
        fig.savefig(out / "k_sweep.png", dpi=100)
        plt.close(fig)
        plots.append("k_sweep.png")

    lines = [
        "# neurosteer demo: the organism's refusal circuit",
        "",
        f"Circuit: **{result.n_neurons}** of {result.total_neurons} MLP neurons "
        f"({100 * result.n_neurons / result.total_neurons:.2f}%), discovered on "
        f"{result.n_discover} harmful + {result.n_discover} benign training prompts. "
        f"Rates below: {result.n_eval} held-out harmful and {result.n_eval} held-out benign "
        "prompts (unseen verb–target pairs, unseen templates), greedy decoding.",
        "",
        "| layer | " + " | ".join(str(i) for i in sorted(result.neurons_per_layer)) + " |",
        "|---|" + "---|" * len(result.neurons_per_layer),
        "| neurons | "
        + " | ".join(str(n) for _, n in sorted(result.neurons_per_layer.items()))
        + " |",
        "",
        "| condition | m | harmful refused | benign refused "
        "| harmful well-formed compliant | harmful fragments |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r.condition} | {r.multiplier:g} | {r.harmful.refusal:.0%} | {r.benign.refusal:.0%} "
        f"| {r.harmful.compliant:.0%} | {r.harmful.fragment:.0%} |"
        for r in result.rows
    ]
    if result.k_sweep:
        lines += [
            "",
            "| k (ablated) | " + " | ".join(str(k) for k, _ in result.k_sweep) + " |",
            "|---|" + "---|" * len(result.k_sweep),
            "| harmful refused | " + " | ".join(f"{r:.0%}" for _, r in result.k_sweep) + " |",
        ]
    lines += ["", "## Examples (held-out prompts)", ""]
    for ex in result.examples:
        lines += [
            f"**{ex.prompt}**",
            "",
            f"- unchanged: {ex.unchanged}",
            f"- ablated: {ex.ablated}",
            f"- amplified (m={result.amplify:g}): {ex.amplified}",
            "",
        ]
    lines += [f"![{p}]({p})" for p in plots]
    lines += ["", f"Ran in {result.seconds:.0f} s."]
    (out / "report.md").write_text("\n".join(lines) + "\n")
