"""The reference implementation's contrastive discovery beside `neurosteer.discover`, in one
process, on one loaded model: the overlap of the two top-k sets, every difference explained,
and the time of each (issue 22, item 1).

    python benchmarks/reference_check.py --model qwen.gguf --reference /tmp/neural-steering \
        [--top-k N | --fraction F] [--data DIR] [--n-prompts N] [--reference-prompts] \
        [--dtype float32] [--threads 2] [--repeats 3] [--jbb N --max-new-tokens 64] [--json]

DIR is a snapshot of NousResearch/neural-steering (`neuron_steer/core.py`,
`experiments/jailbreak_benchmark.py`); it is imported from there at run time and nothing of it
is kept here. Its `NeuronSteerer.discover_contrastive` is run on the model neurosteer loaded
(its loader only takes Hub ids and needs a GPU), with the settings it would use for that model:

| reference                                   | neurosteer.discover                  |
|---------------------------------------------|--------------------------------------|
| `top_k` (its JailbreakBench script: 1,600)  | `top_k`, the same number             |
| `filter_infrastructure=True`: skip L0, L1   | `skip_layers=(0, 1)`                 |
| no universal-neuron filter on this path     | `universal_filter=False`             |
| rank by abs(δ), both signs                  | `positive_only=False`                |
| chat template iff the model's name contains | `chat_template=` that same answer    |
| "instruct" or "chat", default system text   | (`system=None`: the template's own)  |
| one prompt per forward pass, full logits    | batches (16 on the CPU), stops after |
|                                             | the last MLP                         |
| drops neurons with abs(δ) ≤ 1e-6            | no such floor (reported if it bites) |

Default prompts: the first N harmful_train / harmless_train prompts of the refusal-direction
splits in --data; `--reference-prompts` takes the reference script's own HARMFUL / BENIGN lists
from the snapshot instead. `--jbb N` also runs the reference's JailbreakBench protocol on the
first N JBB goals (its top-k circuit, ablated at m = 0, greedy, its regex judge) through the
reference's functions and through neurosteer, and compares the verdicts.

With --json the last line printed is one JSON object (`overlap`, `speedup`, ...).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import importlib.util
import io
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from common import data_folder, run_main, side_by_side

import neurosteer
from neurosteer.hooks import HookSet
from neurosteer.methods.circuit import Circuit
from neurosteer.methods.selection import neurons_for_fraction
from neurosteer.prompts.render import encode_for_model

#: The reference's own floor: neurons with abs(δ) at or below it never enter its ranking.
REFERENCE_FLOOR = 1e-6

Neuron = tuple[int, int]


# --------------------------------------------------------------------------------------------
# The reference, used from its snapshot


#: the reference JailbreakBench script, inside a snapshot folder
SCRIPT = Path("experiments") / "jailbreak_benchmark.py"


def load_reference(folder: Path) -> tuple[ModuleType, ModuleType]:
    """(neuron_steer.core, experiments/jailbreak_benchmark.py) imported from `folder`.

    Raises:
        SystemExit: the folder is not a snapshot of the reference (one line, what to give).
    """
    core_file = folder / "neuron_steer" / "core.py"
    script_file = folder / SCRIPT
    if not core_file.is_file() or not script_file.is_file():
        raise SystemExit(
            f"error: {folder} holds no neuron_steer/core.py and experiments/jailbreak_benchmark.py;"
            " give --reference a snapshot of NousResearch/neural-steering"
        )
    sys.path.insert(0, str(folder.resolve()))
    core = importlib.import_module("neuron_steer.core")
    if Path(core.__file__ or "").resolve() != core_file.resolve():
        raise SystemExit(f"error: neuron_steer was imported from {core.__file__}, not {folder}")
    spec = importlib.util.spec_from_file_location("reference_jailbreak_benchmark", script_file)
    if spec is None or spec.loader is None:
        raise SystemExit(f"error: cannot import {script_file}")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return core, script


def script_top_k(script_file: Path) -> int:
    """The default of the reference JailbreakBench script's `--top-k` option, read from its
    source (it sits inside `main()`, so it cannot be imported)."""
    for node in ast.walk(ast.parse(script_file.read_text())):
        if not (isinstance(node, ast.Call) and node.args):
            continue
        first = node.args[0]
        if isinstance(first, ast.Constant) and first.value == "--top-k":
            for keyword in node.keywords:
                if keyword.arg == "default":
                    return int(ast.literal_eval(keyword.value))
    raise SystemExit(f"error: no --top-k default in {script_file}; pass --top-k N")


def reference_is_instruct(name: str) -> bool:
    """Whether the reference would render prompts with the chat template for a model of this
    name (its loader decides by the name alone)."""
    lowered = name.lower()
    return "instruct" in lowered or "chat" in lowered


def reference_steerer(core: ModuleType, model: Any, tokenizer: Any, name: str) -> Any:
    """A `NeuronSteerer` around an already loaded model, without running its loader (which
    downloads from the Hub by id and detects universal neurons on a GPU)."""
    steerer = core.NeuronSteerer.__new__(core.NeuronSteerer)
    steerer.model = model
    steerer.tokenizer = tokenizer
    steerer.device = str(next(model.parameters()).device)
    steerer.model_name = name
    steerer.is_instruct = reference_is_instruct(name)
    steerer._layers_ref = core._get_model_layers(model)
    steerer._text_config = getattr(model.config, "text_config", model.config)
    steerer._feature_cache = {}
    steerer.blacklist = set()
    return steerer


def reference_discover(steerer: Any, positive: list[str], negative: list[str], k: int) -> Any:
    """The reference's contrastive discovery (its prints swallowed)."""
    with contextlib.redirect_stdout(io.StringIO()):
        return steerer.discover_contrastive(positive, negative, top_k=k)


