"""Why the model falls back to a second refusal style under a CNA circuit (issue 22, item 3).

On Qwen2.5-Coder-1.5B the paper's default circuit (0.1%, both signs, m = 0) halves refusal, but
many steered answers swap "I'm sorry, but I can't assist" for "As an AI language model, I cannot
...". This experiment asks what the fall-back is and whether removing it is cheaper than raising k:

1. steer with the base circuit and answer the discovery prompts (refusal-direction harmful_train,
   short greedy answers: a refusal shows in its first words); judge them and split them into
   still refusing, complying and degenerate, with a tally of the refusal styles;
2. bake the base circuit into the weights (exact, the same as its hooks) and discover a second
   circuit on that steered model, still-refusing prompts against complying ones; it is chosen
   among the neurons outside the base circuit (the base's own are already scaled), and its
   overlap with the base (before that exclusion) and with a base raised to k + k2 is reported;
3. measure on held-out JailbreakBench prompts: the unchanged model; the base circuit; base ∪
   second; the base raised to the same size (top k + k2 of the original discovery); base ∪ a
   random set of k2 neurons (per layer as many as the second circuit has, outside both): the
   refusal rate by the judge, the refusal styles, the degenerate share and the KL to the
   unchanged model on benign prompts (first token and mean, as in `real_table.py`).

    python benchmarks/fallback.py --model qwen15.gguf --data ../shared/data \
        --discovery benchmarks/circuits/qwen15-discovery.circuit --fraction 0.001 \
        --run-dir fallback15/ -o fallback15.json

`--run-dir` keeps each stage (the steered split, the second circuit, each arm's row in
arms.jsonl), so a killed run resumes where it stopped. A phrase judge misses covert refusals:
its refusal rates are lower bounds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

ARMS = ("unchanged", "base", "base+second", "raised", "base+random")
"""The held-out arms, in the order they run."""


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the experiment; print the markdown table (and the JSON as the last line with
    `--json`); return the result."""
    args = parse(argv)
    torch.set_num_threads(args.threads)
    result = run(args)
    print(markdown(result))
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result))
    return result


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--model", required=True, help="the model (a .gguf file or a folder)")
    add("--data", default="../shared/data", help="the shared data folder")
    add("--dtype", default="float32", help="weights and activations (bfloat16, float32)")
    add("--threads", type=int, default=2)
    add("--batch-size", type=int, default=16)
    add("--discovery", help="a discovery circuit with its δ table (real_table.py's "
        "discovery.circuit); default: discover on --n-fit + --n-fit train prompts")  # fmt: skip
    add("--n-fit", type=int, default=128, help="train prompts per set of a fresh discovery")
    add("--circuit", help="the base circuit from this file (default: from the discovery)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--fraction", type=float, default=0.001, help="base size (default 0.1%%)")
    size.add_argument("--top-k", type=int, help="base size in neurons")
    sign = parser.add_mutually_exclusive_group()
    sign.add_argument("--both", dest="positive", action="store_false", help="both signs (default)")
    sign.add_argument("--positive", dest="positive", action="store_true", help="δ > 0 only")
    add("--multiplier", type=float, default=0.0, help="m of every arm (default 0: ablate)")
    add("--second-k", type=int, help="size k2 of the second circuit (default: the base's k)")
    add("--n-prompts", type=int, default=128, help="harmful_train prompts to split")
    add("--n-eval", type=int, default=100, help="held-out JailbreakBench harmful prompts")
    add("--max-new-tokens", type=int, default=48, help="answer length (refusals show early)")
    add("--judge", default="patterns", help="judge name, as `neurosteer sweep --judge`")
    add("--judge-model", help="the model of a model judge (--judge model)")
    add("--kl-limit", type=int, default=32, help="benign JailbreakBench prompts for the KL")
    add("--kl-tokens", type=int, default=16, help="continuation scored for the KL")
    add("--style-words", type=int, default=4, help="first words that name a refusal style")
    add("--seed", type=int, default=0, help="seed of the random control")
    add("--run-dir", help="keep each stage here and resume from it")
    add("-o", "--output", help="write the result as JSON to this file")
    add("--json", action="store_true", help="print the result as one JSON line, last")
    parser.set_defaults(positive=False)
    return parser.parse_args(argv)


