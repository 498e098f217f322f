"""Run the benchmark suite and print one table of ratios (also written as JSON).

    python benchmarks/run.py                      # the CPU figures (about 15-25 minutes on 2 cores)
    python benchmarks/run.py --quick              # small shapes, a smoke run (about 2 minutes)
    python benchmarks/run.py --device cuda --shape llama-8b --dtype bfloat16   # on a GPU
    python benchmarks/run.py --model model.gguf   # a real model: discovery and generation only

Every figure is a ratio of two things measured side by side in the same process (memory: in
fresh processes), the median of alternating repeats: absolute times on a shared machine drift.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from datetime import date
from pathlib import Path
from typing import Any

import bench_discovery
import bench_generation
import torch

HERE = Path(__file__).parent


def memory(shape: str, counts: str, batch_size: int) -> dict[str, Any]:
    out = subprocess.run(
        [
            sys.executable,
            str(HERE / "bench_memory.py"),
            "--shape",
            shape,
            "--counts",
            counts,
            "--batch-size",
            str(batch_size),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return dict(json.loads(out.stdout))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Small shapes and counts.")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results.json")
    parser.add_argument(
        "--model",
        default=None,
        help="A real model (folder or .gguf file): discovery / forward and generation on it.",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    small = "tiny" if args.quick else "100m"
    rows: list[tuple[str, float, str, str]] = []
    results: dict[str, Any] = {
        "date": date.today().isoformat(),
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }

    shapes = [small] if args.quick else [small, "llama-1b"]
    if args.model:
        results["model"] = args.model
        shapes = [args.model]
    for shape in shapes:
        n = 16 if shape == "llama-1b" or args.model else 64
        repeats = 3 if shape == small else 2
        r = bench_discovery.run(
            shape, n, 8 if n == 16 else 16, repeats, False, model_path=args.model
        )
        label = r["shape"]  # the model file's name for --model
        results[f"discovery_vs_forward_{label}"] = r
        rows.append(
            (
                f"discovery / plain forward ({label}, {n} prompts)",
                r["discovery_over_forward"],
                "≤ 0.85",
                "ratio",
            )
        )

    if args.model:
        generation(bench_generation.run(small, [1, 8], 16, 2, args.model), results, rows)
        report(rows, results, args.out)
        return

    n_ref = 32 if args.quick else 200
    r = bench_discovery.run(small, n_ref, 16, 1, True)
    results["discovery_vs_reference"] = r
    rows.append(
        (
            f"reference / discovery ({small}, {n_ref} prompts)",
            r["speedup_over_reference"],
            "≥ 3",
            "speed-up",
        )
    )

    m = memory(small, "16,64" if args.quick else "64,512", 16)
    results["memory"] = m
    rows.append(
        (
            "discovery extra peak, most / fewest prompts",
            m["extra_peak_ratio_most_vs_fewest_prompts"],
            "≈ 1",
            "ratio",
        )
    )
    rows.append(
        (
            "discovery extra peak / (sums + one batch) x 1.5",
            m["extra_peak_over_bound"],
            "< 1",
            "ratio",
        )
    )

    g = bench_generation.run(small, [1, 8], 8 if args.quick else 32, 3 if args.quick else 5)
    generation(g, results, rows)
    report(rows, results, args.out)


def generation(
    g: dict[str, Any], results: dict[str, Any], rows: list[tuple[str, float, str, str]]
) -> None:
    results["generation"] = g
    for run in g["runs"]:
        rows.append(
            (
                f"hooked / plain per token, batch {run['batch_size']}",
                run["hooked_over_plain"],
                "≤ 1.03",
                "ratio",
            )
        )
        rows.append(
            (
                f"baked / plain per token, batch {run['batch_size']}",
                run["baked_over_plain"],
                "= 1",
                "ratio",
            )
        )


def report(rows: list[tuple[str, float, str, str]], results: dict[str, Any], out: str) -> None:
    width = max(len(r[0]) for r in rows)
    print(f"{'figure':<{width}}  {'value':>8}  target")
    for name, value, target, _ in rows:
        print(f"{name:<{width}}  {value:>8}  {target}")
    results["table"] = [{"figure": n, "value": v, "target": t} for n, v, t, _ in rows]
    Path(out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