def reference_scores(circuit: Any) -> dict[Neuron, float]:
    """{(layer, neuron): δ} of a reference circuit, in its rank order."""
    return {(int(n.layer), int(n.neuron)): float(d) for n, d in circuit.neurons.items()}


# --------------------------------------------------------------------------------------------
# Prompts


def discovery_prompts(args: argparse.Namespace, script: ModuleType) -> tuple[list[str], list[str]]:
    """(positive, negative): the reference script's lists or the refusal-direction splits."""
    if args.reference_prompts:
        positive, negative = list(script.HARMFUL), list(script.BENIGN)
        if args.n_prompts:
            positive, negative = positive[: args.n_prompts], negative[: args.n_prompts]
        return positive, negative
    from neurosteer.evaluation import load_dataset_prompts

    splits = Path(args.data) / "refusal_direction" / "splits"
    n = args.n_prompts or 32
    return (
        load_dataset_prompts(splits, split="harmful_train", limit=n),
        load_dataset_prompts(splits, split="harmless_train", limit=n),
    )


def token_mismatches(model: Any, tokenizer: Any, steerer: Any, prompts: list[str]) -> int:
    """How many prompts the two sides turn into different token ids."""
    ours = encode_for_model(model, tokenizer, prompts, chat_template=steerer.is_instruct)
    theirs = [
        tokenizer(steerer._format_prompt(p), return_tensors="pt").input_ids[0].tolist()
        for p in prompts
    ]
    return sum(a != b for a, b in zip(ours, theirs, strict=True))


# --------------------------------------------------------------------------------------------
# Comparison


def ours_discover(
    model: Any, tokenizer: Any, positive: list[str], negative: list[str], k: int, templated: bool
) -> Circuit:
    """`neurosteer.discover` with the reference's settings (see the module docstring)."""
    return neurosteer.discover(
        model,
        tokenizer,
        positive,
        negative,
        top_k=k,
        skip_layers=(0, 1),
        universal_filter=False,
        positive_only=False,
        chat_template=templated,
        keep_table=True,
    )


def our_delta(circuit: Circuit) -> torch.Tensor:
    """[n_layers, d_mlp] float32 δ from a circuit discovered with `keep_table=True`."""
    assert circuit.table is not None
    return circuit.table.positive_mean.float() - circuit.table.negative_mean.float()