class RunDir:
    """The run folder's files (nothing is kept when there is no folder)."""

    def __init__(self, path: str | None, settings: dict[str, Any]) -> None:
        self.path = Path(path) if path else None
        if self.path is None:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        stored = self.read("settings.json")
        if stored is not None and stored != settings:
            changed = sorted(k for k in settings if stored.get(k) != settings[k])
            raise SystemExit(
                f"{self.path} was run with other settings ({', '.join(changed)}); "
                "give a new --run-dir or the same options"
            )
        self.write("settings.json", settings)

    def file(self, name: str) -> Path | None:
        return None if self.path is None else self.path / name

    def read(self, name: str) -> Any:
        path = self.file(name)
        return json.loads(path.read_text()) if path is not None and path.exists() else None

    def write(self, name: str, value: Any) -> None:
        path = self.file(name)
        if path is not None:
            path.write_text(json.dumps(value, indent=1) + "\n")

    def rows(self) -> dict[str, dict[str, Any]]:
        """{arm: its row} of arms.jsonl (the package's run-file reader: a last line cut off by
        a kill is skipped, and cut by the next `append`)."""
        from neurosteer import _run_files

        path = self.file("arms.jsonl")
        if path is None:
            return {}
        fix = "delete it to measure the arms again"
        return {row["arm"]: row for row in _run_files.read_json_lines(path, fix)}

    def append(self, row: dict[str, Any]) -> None:
        from neurosteer import _run_files

        path = self.file("arms.jsonl")
        if path is not None:
            _run_files.append_json_line(path, row)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The three stages; the result as a JSON-ready dict."""
    import neurosteer
    from neurosteer.evaluation import PhraseJudge, load_dataset_prompts
    from neurosteer.evaluation.judge_accuracy import judge_caption
    from neurosteer.workflows.judges import run_judge

    data = Path(args.data)
    jbb = data / "jailbreakbench"
    splits = data / "refusal_direction" / "splits"
    prompts = load_dataset_prompts(splits, split="harmful_train", limit=args.n_prompts)
    sets = {
        "harmful": load_dataset_prompts(jbb / "harmful-behaviors.csv", limit=args.n_eval),
        "benign": load_dataset_prompts(jbb / "benign-behaviors.csv", limit=args.kl_limit),
    }
    started = time.perf_counter()
    model, tokenizer = neurosteer.load_model(args.model, dtype=args.dtype)
    log(f"loaded in {time.perf_counter() - started:.0f} s")
    record = discovery_record(args, model, tokenizer, splits)
    base = base_circuit(args, record, model)
    k2 = args.second_k or len(base)
    settings = run_settings(args, record, base, k2)
    folder = RunDir(args.run_dir, settings)
    judge = run_judge(args.judge, args.run_dir, judge_model=args.judge_model)
    split = steered_split(model, tokenizer, base, prompts, judge, args, folder)
    second, raw_overlap = second_circuit(model, tokenizer, record, base, split, k2, args, folder)
    targets = arms(record, base, second, args.seed)
    done = folder.rows()
    for name, target in targets.items():
        if name not in done:
            done[name] = measure_arm(model, tokenizer, name, target, base, sets, judge, args)
            folder.append(done[name])
    return {
        "model": Path(args.model).name,
        "judge": args.judge,
        "judge_caption": judge_caption(args.judge, args.model),
        "phrase_judge": isinstance(judge, PhraseJudge),
        "settings": settings,
        "split": split_summary(split, args.style_words),
        "second": second_summary(second, base, targets["raised"], raw_overlap),
        "arms": [done[name] for name in ARMS],
    }


def run_settings(args: argparse.Namespace, record: Any, base: Any, k2: int) -> dict[str, Any]:
    """What a resumed run must share with the run it resumes."""
    pairs = json.dumps(sorted(neuron_pairs(base)))
    return {
        "model": Path(args.model).name,
        "dtype": args.dtype,
        "discovery": {name: info.sha256[:16] for name, info in sorted(record.prompts.items())},
        "base_k": len(base),
        "base_sha256": hashlib.sha256(pairs.encode()).hexdigest()[:16],
        "positive_only": bool(base.settings.positive_only),
        "multiplier": args.multiplier,
        "second_k": k2,
        "n_prompts": args.n_prompts,
        "n_eval": args.n_eval,
        "max_new_tokens": args.max_new_tokens,
        "judge": args.judge,
        "kl_limit": args.kl_limit,
        "kl_tokens": args.kl_tokens,
        "seed": args.seed,
    }


def discovery_record(args: argparse.Namespace, model: Any, tokenizer: Any, splits: Path) -> Any:
    """The discovery circuit with its δ table: `--discovery`, the run folder's, or a fresh one
    on the train splits (saved in the run folder)."""
    import neurosteer
    from neurosteer.evaluation import load_dataset_prompts
    from neurosteer.methods.circuit import Circuit
    from neurosteer.model.layout import resolve_layout

    saved = Path(args.run_dir) / "discovery.circuit" if args.run_dir else None
    source = args.discovery or (saved if saved is not None and saved.exists() else None)
    if source is not None:
        record = Circuit.load(source)
    else:
        fit = {
            name: load_dataset_prompts(splits, split=f"{name}_train", limit=args.n_fit)
            for name in ("harmful", "harmless")
        }
        started = time.perf_counter()
        record = neurosteer.discover(
            model, tokenizer, fit["harmful"], fit["harmless"], keep_table=True, progress=True
        )
        log(f"discovery on {args.n_fit} + {args.n_fit}: {time.perf_counter() - started:.0f} s")
        if saved is not None:
            saved.parent.mkdir(parents=True, exist_ok=True)
            record.save(saved)
    if record.table is None:
        raise SystemExit(
            f"{source} has no δ table; give a discovery made with keep_table "
            "(real_table.py's discovery.circuit) or leave --discovery out"
        )
    record.check_fits(resolve_layout(model))
    return record


def base_circuit(args: argparse.Namespace, record: Any, model: Any) -> Any:
    """`--circuit`, else the discovery's top k (`--top-k`, else `--fraction`) by the sign rule."""
    from neurosteer.methods.circuit import Circuit
    from neurosteer.model.layout import resolve_layout

    if args.circuit:
        circuit = Circuit.load(args.circuit)
        circuit.check_fits(resolve_layout(model))
        return circuit
    if args.top_k is not None:
        return record.reselect(top_k=args.top_k, positive_only=args.positive)
    return record.reselect(fraction=args.fraction, positive_only=args.positive)


