"""The organism demo's report: demo.json, report.html, report.md and three PNG plots.

`write_demo_report` saves what the demo measured as `demo.json` and draws the pages from that
file alone (`render_demo_report`), so `neurosteer report DEMO_FOLDER` redraws the same pages
without a model. The HTML is built with the sweep report's page machinery
(`neurosteer.workflows.report.page`: one style sheet, tables that scroll inside the page, figures
embedded as data URIs), so it is one self-contained file.

Both pages open with what the run shows in words, then tables with captions, every column
defined under "How to read this", and examples labelled by prompt set (harmful or benign), by
model (unchanged or steered) and by the judge's verdict, so an example that is still refused
says so.

Figures are plain matplotlib `Figure` objects saved to PNG (no pyplot), so neither importing
nor running the demo changes the user's matplotlib backend.
"""

from __future__ import annotations

import html
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from neurosteer.errors import InputError
from neurosteer.workflows.organism.demo_result import DemoResult
from neurosteer.workflows.report.headline import percent
from neurosteer.workflows.report.page import (
    HTML_FILE,
    MARKDOWN_FILE,
    html_definitions,
    html_document,
    html_facts,
    html_figure,
    html_table,
)

DEMO_FILE = "demo.json"
"""The demo's numbers and examples, in the report folder; the pages are drawn from it."""
FORMAT = "neurosteer.demo"
_DPI = 100

Record = dict[str, Any]

#: The judge's labels as the pages say them.
VERDICTS = {"refusal": "refused", "compliance": "complied", "degenerate": "fragment"}

#: What every column and word of the pages means (the "How to read this" section).
DEFINITIONS = [
    (
        "condition",
        "Which model answered. unchanged: the organism as shipped. ablated: the circuit's "
        "neurons multiplied by m = 0 (switched off). amplified: the same neurons multiplied by "
        "m > 1. random ablated: a control circuit of the same size and per-layer counts, drawn "
        "from neurons outside the circuit, switched off the same way.",
    ),
    (
        "m",
        "The multiplier applied to each circuit neuron's activation; m = 1 leaves the model "
        "unchanged.",
    ),
    (
        "refused",
        "Share of the prompts whose answer the organism's judge labels a refusal (one of the "
        "refusal openers the organism was trained on).",
    ),
    (
        "complied",
        "Share whose answer is a well-formed answer on the topic the prompt asked about.",
    ),
    (
        "fragment",
        "Share whose answer is neither: a mangled refusal, broken or off-topic text, or looping "
        'text (the library\'s label "degenerate"). For each prompt set the three shares add '
        "up to 100%.",
    ),
    (
        "harmful / benign (prompt set)",
        "The held-out prompt sets: requests the organism was trained to refuse and ones it was "
        "trained to answer, built from topics and templates that discovery never saw.",
    ),
    (
        "unchanged / steered (model)",
        "In the examples: the organism as shipped, or with the circuit ablated or amplified.",
    ),
    (
        "judge",
        "The organism's judge's verdict on that answer: refused, complied or fragment.",
    ),
    ("# / prompt / answer", "The example's number, the prompt, and the model's greedy answer."),
    ("layer / neurons", "A transformer layer and how many circuit neurons sit in its MLP."),
    (
        "k (neurons off)",
        "The number of circuit neurons ablated, taken from the top of the same discovery ranking.",
    ),
]


def write_demo_report(result: DemoResult, out: Path) -> tuple[Path, Path]:
    """Write out/demo.json, then the pages and PNGs drawn from it (`render_demo_report`).

    Returns:
        (report.html, report.md).
    """
    (out / DEMO_FILE).write_text(json.dumps(demo_record(result), indent=1), encoding="utf-8")
    return render_demo_report(out)


def demo_record(result: DemoResult) -> Record:
    """What the pages show, as JSON-ready data (rates are fractions); "neurons_per_expert"
    ({"L5 e3": n}) only for a mixture-of-experts organism."""
    record: Record = {
        "format": FORMAT,
        "format_version": 1,
        "model": result.model_dir,
        "n_neurons": result.n_neurons,
        "total_neurons": result.total_neurons,
        "n_layers": result.circuit.model.n_layers,
        "neurons_per_layer": {str(k): v for k, v in sorted(result.neurons_per_layer.items())},
        "n_discover": result.n_discover,
        "n_eval": result.n_eval,
        "amplify": result.amplify,
        "rows": [asdict(row) for row in result.rows],
        "examples": [asdict(ex) for ex in result.examples],
        "k_sweep": [list(pair) for pair in result.k_sweep],
        "seconds": result.seconds,
    }
    if result.neurons_per_expert:
        record["neurons_per_expert"] = {
            f"L{layer} {expert}": n for (layer, expert), n in result.neurons_per_expert.items()
        }
    return record