def compare(
    full_theirs: dict[Neuron, float], ours: Circuit, delta: torch.Tensor, k: int
) -> dict[str, Any]:
    """Overlap of the two top-k sets and, for every neuron in only one, both sides' abs(δ)
    beside the k-th abs(δ) of each side (a float tie sits within rounding of the boundary).

    Args:
        full_theirs: the reference's δ for every neuron it ranks (abs(δ) above its floor), in
            its rank order; its top-k is the first k (it sorts, then slices).
        ours: neurosteer's circuit of k neurons; delta: neurosteer's [n_layers, d_mlp] δ.
    """
    theirs = dict(list(full_theirs.items())[:k])
    our_set = set(zip(ours.layers.tolist(), ours.neurons.tolist(), strict=True))
    shared = [n for n in theirs if n in our_set]

    def row(n: Neuron, side: str) -> dict[str, Any]:
        return {
            "neuron": list(n),
            "only_in": side,
            "reference_abs_delta": abs(full_theirs.get(n, 0.0)),
            "neurosteer_abs_delta": float(delta[n].abs()),
        }

    only = [row(n, "reference") for n in theirs if n not in our_set]
    only += [row(n, "neurosteer") for n in sorted(our_set - set(theirs))]
    gaps = torch.tensor([abs(d - float(delta[n])) for n, d in full_theirs.items()])
    return {
        "k": k,
        "overlap": len(shared) / len(theirs),
        "shared": len(shared),
        "reference_boundary_abs_delta": abs(list(theirs.values())[-1]),
        "neurosteer_boundary_abs_delta": float(delta[ours.layers[-1], ours.neurons[-1]].abs()),
        "max_abs_delta_gap": float(gaps.max()) if len(gaps) else 0.0,
        "sign_agreement": _sign_agreement(theirs, delta),
        "differences": only,
        "reference_floor_cut": len(full_theirs) < k,
    }


def _sign_agreement(theirs: dict[Neuron, float], delta: torch.Tensor) -> float:
    """Share of the reference's top-k whose δ has the same sign on both sides."""
    same = sum((d > 0) == (float(delta[n]) > 0) for n, d in theirs.items())
    return same / len(theirs)


def explain(result: dict[str, Any], token_mismatches: int) -> str:
    """One line on why the sets differ (or that they do not): different token ids, float
    ties at the boundary (every differing neuron within a few times the largest δ gap of the
    boundary, and that gap small beside it), or neither."""
    diffs = result["differences"]
    if not diffs:
        return "identical sets"
    bound = max(result["reference_boundary_abs_delta"], result["neurosteer_boundary_abs_delta"])
    spread = max(
        max(abs(d["reference_abs_delta"] - bound), abs(d["neurosteer_abs_delta"] - bound))
        for d in diffs
    )
    gap = result["max_abs_delta_gap"]
    if token_mismatches:
        verdict = f"the sides fed {token_mismatches} prompts as different token ids"
    elif spread <= 4 * gap + 1e-7 and gap <= 0.01 * bound:
        verdict = "float ties at the boundary"
    else:
        verdict = "NOT explained by float ties"
    return (
        f"{len(diffs)} neurons in one set only, all within {spread:.2e} of the boundary "
        f"abs(δ) {bound:.4f}; the two sides' δ differ by at most {gap:.2e}: {verdict}"
    )


# --------------------------------------------------------------------------------------------
# Timing