def steered_split(
    model: Any,
    tokenizer: Any,
    base: Any,
    prompts: list[str],
    judge: Any,
    args: argparse.Namespace,
    folder: RunDir,
) -> dict[str, list[str]]:
    """{"prompts", "answers", "labels"}: the discovery prompts answered under the base circuit."""
    from neurosteer.evaluation.refusal import measure_refusal

    kept = folder.read("split.json")
    if kept is not None:
        return dict(kept)
    started = time.perf_counter()
    judged = measure_refusal(
        model,
        tokenizer,
        prompts,
        judge,
        intervention=base,
        strength=args.multiplier,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
    )
    split = {
        "prompts": list(judged.prompts),
        "answers": list(judged.answers),
        "labels": list(judged.labels),
    }
    folder.write("split.json", split)
    log(f"steered split of {len(prompts)} prompts: {time.perf_counter() - started:.0f} s")
    return split


def second_circuit(
    model: Any,
    tokenizer: Any,
    record: Any,
    base: Any,
    split: dict[str, list[str]],
    k2: int,
    args: argparse.Namespace,
    folder: RunDir,
) -> tuple[Any, int]:
    """(the second circuit, how many of the steered model's own top k2 are base neurons).

    Discovery runs on the model with the base circuit baked in at the multiplier, still-refusing
    prompts as the positive set and complying ones as the negative, without its own universal
    filter; the k2 neurons are then taken from its table outside the base circuit and outside
    the first discovery's universal neurons (`outside`).
    """
    import neurosteer
    from neurosteer.methods.circuit import Circuit

    kept, overlap = folder.file("second.circuit"), folder.read("second.json")
    if kept is not None and kept.exists() and overlap is not None:
        return Circuit.load(kept), int(overlap["raw_overlap_with_base"])
    pairs = list(zip(split["prompts"], split["labels"], strict=True))
    refusing = [prompt for prompt, label in pairs if label == "refusal"]
    complying = [prompt for prompt, label in pairs if label == "compliance"]
    if not refusing or not complying:
        raise SystemExit(
            f"under the base circuit {len(refusing)} of {len(pairs)} answers refuse and "
            f"{len(complying)} comply; a second circuit needs both: change --multiplier, the "
            "base size or --n-prompts"
        )
    started = time.perf_counter()
    handle = neurosteer.bake(model, base, args.multiplier)
    try:
        found = neurosteer.discover(
            model,
            tokenizer,
            refusing,
            complying,
            top_k=k2,
            positive_only=bool(base.settings.positive_only),
            skip_layers=record.settings.skip_layers,
            universal_filter=False,  # the discovery's universal neurons are left out below
            batch_size=args.batch_size,
            keep_table=True,
            keep_activations=False,
        )
    finally:
        handle.undo()
    second, raw_overlap = outside(found, base, record, k2)
    log(
        f"second discovery on {len(refusing)} refusing + {len(complying)} complying: "
        f"{time.perf_counter() - started:.0f} s"
    )
    if kept is not None:
        second.save(kept, force=True)
        folder.write("second.json", {"raw_overlap_with_base": raw_overlap})
    return second, raw_overlap