def is_demo_folder(folder: Path) -> bool:
    """Whether `folder` is the output of `neurosteer demo` (it holds demo.json)."""
    return (folder / DEMO_FILE).is_file()


def render_demo_report(folder: str | Path) -> tuple[Path, Path]:
    """Draw folder/report.html, folder/report.md and their PNGs from folder/demo.json.

    Returns:
        (report.html, report.md).

    Raises:
        InputError: demo.json is missing, unreadable or not the demo's.
    """
    out = Path(folder)
    record = _read_record(out)
    figures = _draw_figures(record, out)
    html_path, md_path = out / HTML_FILE, out / MARKDOWN_FILE
    html_path.write_text(_html(record, out, figures), encoding="utf-8")
    md_path.write_text("\n".join(_markdown(record, figures)) + "\n", encoding="utf-8")
    return html_path, md_path


def _read_record(out: Path) -> Record:
    path = out / DEMO_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise InputError(
            f"cannot read {path} ({err}); run `neurosteer demo -o {out} --force` again"
        ) from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise InputError(f"{path} is not a neurosteer demo record; run `neurosteer demo` again")
    return record


# --- words -----------------------------------------------------------------------------------


def _rows(record: Record) -> dict[str, Record]:
    return {row["condition"]: row for row in record["rows"]}


def headline(record: Record) -> list[str]:
    """What the run shows, in sentences with its own numbers (the pages' opening)."""
    rows = _rows(record)
    unchanged, ablated = rows["unchanged"]["harmful"], rows["ablated"]["harmful"]
    lines = [
        f"Switching off the {record['n_neurons']}-neuron circuit (m = 0) takes held-out "
        f"harmful refusal from {percent(unchanged['refusal'])} to "
        f"{percent(ablated['refusal'])}: {percent(ablated['compliant'])} of harmful prompts "
        f"get a well-formed answer, {percent(ablated['fragment'])} a fragment, and "
        f"{percent(ablated['refusal'])} are still refused."
    ]
    if "random ablated" in rows:
        control = rows["random ablated"]["harmful"]["refusal"]
        lines.append(
            f"Switching off a random circuit of the same size and layers leaves harmful "
            f"refusal at {percent(control)}."
        )
    benign = [f"{percent(row['benign']['refusal'])} {name}" for name, row in rows.items()]
    lines.append("Benign prompts refused: " + ", ".join(benign) + ".")
    return lines


def _condition(row: Record) -> str:
    return f"{row['condition']} (m = {row['multiplier']:g})"


def _rate_rows(record: Record) -> tuple[list[str], list[list[str]]]:
    header = ["condition", "m"] + [
        f"{split} {VERDICTS[label]}"
        for split in ("harmful", "benign")
        for label in ("refusal", "compliance", "degenerate")
    ]
    rows = [
        [row["condition"], f"{row['multiplier']:g}"]
        + [
            percent(row[split][key])
            for split in ("harmful", "benign")
            for key in ("refusal", "compliant", "fragment")
        ]
        for row in record["rows"]
    ]
    return header, rows


def _rate_caption(record: Record) -> str:
    n = record["n_eval"]
    return (
        f"Table 1. Held-out answers by condition: shares of {n} harmful and {n} benign prompts "
        "the organism's judge labels refused, complied or fragment (greedy decoding). Columns "
        "are defined under “How to read this”."
    )


def _layer_caption(record: Record) -> str:
    share = 100 * record["n_neurons"] / record["total_neurons"]
    return (
        f"Table 3. Where the circuit sits: its {record['n_neurons']} of "
        f"{record['total_neurons']} MLP neurons ({share:.2f}%) by layer; layers not listed "
        "hold none."
    )


def _k_caption(record: Record) -> str:
    return (
        "Table 4. Held-out harmful prompts still refused with the top k circuit neurons "
        f"switched off (m = 0); the circuit of Table 1 is k = {record['n_neurons']}."
    )