class ForwardClock:
    """Seconds spent inside given modules' forward passes (a pre-hook starts a clock, a
    post-hook stops it), to split the reference's time into the model's forward passes, its
    full-vocabulary logits (`lm_head`) and the rest (its per-neuron Python ranking)."""

    def __init__(self, modules: dict[str, torch.nn.Module]) -> None:
        self.modules = modules
        self.seconds = dict.fromkeys(modules, 0.0)
        self._started: dict[str, float] = {}
        self._hooks = HookSet()

    def __enter__(self) -> ForwardClock:
        self._hooks = HookSet()
        for name, module in self.modules.items():
            self._hooks.pre(module, self._starter(name))
            self._hooks.post(module, self._stopper(name))
        return self

    def __exit__(self, *_: object) -> None:
        self._hooks.remove()

    def _starter(self, name: str) -> Callable[..., None]:
        def start(*_: object) -> None:
            self._started[name] = time.perf_counter()

        return start

    def _stopper(self, name: str) -> Callable[..., None]:
        def stop(*_: object) -> None:
            self.seconds[name] += time.perf_counter() - self._started.pop(name)

        return stop


def time_both(
    model: Any, reference: Callable[[], object], ours: Callable[[], object], repeats: int
) -> dict[str, float]:
    """Median seconds of each side, alternating within every repeat (`common.side_by_side`),
    and the reference's mean seconds per call inside the model's forward passes
    (`reference_in_forward`) and inside its full-vocabulary `lm_head` (`reference_in_lm_head`)."""
    clock = ForwardClock({"forward": model, "lm_head": model.get_output_embeddings()})

    def clocked() -> None:
        with clock:
            reference()

    times = side_by_side({"reference": clocked, "neurosteer": ours}, repeats)
    times.update({f"reference_in_{name}": s / repeats for name, s in clock.seconds.items()})
    return times


# --------------------------------------------------------------------------------------------
# The reference's JailbreakBench protocol on a subset


def jbb_protocol(
    args: argparse.Namespace,
    core: ModuleType,
    script: ModuleType,
    steerer: Any,
    ours: Circuit,
    theirs: dict[Neuron, float],
) -> dict[str, Any]:
    """Baseline and m = 0 answers to the first `args.jbb` JBB goals through the reference's
    `generate_response` / `steer_neurons` and through `neurosteer.generate` / `steer`, each
    judged by the reference's `detect_refusal`."""
    from neurosteer.evaluation import load_dataset_prompts

    goals = load_dataset_prompts(
        Path(args.data) / "jailbreakbench" / "harmful-behaviors.csv", column="Goal", limit=args.jbb
    )
    model, tokenizer, n = steerer.model, steerer.tokenizer, args.max_new_tokens
    circuit_dict = {
        core.NeuronIdx(layer=layer, position=-1, neuron=j): d for (layer, j), d in theirs.items()
    }
    started = time.perf_counter()
    ref_base = [script.generate_response(model, tokenizer, g, max_new_tokens=n) for g in goals]
    with core.steer_neurons(model, circuit_dict, multiplier=0.0):
        ref_abl = [script.generate_response(model, tokenizer, g, max_new_tokens=n) for g in goals]
    ref_s = time.perf_counter() - started
    started = time.perf_counter()
    options = {"max_new_tokens": n, "chat_template": steerer.is_instruct}
    our_base = neurosteer.generate(model, tokenizer, goals, **options)
    with neurosteer.steer(model, ours, 0.0):
        our_abl = neurosteer.generate(model, tokenizer, goals, **options)
    our_s = time.perf_counter() - started
    judge = script.detect_refusal
    rows = []
    for i, goal in enumerate(goals):
        rows.append(
            {
                "goal": goal[:80],
                "reference": [judge(ref_base[i]), judge(ref_abl[i])],
                "neurosteer": [judge(our_base[i]), judge(our_abl[i])],
                "same_text": [ref_base[i] == our_base[i], ref_abl[i] == our_abl[i]],
                "reference_ablated_start": ref_abl[i][:100],
                "neurosteer_ablated_start": our_abl[i][:100],
            }
        )
    return {
        "prompts": len(goals),
        "k": len(theirs),
        "max_new_tokens": n,
        "refused": {
            "reference": [
                sum(r["reference"][0] for r in rows),
                sum(r["reference"][1] for r in rows),
            ],
            "neurosteer": [
                sum(r["neurosteer"][0] for r in rows),
                sum(r["neurosteer"][1] for r in rows),
            ],
        },
        "verdicts_agree": sum(r["reference"] == r["neurosteer"] for r in rows),
        "texts_identical": [
            sum(r["same_text"][0] for r in rows),
            sum(r["same_text"][1] for r in rows),
        ],
        "reference_generation_s": round(ref_s, 1),
        "neurosteer_generation_s": round(our_s, 1),
        "rows": rows,
    }