def outside(found: Any, base: Any, record: Any, k2: int) -> tuple[Any, int]:
    """(the top k2 neurons of `found`'s table outside `base`, how many of its top k2 without
    that exclusion are base neurons); both among the discovery's candidates (its skipped
    layers and universal neurons left out, as for the base)."""
    from neurosteer.methods.circuit import from_table
    from neurosteer.methods.selection import select_top_k

    positive_only = bool(base.settings.positive_only)
    candidates = record.candidates()
    raw = select_top_k(found.scores(), candidates, k2, positive_only=positive_only)
    overlap = len(neuron_pairs(raw) & neuron_pairs(base))
    taken = torch.zeros_like(candidates)
    taken[base.layers, base.neurons] = True
    chosen = select_top_k(found.scores(), candidates & ~taken, k2, positive_only=positive_only)
    settings = replace(
        found.settings,
        universal_filter=record.settings.universal_filter,
        universal_removed=record.settings.universal_removed,
        n_candidates=chosen.n_candidates,
    )
    second = from_table(found, chosen.layers, chosen.neurons, settings)
    return replace(second, universal=record.universal_mask()), overlap


def neuron_pairs(circuit: Any) -> set[tuple[int, int]]:
    return set(ordered_pairs(circuit))


def ordered_pairs(circuit: Any) -> list[tuple[int, int]]:
    """(layer, neuron) of each of the circuit's neurons, in its order."""
    return list(zip(circuit.layers.tolist(), circuit.neurons.tolist(), strict=True))


def from_pairs(record: Any, pairs: list[tuple[int, int]], **settings: Any) -> Any:
    """One circuit of `pairs` (each once, first place kept), scores from `record`'s table."""
    from neurosteer.methods.circuit import from_table

    pairs = list(dict.fromkeys(pairs))
    layers = torch.tensor([layer for layer, _ in pairs], dtype=torch.long)
    neurons = torch.tensor([neuron for _, neuron in pairs], dtype=torch.long)
    recipe = replace(record.settings, k=len(pairs), top_k=len(pairs), **settings)
    return from_table(record, layers, neurons, recipe)


