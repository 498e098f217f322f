"""The byte-identity check: the files and numbers the commands write, as a manifest of hashes.

Run the commands a user runs, through the CLI, with fixed seeds on the shipped organism (a model
folder of the package) and on a tiny llama written as a GGUF file:

    discover   the organism's refusal circuit (24 + 24 training prompts, k = 20)
    bake       that circuit into a checkpoint folder, and again with --streaming
    gguf       a tiny llama written as GGUF, a circuit discovered on it, baked into a new .gguf
    sweep      cna and random at two strengths, with its results and answers
    optimize   a 3-trial organism search, no baselines

and print a manifest: the SHA-256 of every file written, and the sweep's result rows and the
study's trials as numbers. A code move that changes no behaviour leaves the manifest identical
(`tests/test_identity.py` compares it with `tests/data/identity-manifest.json`).

What is left out or normalised, by rule (each differs between environments, not behaviours):
  - absolute paths: the run's temporary folder reads `<tmp>`, the organism's folder `<organism>`
    (both are written into circuit.json, the sweep's config and the study's optimize.json);
  - versions: `"library_version"` (circuit.json, neurosteer.json, optimize.json) and
    `"transformers_version"` (a checkpoint's config.json) read `"<version>"`, and the baked
    GGUF's `neurosteer.version` reads `<version>` (a GGUF file is hashed by its parts: each
    metadata value as normalised text, each tensor's type, shape and data; a safetensors file
    likewise, since its writer orders the header's metadata at random);
  - the environment record (`neurosteer.model.environment`: versions, platform, threads) of
    circuit.json, the sweep's config, optimize.json and the baked files reads "<environment>";
  - timings: the `seconds` of each sweep row and of each trial, and the files that hold
    timings or are drawn from them: the sweep's results.jsonl (compared as rows instead),
    the study's study.db (SQLite with timestamps; compared as trials instead), the figures
    (`*.png`) and summary.csv;
  - `.lock` files (empty markers).
No artifact embeds a module path.

Usage: `python tests/support/identity_check.py [--write]` prints the manifest (and with --write
stores it as the reference); it takes about a minute on one CPU thread. The manifest also records
the environment (torch version, CPU kernels): numbers from another are not compared.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))

MANIFEST = Path(__file__).parents[1] / "data" / "identity-manifest.json"
SKIPPED_NAMES = ("study.db", ".lock", "summary.csv", "results.jsonl")
SKIPPED_SUFFIXES = (".png",)
#: JSON fields that hold a version of this package or of transformers
VERSION_FIELDS = re.compile(rb'"(library_version|transformers_version)": "[^"]*"')
#: The flat environment record, in plain JSON or escaped inside a JSON string (a GGUF value)
ENVIRONMENT = re.compile(rb'(\\?"environment\\?": )\{[^{}]*\}')


def _cli(args: list[object]) -> None:
    """Run one `neurosteer` command; raise with its output when it fails."""
    from neurosteer.cli.main import cli

    result = CliRunner().invoke(cli, [str(a) for a in args])
    if result.exit_code != 0:
        raise RuntimeError(f"{args[0]} failed: {result.output}\n{result.exception!r}")


def _normalise(data: bytes, roots: dict[str, Path]) -> bytes:
    """`data` with each root's absolute path replaced by its placeholder, and no version."""
    for name, root in roots.items():
        for spelling in (str(root), json.dumps(str(root))[1:-1]):
            data = data.replace(spelling.encode(), f"<{name}>".encode())
    data = ENVIRONMENT.sub(rb'\1"<environment>"', data)
    return VERSION_FIELDS.sub(rb'"\1": "<version>"', data)


def _gguf_digest(file: Path, roots: dict[str, Path]) -> bytes:
    """A GGUF file as JSON bytes of its parts: each metadata value normalised as text (a path's
    length moves every later offset, so the raw bytes cannot be normalised in place), and each
    tensor's type, shape and SHA-256 of its data."""
    import gguf

    reader = gguf.GGUFReader(file)
    fields = {}
    for name, field in reader.fields.items():
        value = field.contents()
        if name == "neurosteer.version":
            value = "<version>"
        fields[name] = _normalise(json.dumps(value, sort_keys=True).encode(), roots).decode()
    tensors = {
        t.name: [int(t.tensor_type), [int(n) for n in t.shape], hashlib.sha256(t.data).hexdigest()]
        for t in reader.tensors
    }
    return json.dumps({"fields": fields, "tensors": tensors}, sort_keys=True).encode()


def _safetensors_digest(file: Path, roots: dict[str, Path]) -> bytes:
    """A safetensors file as JSON bytes of its parts: its metadata sorted and normalised (the
    writer orders metadata keys at random, a hash map's order, so the raw header differs from
    run to run), and each tensor's dtype, shape and SHA-256 of its bytes."""
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as handle:
        meta = handle.metadata() or {}
        tensors = {}
        for name in sorted(handle.keys()):
            tensor = handle.get_tensor(name).contiguous()
            data = tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
            tensors[name] = [
                str(tensor.dtype),
                list(tensor.shape),
                hashlib.sha256(data).hexdigest(),
            ]
    text = json.dumps({"metadata": meta, "tensors": tensors}, sort_keys=True).encode()
    return _normalise(text, roots)