# --------------------------------------------------------------------------------------------


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="a model folder, Hub id or .gguf file")
    parser.add_argument(
        "--reference", required=True, help="a snapshot folder of NousResearch/neural-steering"
    )
    parser.add_argument("--top-k", type=int, help="k (default: the reference script's --top-k)")
    parser.add_argument(
        "--fraction",
        type=float,
        help="k as a share of all MLP neurons; with --top-k too, both are compared (the "
        "timing is of --top-k's)",
    )
    parser.add_argument(
        "--data",
        default="../shared/data",
        help="the shared data folder (refusal-direction splits, JailbreakBench)",
    )
    parser.add_argument(
        "--n-prompts",
        type=int,
        default=0,
        help="discovery prompts per set (0: 32 refusal-direction train prompts, or all of the "
        "reference's with --reference-prompts)",
    )
    parser.add_argument(
        "--reference-prompts",
        action="store_true",
        help="discover on the reference script's own HARMFUL / BENIGN lists, read from the "
        "snapshot, instead of the refusal-direction train splits",
    )
    parser.add_argument("--dtype", default="float32", help="weights and activations")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed runs of each side; 0: no timing"
    )
    parser.add_argument(
        "--jbb", type=int, default=0, help="also run its JailbreakBench protocol on N goals"
    )
    parser.add_argument(
        "--max-new-tokens", type=int, default=64, help="answer length of the --jbb protocol"
    )
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    return parser.parse_args(argv)


def circuit_ks(args: argparse.Namespace, model: Any, script_file: Path) -> list[int]:
    """The ks to compare: --top-k, --fraction of all MLP neurons, or else the reference
    script's default; the first is the one timed."""
    ks = [] if args.top_k is None else [int(args.top_k)]
    if args.fraction is not None:
        n_neurons = neurosteer.resolve_layout(model).n_neurons
        ks.append(neurons_for_fraction(args.fraction, n_neurons))
    return ks or [script_top_k(script_file)]


def jbb_k(args: argparse.Namespace, script_file: Path) -> int:
    """The JailbreakBench protocol's circuit size: the reference script's own top-k, or
    --top-k when given (never --fraction's k, which is only compared)."""
    return script_top_k(script_file) if args.top_k is None else int(args.top_k)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    needed = [] if args.reference_prompts else ["refusal_direction/splits"]
    needed += ["jailbreakbench/harmful-behaviors.csv"] if args.jbb else []
    data_folder(args.data, *needed)  # before the model loads
    torch.set_num_threads(args.threads)
    folder = Path(args.reference)
    core, script = load_reference(folder)
    model, tokenizer = neurosteer.load_model(args.model, dtype=args.dtype)
    steerer = reference_steerer(core, model, tokenizer, Path(args.model).name)
    ks = circuit_ks(args, model, folder / SCRIPT)
    positive, negative = discovery_prompts(args, script)
    templated = steerer.is_instruct
    print(
        f"model {args.model} ({args.dtype}, {args.threads} threads), k = {ks}, "
        f"{len(positive)} + {len(negative)} prompts, chat template {templated}"
    )
    result: dict[str, Any] = {
        "model": Path(args.model).name,
        "dtype": args.dtype,
        "threads": args.threads,
        "prompts": [len(positive), len(negative)],
        "prompt_source": "reference HARMFUL/BENIGN"
        if args.reference_prompts
        else "refusal_direction train",
        "token_mismatches": token_mismatches(model, tokenizer, steerer, positive + negative),
    }
    # Warm-up runs, not timed. The reference's asks for every neuron it ranks: its whole δ
    # table (its top-k is the head of that same ranking, as it sorts first and slices after).
    full = reference_scores(reference_discover(steerer, positive, negative, 10**9))
    ours = ours_discover(model, tokenizer, positive, negative, ks[0], templated)
    delta = our_delta(ours)
    by_k = [compare(full, ours.reselect(top_k=k), delta, k) for k in ks]
    result.update(by_k[0], by_k=by_k)
    if args.repeats > 0:
        result.update(timing(args, steerer, full, positive, negative, ks[0]))
    report(result)
    if args.jbb:
        k = jbb_k(args, folder / SCRIPT)
        theirs = dict(list(full.items())[:k])
        result["jbb"] = jbb_protocol(args, core, script, steerer, ours.reselect(top_k=k), theirs)
        report_jbb(result["jbb"])
    if args.json:
        print(json.dumps(result))