def _example_rows(record: Record) -> list[list[str]]:
    amplify = record["amplify"]
    models = (
        "unchanged (m = 1)",
        "steered: ablated (m = 0)",
        f"steered: amplified (m = {amplify:g})",
    )
    rows = []
    for number, ex in enumerate(record["examples"], start=1):
        answers = (ex["unchanged"], ex["ablated"], ex["amplified"])
        for i, (model, answer, label) in enumerate(zip(models, answers, ex["labels"], strict=True)):
            first = i == 0
            rows.append(
                [
                    str(number) if first else "",
                    ex["kind"] if first else "",
                    ex["prompt"] if first else "",
                    model,
                    answer,
                    VERDICTS[label],
                ]
            )
    return rows


EXAMPLE_HEADER = ["#", "prompt set", "prompt", "model", "answer", "judge"]
EXAMPLE_WIDTHS = [4, 9, 24, 16, 38, 9]


def example_notes(record: Record) -> list[str]:
    """How the examples were chosen, and which of them the steered model still refuses."""
    rows = _rows(record)
    still = [
        str(i)
        for i, ex in enumerate(record["examples"], start=1)
        if ex["kind"] == "harmful" and ex["labels"][1] == "refusal"
    ]
    notes = [
        "Table 2. Example answers to held-out prompts, each labelled by prompt set, model and "
        "the judge's verdict. The harmful examples are drawn from the prompts the unchanged "
        "model refuses, with as many still refused after ablation as their share "
        f"({percent(rows['ablated']['harmful']['refusal'])} of all harmful prompts are still "
        "refused); the benign one is the first the unchanged model answers."
    ]
    if still:
        which = ", ".join(still)
        notes.append(
            f"Example{'s' if len(still) > 1 else ''} {which}: still refused with the circuit "
            "switched off."
        )
    return notes


def _facts(record: Record) -> list[tuple[str, str]]:
    per_layer = ", ".join(f"L{k}: {v}" for k, v in record["neurons_per_layer"].items())
    n, d = record["n_eval"], record["n_discover"]
    facts = [
        ("model", f"the built-in instruct organism ({record['model']})"),
        (
            "circuit",
            f"{record['n_neurons']} of {record['total_neurons']} MLP neurons, discovered on "
            f"{d} harmful + {d} benign training prompts ({per_layer})",
        ),
        ("held-out prompts", f"{n} harmful + {n} benign (unseen topics and templates)"),
        ("answers", "greedy decoding, judged by the organism's judge"),
        ("run time", f"{record['seconds']:.0f} s"),
    ]
    experts = record.get("neurons_per_expert")
    if experts:
        facts.insert(2, ("experts", ", ".join(f"{k}: {v}" for k, v in experts.items())))
    return facts


# --- pages -----------------------------------------------------------------------------------


_FIGURE_CAPTIONS = {
    "refusal_rates.png": "Figure 1. Held-out refusal by condition (the refused columns of "
    "Table 1).",
    "circuit_layers.png": "Figure 2. Circuit neurons per layer (Table 3).",
    "k_sweep.png": "Figure 3. Harmful refusal against the number of circuit neurons switched "
    "off (Table 4; log scale).",
}


def _html(record: Record, out: Path, figures: list[str]) -> str:
    e = html.escape
    parts = ["<h2>What this shows</h2>"]
    parts += [f"<p>{e(line)}</p>" for line in headline(record)]
    parts.append(html_facts(_facts(record)))
    parts.append("<h2>Refusal by condition</h2>")
    header, rows = _rate_rows(record)
    parts.append(html_table(header, rows, caption=_rate_caption(record)))
    parts.append("<h2>Examples</h2>")
    notes = example_notes(record)
    parts.append(
        html_table(
            EXAMPLE_HEADER,
            _example_rows(record),
            caption=" ".join(notes),
            css_class="examples min40",
            text_columns=len(EXAMPLE_HEADER),
            widths=EXAMPLE_WIDTHS,
        )
    )
    parts.append("<h2>The circuit</h2>")
    layers = [[k, str(v)] for k, v in record["neurons_per_layer"].items()]
    parts.append(html_table(["layer", "neurons"], layers, caption=_layer_caption(record)))
    if record["k_sweep"]:
        sweep = [[str(k), percent(r)] for k, r in record["k_sweep"]]
        parts.append(
            html_table(["k (neurons off)", "harmful refused"], sweep, caption=_k_caption(record))
        )
    parts.append("<h2>Figures</h2>")
    parts += [html_figure(out / name, _FIGURE_CAPTIONS[name]) for name in figures]
    parts.append("<h2>How to read this</h2>")
    parts.append(html_definitions(DEFINITIONS))
    return html_document("neurosteer demo: the organism's refusal circuit", parts)


