"""Terminal output of the CLI (rich tables). Reads circuits and strings; never a model.

Tables go through `print_table`: on a terminal they fit its width; piped or redirected, rich
would squeeze them to 80 columns ("harm…" headers), so they are printed at full width instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from rich.console import Console, RenderableType
from rich.table import Table

if TYPE_CHECKING:  # only for annotations: the CLI imports this file at startup
    from neurosteer.methods.circuit import Circuit, ModelInfo

console = Console()

#: Width a table is measured at when nothing limits it (no terminal).
_UNLIMITED = 1_000_000


def print_table(table: RenderableType, *, to: Console | None = None) -> None:
    """Print `table` whole: at the terminal's width on a terminal, at its own full width
    (no wrapping, no "…") when the output is a pipe or a file."""
    out = to or console
    if out.is_terminal:
        out.print(table)
        return
    natural = out.measure(table, options=out.options.update_width(_UNLIMITED)).maximum
    Console(file=out.file, width=max(out.width, natural), color_system=None).print(table)


def print_circuit_summary(circuit: Circuit, *, top: int, settings: bool = False) -> None:
    """Where the circuit sits (neurons per layer, as bars) and its strongest neurons."""
    info = circuit.model
    console.print(
        f"[bold]{len(circuit)} neurons[/bold] of {_total(info)} "
        f"({100 * len(circuit) / int(info.valid_mask().sum()):.3g}% of all MLP neurons) "
        f"in {info.name_or_path or info.architecture} ({info.model_type}, {info.site_path})"
    )
    print_table(_layer_table(circuit))
    if circuit.model.neuron_blocks is not None:
        print_table(_expert_table(circuit))
    print_table(_top_table(circuit, top))
    if settings:
        _print_settings(circuit)


def _total(info: ModelInfo) -> str:
    """ "28 x 8960" for a dense model; "3840 in 6 layers (routed: 8 experts x 64, shared: 128)"
    for an MoE model ("dense: W" names the width of its layers without experts, if any)."""
    if info.neuron_blocks is None:
        return f"{info.n_layers} x {info.d_mlp}"
    blocks = [b for layer in info.neuron_blocks for b in layer]
    routed = {(int(b[2]), int(b[3])) for b in blocks if b[0] == "routed"}
    parts = [f"routed: {', '.join(f'{e} experts x {w}' for e, w in sorted(routed))}"]
    for kind in ("shared", "dense"):
        widths = sorted({int(b[2]) * int(b[3]) for b in blocks if b[0] == kind})
        if widths:
            parts.append(f"{kind}: {'/'.join(str(w) for w in widths)}")
    return f"{int(info.valid_mask().sum())} in {info.n_layers} layers ({', '.join(parts)})"


def _expert_table(circuit: Circuit) -> Table:
    """Neurons per (layer, expert) of an MoE circuit, most first ("S": shared experts)."""
    counts: dict[tuple[int, str], int] = {}
    for layer, neuron in zip(circuit.layers.tolist(), circuit.neurons.tolist(), strict=True):
        name = circuit.model.neuron_name(layer, neuron)
        where = (layer, name.split()[0] if " " in name else "dense")
        counts[where] = counts.get(where, 0) + 1
    table = Table(title="neurons per expert", show_edge=False)
    for name in ("layer", "expert", "neurons"):
        table.add_column(name, justify="right")
    for (layer, expert), n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        table.add_row(str(layer), expert, str(n))
    return table


def _layer_table(circuit: Circuit) -> Table:
    """Neurons per layer, with a bar each (the widest 30 characters)."""
    per_layer = circuit.neurons_per_layer()
    widest = max(per_layer.values(), default=1)
    layers = Table(title="neurons per layer", show_edge=False)
    layers.add_column("layer", justify="right")
    layers.add_column("neurons", justify="right")
    layers.add_column("")
    for layer, n in per_layer.items():
        layers.add_row(str(layer), str(n), "█" * max(1, round(30 * n / widest)))
    return layers


def _top_table(circuit: Circuit, top: int) -> Table:
    """The circuit's first `top` neurons (its order: by |score|) with their means."""
    relp = circuit.settings.method == "relp"  # scores are summed attributions, not means
    score = "attribution" if relp else "δ"
    best = Table(title=f"top {min(top, len(circuit))} neurons by |{score}|", show_edge=False)
    names = ("target", "contrast") if relp else ("mean +", "mean −")
    for name in ("rank", "layer", "neuron", score, *names):  # MoE neurons read "E5 n301"
        best.add_column(name, justify="right")
    for rank in range(min(top, len(circuit))):
        best.add_row(
            str(rank + 1),
            str(int(circuit.layers[rank])),
            circuit.model.neuron_name(int(circuit.layers[rank]), int(circuit.neurons[rank])),
            f"{float(circuit.delta[rank]):+.4g}",
            f"{float(circuit.positive_mean[rank]):.4g}",
            f"{float(circuit.negative_mean[rank]):.4g}",
        )
    return best


def _print_settings(circuit: Circuit) -> None:
    """How the circuit was made: its settings, search, prompt sets and hashes."""
    s, info, relp = circuit.settings, circuit.model, circuit.settings.method == "relp"
    console.print(
        f"method {s.method}, k={s.k} (top_k={s.top_k}, fraction={s.fraction:g}), "
        f"skip layers {list(s.skip_layers)}, universal filter "
        f"{'on' if s.universal_filter else 'off'} (removed {s.universal_removed}), "
        f"positive only {s.positive_only}, chat template {s.chat_template}, "
        f"{s.n_candidates} candidates"
    )
    if s.system is not None:
        console.print(f"system turn: {s.system!r}")
    if s.template_vars:
        console.print(f"template variables: {s.template_vars!r}")
    if s.attribution is not None:
        console.print(f"attribution: {s.attribution}")
    if s.multiplier is not None or s.score != "diff":
        stored = "none (0)" if s.multiplier is None else f"{s.multiplier:g}"
        console.print(f"stored multiplier {stored}, neuron score {s.score}")
    if circuit.search is not None:
        found = circuit.search
        console.print(
            f"from search {found.study}, trial {found.trial} ({found.rule}): held-out "
            f"refusal {found.refusal:.2f}, degenerate {found.degenerate:.2f}, KL "
            f"{found.kl:.3g} ({found.kl_measure})"
        )
    for name, p in circuit.prompts.items():
        what = name if relp else f"{name} prompts"  # RelP's: prompts, targets, contrasts
        console.print(f"{what}: {p.count} (sha256 {p.sha256[:12]})")
    console.print(
        f"config sha256 {info.config_hash[:12]}, neurosteer {circuit.library_version}, "
        f"full table {'kept' if circuit.table is not None else 'not kept'}"
    )


def print_side_by_side(
    prompts: Sequence[str], plain: Sequence[str], steered: Sequence[str], *, multiplier: float
) -> None:
    """One table row per prompt: the unsteered and the steered completion next to each other."""
    print_answers(prompts, [("unsteered", plain), (f"steered (m = {multiplier:g})", steered)])


def print_answers(prompts: Sequence[str], columns: Sequence[tuple[str, Sequence[str]]]) -> None:
    """One table row per prompt, then one column per (label, completions) of `columns`
    (e.g. the unsteered answers, then one column per multiplier)."""
    table = Table(show_lines=True)
    table.add_column("prompt", ratio=1)
    for label, _ in columns:
        table.add_column(label, ratio=2)
    for i, prompt in enumerate(prompts):
        table.add_row(prompt, *(answers[i] for _, answers in columns))
    console.print(table)