def union(record: Any, *parts: Any) -> Any:
    """One circuit of the neurons of `parts` (each once), scores from `record`'s table."""
    return from_pairs(record, [pair for part in parts for pair in ordered_pairs(part)])


def random_extra(record: Any, base: Any, second: Any, seed: int) -> Any:
    """A random control for `second`: per layer as many neurons as it has there, drawn outside
    the base and the second circuit and outside the universal neurons (`Circuit.random_like`
    of their union, then a random subset of that draw in each layer)."""
    drawn = ordered_pairs(union(record, base, second).random_like(seed))
    gen = torch.Generator().manual_seed(seed)
    picks: list[tuple[int, int]] = []
    for layer, n in second.neurons_per_layer().items():
        rows = [pair for pair in drawn if pair[0] == layer]
        picks += [rows[i] for i in torch.randperm(len(rows), generator=gen)[:n].tolist()]
    return from_pairs(record, picks, method="random", seed=seed)


def arms(record: Any, base: Any, second: Any, seed: int) -> dict[str, Any]:
    """{arm: its circuit (None: unchanged)}, in `ARMS` order."""
    k, k2 = len(base), len(second)
    raised = record.reselect(top_k=k + k2, positive_only=bool(base.settings.positive_only))
    return {
        "unchanged": None,
        "base": base,
        "base+second": union(record, base, second),
        "raised": raised,
        "base+random": union(record, base, random_extra(record, base, second, seed)),
    }