def timing(
    args: argparse.Namespace,
    steerer: Any,
    full: dict[Neuron, float],
    positive: list[str],
    negative: list[str],
    k: int,
) -> dict[str, Any]:
    """Both discoveries timed side by side at k, with the reference's time split.

    Raises:
        SystemExit: the timed reference run's top-k is not the head of its full ranking.
    """
    model, tokenizer = steerer.model, steerer.tokenizer
    made: dict[str, Any] = {}
    times = time_both(
        model,
        lambda: made.update(reference=reference_discover(steerer, positive, negative, k)),
        lambda: ours_discover(model, tokenizer, positive, negative, k, steerer.is_instruct),
        args.repeats,
    )
    if list(reference_scores(made["reference"])) != list(full)[:k]:
        raise SystemExit("error: the reference's top-k is not the head of its full ranking")
    return {
        "repeats": args.repeats,
        "reference_s": round(times["reference"], 2),
        "neurosteer_s": round(times["neurosteer"], 2),
        "speedup": round(times["reference"] / times["neurosteer"], 2),
        "reference_in_forward_s": round(times["reference_in_forward"], 2),
        "reference_in_lm_head_s": round(times["reference_in_lm_head"], 2),
    }


def report(result: dict[str, Any]) -> None:
    """The human-readable summary."""
    print(f"token-id mismatches between the two sides: {result['token_mismatches']}")
    for one in result["by_k"]:
        print(
            f"k = {one['k']}: overlap {one['overlap']:.4f} ({one['shared']}/{one['k']}), "
            f"sign agreement {one['sign_agreement']:.4f}; "
            f"{explain(one, result['token_mismatches'])}"
        )
        for d in one["differences"][:10]:
            print(
                f"    only in {d['only_in']}: L{d['neuron'][0]} n{d['neuron'][1]} abs(δ) "
                f"reference {d['reference_abs_delta']:.6f}, ours {d['neurosteer_abs_delta']:.6f}"
            )
        if one["reference_floor_cut"]:
            print("  the reference ranks fewer neurons than k (its abs(δ) > 1e-6 floor)")
    if "speedup" in result:
        print(
            f"reference {result['reference_s']} s, neurosteer {result['neurosteer_s']} s "
            f"(median of {result['repeats']}): speedup {result['speedup']}x; of the "
            f"reference's time {result['reference_in_forward_s']} s is in forward passes, "
            f"{result['reference_in_lm_head_s']} s of it in lm_head"
        )


def report_jbb(jbb: dict[str, Any]) -> None:
    """The JailbreakBench comparison's summary."""
    r, o = jbb["refused"]["reference"], jbb["refused"]["neurosteer"]
    n = jbb["prompts"]
    print(
        f"JBB protocol, {n} goals, top {jbb['k']} neurons, {jbb['max_new_tokens']} tokens, "
        "its regex judge: "
        f"reference refused {r[0]}/{n} -> {r[1]}/{n} at m = 0; neurosteer {o[0]}/{n} -> "
        f"{o[1]}/{n}; verdict pairs agree on {jbb['verdicts_agree']}/{n}; identical texts "
        f"{jbb['texts_identical'][0]}/{n} baseline, {jbb['texts_identical'][1]}/{n} ablated"
    )


if __name__ == "__main__":
    run_main(main)