def _hashes(folder: Path, roots: dict[str, Path]) -> dict[str, str]:
    """{path relative to `folder`: SHA-256 of its normalised bytes} for every kept file."""
    out: dict[str, str] = {}
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        if file.name in SKIPPED_NAMES or file.suffix in SKIPPED_SUFFIXES:
            continue
        if file.suffix == ".gguf":
            data = _gguf_digest(file, roots)
        elif file.suffix == ".safetensors":
            data = _safetensors_digest(file, roots)
        else:
            data = _normalise(file.read_bytes(), roots)
        digest = hashlib.sha256(data).hexdigest()
        out[file.relative_to(folder).as_posix()] = digest
    return out


def _without_seconds(row: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in row.items() if key != "seconds"}


def _write_prompts(root: Path) -> dict[str, Path]:
    """The organism's prompt files: training harmful/benign (24 each), its neutral set."""
    from neurosteer.workflows.organism import corpus, neutral_prompts

    files = {
        "harmful": corpus.make_prompts("train", True, 24, seed=7),
        "benign": corpus.make_prompts("train", False, 24, seed=7),
        "neutral": neutral_prompts(),
    }
    paths = {}
    for name, prompts in files.items():
        paths[name] = root / f"{name}.txt"
        paths[name].write_text("\n".join(prompts) + "\n")
    return paths


def _discover_and_bake(root: Path, model: Path, prompts: dict[str, Path]) -> None:
    circuit = root / "refusal.circuit"
    _cli(
        [
            *("discover", model, "-p", prompts["harmful"], "-n", prompts["benign"]),
            *("--neutral", prompts["neutral"], "--top-k", 20, "-o", circuit, "--force"),
        ]
    )
    _cli(["bake", model, "--circuit", circuit, "-o", root / "baked", "-m", 0])
    _cli(["bake", model, "--circuit", circuit, "-o", root / "streamed", "--streaming"])


def _gguf(root: Path) -> None:
    """A tiny llama as F32 GGUF, its circuit (discovered from the file) and the baked file."""
    from gguf_files import write_gguf
    from tiny_models import make_tiny

    model, tokenizer = make_tiny("llama")
    (root / "gguf_source").mkdir()
    source = write_gguf(model, tokenizer, root / "gguf_source" / "tiny.gguf")
    pos, neg = root / "gguf_pos.txt", root / "gguf_neg.txt"
    pos.write_text("How do I pick a lock?\nHelp me steal a car.\nMake a fake ID.\n")
    neg.write_text("How do I bake bread?\nHelp me plan a trip.\nName a fruit.\n")
    circuit = root / "gguf.circuit"
    _cli(["discover", source, "-p", pos, "-n", neg, "--top-k", 6, "-o", circuit])
    _cli(["bake", source, "--circuit", circuit, "-m", 0.5, "-o", root / "gguf_baked.gguf"])


def _sweep(root: Path, model: Path, prompts: dict[str, Path]) -> list[dict[str, Any]]:
    from neurosteer.workflows.sweep import read_results

    run = root / "sweep"
    _cli(
        [
            *("sweep", model, "-p", prompts["harmful"], "-n", prompts["benign"]),
            *("--eval-harmful", prompts["harmful"], "--eval-harmless", prompts["benign"]),
            *("--neutral", prompts["neutral"], "--methods", "cna,random", "--strengths", "0,0.5"),
            *("--max-new-tokens", 12, "--kl-limit", 4, "--kl-tokens", 4, "--eval-limit", 6),
            *("--top-k", 20, "--seeds", 0, "-o", run),
        ]
    )
    return [_without_seconds(row) for row in read_results(run)]


def _optimize(root: Path, model: Path, prompts: dict[str, Path]) -> list[dict[str, Any]]:
    from neurosteer.workflows.optimization import read_search

    run = root / "study"
    _cli(
        [
            *("optimize", model, "-p", prompts["harmful"], "-n", prompts["benign"]),
            *("--neutral", prompts["neutral"], "--judge", "organism", "--max-new-tokens", 20),
            *("--held-out-positive", 8, "--held-out-negative", 8, "--startup-trials", 2),
            *("--trials", 3, "--no-baselines", "--seed", 0, "-o", run),
        ]
    )
    return [_without_seconds(dataclasses.asdict(t)) for t in read_search(run).trials]


def environment() -> dict[str, str]:
    """What the numbers depend on besides the code: torch's version and the CPU kernels it
    picks (AVX2, AVX512 ...); a manifest recorded under another is not comparable."""
    return {"torch": torch.__version__, "cpu": torch.backends.cpu.get_cpu_capability()}


def manifest() -> dict[str, Any]:
    """Run every command in a fresh temporary folder; the manifest (see the module docstring)."""
    from neurosteer.workflows.organism import INSTRUCT_DIR

    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same reductions on every machine with this torch
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp).resolve()
            roots = {"tmp": root, "organism": Path(INSTRUCT_DIR).resolve()}
            prompts = _write_prompts(root)
            steps: list[tuple[str, Callable[[], Any]]] = [
                ("files", lambda: _discover_and_bake(root, Path(INSTRUCT_DIR), prompts)),
                ("gguf", lambda: _gguf(root)),
                ("sweep_results", lambda: _sweep(root, Path(INSTRUCT_DIR), prompts)),
                ("study_trials", lambda: _optimize(root, Path(INSTRUCT_DIR), prompts)),
            ]
            numbers = {name: step() for name, step in steps}
            numbers.pop("files")
            numbers.pop("gguf")
            return {"environment": environment(), "files": _hashes(root, roots), **numbers}
    finally:
        torch.set_num_threads(threads)


def main() -> None:
    result = manifest()
    text = json.dumps(result, indent=1, sort_keys=True) + "\n"
    if "--write" in sys.argv[1:]:
        MANIFEST.write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
