"""The headline: what a reader needs before any table, in plain words.

`facts` turns a run's config.json (and its circuit, when saved) into labelled lines: the model,
the circuit's size and layers, the baselines' layers and how they were chosen, the prompt sets
with their sizes, the judge and the answer settings. `cell` formats a summary cell for people:
rates as percentages, MMLU Δ in percentage points, KL with three significant digits.
"""

from __future__ import annotations

from typing import Any

from neurosteer.evaluation.judge_accuracy import accuracy_text
from neurosteer.methods.circuit import Circuit
from neurosteer.workflows.report.summary import Row
from neurosteer.workflows.sweep.config import METHODS

#: Summary columns that are shares of prompts or questions, shown as percentages.
RATE_COLUMNS = frozenset(
    f"{split}_{key}"
    for split in ("harmful", "harmless")
    for key in ("refusal", "compliance", "degenerate")
) | {"mmlu_acc"}


def percent(value: float) -> str:
    """0.333.. -> "33.3%", 0.95 -> "95%"."""
    return f"{round(100 * value, 1) + 0.0:g}%"  # + 0.0: never "-0%"


def cell(row: Row, column: str) -> str:
    """A summary cell for people: rates as percentages, empty for a missing value."""
    value = row.get(column)
    if value is None:
        return ""
    if column == "strength":
        return f"{value:g}"
    if column in RATE_COLUMNS:
        return percent(float(value))
    if column == "mmlu_delta":
        return f"{100 * value + 0.0:+.1f} pp"
    if column.startswith("kl_"):
        return f"{value:.3g}"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def method_label(method: str, config: dict[str, Any], n_seeds: int | None = None) -> str:
    """ "caa (layer 2)", "random (3 seeds)", or the method's name."""
    fitted = config.get("fitted") or {}
    layer = fitted.get(f"{method}_layer") if method in ("caa", "direction") else None
    if layer is not None:
        return f"{method} (layer {layer})"
    if n_seeds is not None and n_seeds > 1:
        return f"{method} ({n_seeds} seeds)"
    return "unsteered" if method == "baseline" else method


def facts(config: dict[str, Any], circuit: Circuit | None) -> list[tuple[str, str]]:
    """[(label, text)] for the report's first section; lines whose data is missing are left out."""
    settings: dict[str, Any] = config.get("settings") or {}
    fitted: dict[str, Any] = config.get("fitted") or {}
    prompts: dict[str, Any] = config.get("prompts") or {}
    model: dict[str, Any] = config.get("model") or {}
    lines: list[tuple[str, str]] = []
    if model.get("name_or_path"):
        digest = str(model.get("config_hash") or "")[:12]
        lines.append(
            ("Model", f"{model['name_or_path']}" + (f" (config sha256 {digest})" if digest else ""))
        )
    circuit_text = _circuit(fitted, circuit)
    if circuit_text:
        lines.append(("Circuit", circuit_text))
    baselines = [_layer(m, settings, fitted) for m in ("caa", "direction")]
    if any(baselines):
        lines.append(("Baseline layers", "; ".join(b for b in baselines if b)))
    sets = _prompt_sets(prompts, settings)
    if sets:
        lines.append(("Prompt sets", sets))
    if settings.get("judge"):
        judge = str(settings["judge"])
        labels = "labels: refusal, compliance, degenerate"
        accuracy = accuracy_text(judge, model.get("name_or_path") or None)
        lines.append(("Judge", f"{judge} ({labels}); {accuracy}"))
    if settings.get("max_new_tokens"):
        template = {True: "on", False: "off", None: "when the tokenizer has one"}.get(
            settings.get("chat_template"), "?"
        )
        lines.append(
            (
                "Answers",
                f"greedy, up to {settings['max_new_tokens']} new tokens; chat template {template}",
            )
        )
    grid = _grid(settings)
    if grid:
        lines.append(("Sweep", grid))
    return lines


def _circuit(fitted: dict[str, Any], circuit: Circuit | None) -> str:
    per_layer: dict[str, int] = {}
    if circuit is not None:
        per_layer = {str(k): v for k, v in circuit.neurons_per_layer().items()}
    elif isinstance(fitted.get("circuit_neurons_per_layer"), dict):
        per_layer = fitted["circuit_neurons_per_layer"]
    n = len(circuit) if circuit is not None else fitted.get("circuit_neurons")
    if n is None:
        return ""
    text = f"{n:,} neurons"
    if circuit is not None:
        total = circuit.model.n_layers * circuit.model.d_mlp
        text += f" ({100 * n / total:.2g}% of {total:,} MLP neurons)"
    if per_layer:
        ordered = sorted(per_layer.items(), key=lambda item: int(item[0]))
        text += f" in {len(ordered)} layer{'s' if len(ordered) != 1 else ''}: " + ", ".join(
            f"L{k} ({v})" for k, v in ordered
        )
    return text


def _layer(method: str, settings: dict[str, Any], fitted: dict[str, Any]) -> str:
    layer = fitted.get(f"{method}_layer")
    if layer is None:
        return ""
    name = "CAA" if method == "caa" else "direction"
    scan = (fitted.get("layer_scans") or {}).get(method)
    if settings.get("caa_layer") is not None:
        how = "given"
    elif scan:
        layers = ", ".join(sorted(scan.get("rates", {}), key=int))
        how = (
            f"scanned: most well-formed compliance among layers {layers} on "
            f"{scan.get('n_prompts', '?')} fitting prompts"
        )
    elif settings.get("layer_scan_prompts") == 0:
        how = "heuristic: largest relative difference"
    else:
        how = "chosen when the run began"
    return f"{name} at layer {layer} ({how})"


def _prompt_sets(prompts: dict[str, Any], settings: dict[str, Any]) -> str:
    def count(name: str) -> str:
        info = prompts.get(name) or {}
        return f"{info['count']:,}" if isinstance(info.get("count"), int) else ""

    parts = []
    if count("positive") or count("negative"):
        parts.append(f"fitting: {count('positive')} positive, {count('negative')} negative")
    if count("harmful") or count("harmless"):
        kl = settings.get("kl_limit")
        harmless = int(prompts.get("harmless", {}).get("count") or 0)
        kl_n = harmless if kl is None else min(int(kl), harmless)
        parts.append(
            f"evaluation: {count('harmful')} harmful, {count('harmless')} harmless "
            f"(KL on {kl_n:,} of the harmless)"
        )
    if count("neutral"):
        parts.append(f"universal-neuron filter: {count('neutral')} neutral")
    return "; ".join(parts)


def _grid(settings: dict[str, Any]) -> str:
    methods = [m for m in METHODS if m in (settings.get("methods") or [])]
    strengths = settings.get("strengths") or []
    if not methods or not strengths:
        return ""
    text = f"{', '.join(methods)} at s = {', '.join(f'{float(s):g}' for s in strengths)}"
    seeds = settings.get("random_seeds") or []
    if "random" in methods and seeds:
        text += f"; random = mean of {len(seeds)} seed{'s' if len(seeds) != 1 else ''}"
    if settings.get("mmlu"):
        text += f"; MMLU {settings.get('mmlu_shots', '?')}-shot"
    return text