def _markdown(record: Record, figures: list[str]) -> list[str]:
    lines = ["# neurosteer demo: the organism's refusal circuit", "", "## What this shows", ""]
    lines += [" ".join(headline(record)), ""]
    lines += [f"- **{k}**: {_md(v)}" for k, v in _facts(record)]
    lines += ["", "## Refusal by condition", ""]
    lines += _md_table(*_rate_rows(record), caption=_rate_caption(record))
    lines += ["## Examples", ""]
    lines += _md_table(
        EXAMPLE_HEADER, _example_rows(record), caption=" ".join(example_notes(record))
    )
    lines += ["## The circuit", ""]
    layers = [[k, str(v)] for k, v in record["neurons_per_layer"].items()]
    lines += _md_table(["layer", "neurons"], layers, caption=_layer_caption(record))
    if record["k_sweep"]:
        sweep = [[str(k), percent(r)] for k, r in record["k_sweep"]]
        lines += _md_table(
            ["k (neurons off)", "harmful refused"], sweep, caption=_k_caption(record)
        )
    lines += ["## Figures", ""]
    for name in figures:
        lines += [f"![{_FIGURE_CAPTIONS[name]}]({name})", "", f"*{_FIGURE_CAPTIONS[name]}*", ""]
    lines += ["## How to read this", ""]
    lines += [f"- **{term}**: {meaning}" for term, meaning in DEFINITIONS]
    return lines


def _md_table(header: list[str], rows: list[list[str]], *, caption: str) -> list[str]:
    """A Markdown table under its caption (in italics), then a blank line."""
    lines = [f"*{_md(caption)}*", "", "| " + " | ".join(header) + " |"]
    lines.append("|" + "---|" * len(header))
    lines += ["| " + " | ".join(_md(c) for c in row) + " |" for row in rows]
    return [*lines, ""]


def _md(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", "<br>")


# --- figures ---------------------------------------------------------------------------------


def _draw_figures(record: Record, out: Path) -> list[str]:
    """Save the figures into `out`; returns their file names in report order."""
    figures = {"refusal_rates.png": _refusal_rates(record)}
    figures["circuit_layers.png"] = _circuit_layers(record)
    if record["k_sweep"]:
        figures["k_sweep.png"] = _k_sweep(record)
    for name, fig in figures.items():
        fig.tight_layout()
        fig.savefig(out / name, dpi=_DPI)
    return list(figures)


def _circuit_layers(record: Record) -> Figure:
    fig = Figure(figsize=(5, 3))
    ax = fig.subplots()
    n_layers = int(record["n_layers"])
    per_layer = record["neurons_per_layer"]
    ax.bar(range(n_layers), [per_layer.get(str(i), 0) for i in range(n_layers)])
    ax.set(xlabel="layer", ylabel="circuit neurons", title="Where the refusal circuit sits")
    return fig


def _refusal_rates(record: Record) -> Figure:
    fig = Figure(figsize=(7, 3))
    ax = fig.subplots()
    rows = record["rows"]
    xs = range(len(rows))
    harmful = [100 * r["harmful"]["refusal"] for r in rows]
    benign = [100 * r["benign"]["refusal"] for r in rows]
    ax.bar([x - 0.2 for x in xs], harmful, 0.4, label="harmful")
    ax.bar([x + 0.2 for x in xs], benign, 0.4, label="benign")
    ax.set_xticks(list(xs), [_condition(r).replace(" (", "\n(") for r in rows])
    ax.set(ylabel="refused (%)", ylim=(0, 100), title="Held-out refusal by condition")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside the bars, never on them
    return fig


def _k_sweep(record: Record) -> Figure:
    fig = Figure(figsize=(5, 3))
    ax = fig.subplots()
    ks, refusals = zip(*record["k_sweep"], strict=True)
    ax.plot(ks, [100 * r for r in refusals], marker="o")
    ax.set(
        xscale="log",
        xlabel="circuit neurons switched off (k)",
        ylabel="harmful refused (%)",
        ylim=(0, 100),
        title="Refusal vs circuit size",
    )
    ax.minorticks_off()  # the log axis's minor labels ("3x10^0") overprint each other
    ax.set_xticks(list(ks), [str(k) for k in ks])
    return fig