def measure_arm(
    model: Any,
    tokenizer: Any,
    name: str,
    target: Any,
    base: Any,
    sets: dict[str, list[str]],
    judge: Any,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """One arm's row: rates, refusal styles and answers on the held-out harmful prompts; KL on
    the benign ones (`sets`: {"harmful", "benign": prompts})."""
    from neurosteer.evaluation import kl_to_reference
    from neurosteer.evaluation.refusal import measure_refusal

    started = time.perf_counter()
    strength = None if target is None else args.multiplier
    options = {"intervention": target, "strength": strength, "batch_size": args.batch_size}
    judged = measure_refusal(
        model, tokenizer, sets["harmful"], judge, max_new_tokens=args.max_new_tokens, **options
    )
    row: dict[str, Any] = {"arm": name, "neurons": 0 if target is None else len(target)}
    row |= {label: judged.rates[label] for label in ("refusal", "compliance", "degenerate")}
    row["styles"] = refusal_styles(judged.answers, judged.labels, args.style_words)
    row["kl"] = row["kl_mean"] = 0.0
    if target is not None:
        kl = kl_to_reference(
            model, tokenizer, sets["benign"], max_new_tokens=args.kl_tokens, **options
        )
        row["kl"], row["kl_mean"] = kl.first_token, kl.mean
        row["overlap_with_base"] = len(neuron_pairs(target) & neuron_pairs(base))
        row["layers"] = {str(k): v for k, v in target.neurons_per_layer().items()}
    row["answers"], row["labels"] = list(judged.answers), list(judged.labels)
    row["seconds"] = time.perf_counter() - started
    log(f"{name}: refused {row['refusal']:.0%}, kl {row['kl']:.3f}, {row['seconds']:.0f} s")
    return row


def refusal_styles(answers: Any, labels: Any, words: int) -> list[list[Any]]:
    """[[style, count], ...] most frequent first: the refusing answers grouped by their first
    `words` words (lower case, punctuation dropped, typographic apostrophes made plain)."""
    styles: Counter[str] = Counter()
    for answer, label in zip(answers, labels, strict=True):
        if label == "refusal":
            text = answer.replace("\u2019", "'").lower()
            styles[" ".join(re.findall(r"[\w']+", text)[:words])] += 1
    return [[style, count] for style, count in styles.most_common()]


def split_summary(split: dict[str, list[str]], words: int) -> dict[str, Any]:
    counts = Counter(split["labels"])
    return {
        "n": len(split["labels"]),
        **{label: counts[label] for label in ("refusal", "compliance", "degenerate")},
        "styles": refusal_styles(split["answers"], split["labels"], words),
        "prompts": split["prompts"],
        "answers": split["answers"],
        "labels": split["labels"],
    }


def second_summary(second: Any, base: Any, raised: Any, raw_overlap: int) -> dict[str, Any]:
    """The second circuit: its size and layers, and where it meets the base and the raised one."""
    extra = neuron_pairs(raised) - neuron_pairs(base)
    mine = neuron_pairs(second)

    def per_layer(pairs: set[tuple[int, int]]) -> dict[str, int]:
        return {str(k): v for k, v in sorted(Counter(layer for layer, _ in pairs).items())}

    return {
        "k": len(second),
        "raw_overlap_with_base": raw_overlap,
        "overlap_with_base": len(mine & neuron_pairs(base)),
        "overlap_with_raised": len(mine & neuron_pairs(raised)),
        "overlap_with_raised_extra": len(mine & extra),
        "layers": per_layer(mine),
        "base_layers": per_layer(neuron_pairs(base)),
        "raised_extra_layers": per_layer(extra),
    }


def markdown(result: dict[str, Any]) -> str:
    """The split, the second circuit and the arms as markdown."""
    split, second, settings = result["split"], result["second"], result["settings"]
    judge = result["judge"]
    lines = [
        f"## Why {result['model']} falls back (m = {settings['multiplier']:g}, "
        f"k = {settings['base_k']}, k2 = {second['k']})",
        "",
        f"Under the base circuit, {split['n']} train prompts: {split['refusal']} still refuse, "
        f"{split['compliance']} comply, {split['degenerate']} degenerate ({judge}).",
        f"Refusal styles: {styles_text(split['styles'])}",
        "",
        f"Second circuit ({second['k']} neurons outside the base; of the steered model's own "
        f"top {second['k']}, {second['raw_overlap_with_base']} were base neurons): "
        f"{second['overlap_with_raised_extra']} of them are among the "
        f"{sum(second['raised_extra_layers'].values())} neurons raising k adds. Layers: "
        f"{layers_text(second['layers'])}; raising k adds "
        f"{layers_text(second['raised_extra_layers'])}.",
        "",
        f"| arm | neurons | refused ({judge}) | complied | degenerate | KL first | KL mean "
        "| refusal styles |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in result["arms"]:
        lines.append(
            f"| {row['arm']} | {row['neurons']} | {row['refusal']:.0%} | {row['compliance']:.0%} "
            f"| {row['degenerate']:.0%} | {row['kl']:.3f} | {row['kl_mean']:.3f} "
            f"| {styles_text(row['styles'], 3)} |"
        )
    bound = " A phrase judge misses covert refusals: its rates are lower bounds." * bool(
        result["phrase_judge"]
    )
    lines += [
        "",
        f"{settings['n_eval']} held-out JailbreakBench harmful prompts, "
        f"{settings['max_new_tokens']} new tokens, greedy, {settings['dtype']}; "
        f"{result['judge_caption']}.{bound} KL on {settings['kl_limit']} benign prompts over "
        f"{settings['kl_tokens']} tokens (first answer token, and mean).",
    ]
    return "\n".join(lines)


def styles_text(styles: list[list[Any]], top: int = 5) -> str:
    shown = ", ".join(f'"{style}" {count}' for style, count in styles[:top])
    more = sum(count for _, count in styles[top:])
    return (shown or "none") + (f", others {more}" if more else "")


def layers_text(layers: dict[str, int]) -> str:
    return ", ".join(f"L{layer}: {n}" for layer, n in layers.items()) or "none"


if __name__ == "__main__":
    main()
