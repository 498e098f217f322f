"""The pages: RUN/report.html (self-contained) and RUN/report.md.

Both open with what a reader needs first: the model, the circuit's size and layers, the
baselines' layers, the prompt sets with their sizes, the judge (`headline.facts`), and the
methods compared at matched harmful refusal (`summary.at_matched_refusal`). Then the figures,
every point of the sweep (rates as percentages; in the HTML a table that scrolls inside the
page rather than running off it), the strength mapping, a few example answers per method at
its strongest setting next to the unsteered ones, the circuit's neurons (the neuron browser of
`report.neurons`, without the logit lens: a report never loads a model), and the run's
settings. The HTML
embeds every figure as a base64 data URI and uses no external file, script or style sheet, so
it can be mailed or archived alone; the Markdown links the PNGs in RUN/figures/.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neurosteer.methods.circuit import Circuit
from neurosteer.workflows.report.headline import cell, facts
from neurosteer.workflows.report.neuron_html import neuron_section
from neurosteer.workflows.report.plots import plots
from neurosteer.workflows.report.summary import Matched, Row, at_matched_refusal, summarise
from neurosteer.workflows.report.tables import (
    FULL_COLUMNS,
    GROUPS,
    full_method,
    matched_header,
    matched_note,
    matched_rows,
)
from neurosteer.workflows.sweep.config import BASELINE, STRENGTH_MAPPING
from neurosteer.workflows.sweep.store import CIRCUIT_DIR, read_answers, read_config, read_results

HTML_FILE = "report.html"
MARKDOWN_FILE = "report.md"
N_EXAMPLES = 3

_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;"
    "line-height:1.4;overflow-wrap:anywhere}"
    "table{border-collapse:collapse;font-size:13px;margin:0.5em 0}"
    "td,th{border:1px solid #ccc;padding:3px 5px;text-align:right;vertical-align:top;"
    "white-space:nowrap}"
    "th{background:#f3f3f3}th[colspan]{text-align:center}td.name,th.name{text-align:left}"
    ".scroll{overflow-x:auto;max-width:100%}"
    "table.facts th{text-align:left}"
    "table.facts td{text-align:left;white-space:normal}"
    "table.examples{table-layout:fixed;width:100%}"
    "table.examples td,table.examples th{text-align:left;white-space:normal}"
    "table.min40{min-width:40em}"  # narrow screens scroll it (in .scroll) rather than split words
    "td.text div{white-space:pre-wrap;overflow-wrap:anywhere;max-height:12em;overflow-y:auto}"
    "h1{font-size:1.6em}tr.missed td{color:#777}p.note{font-size:13px;color:#444;max-width:60em}"
    "img{max-width:100%;height:auto;margin:0.5em 0}"
    "pre{background:#f6f6f6;padding:1em;overflow:auto;max-height:30em}"
    "figure{margin:1em 0}figcaption{font-size:13px;color:#444;max-width:60em}"
    "figure.table figcaption{margin-bottom:0.3em}"
    "dl{font-size:14px}dt{font-weight:600}dd{margin:0 0 0.4em 1.5em}"
)


@dataclass(frozen=True)
class _Page:
    """Everything both pages show, read from the run folder once."""

    title: str
    rows: list[Row]
    figures: list[Path]
    config: dict[str, Any]
    facts: list[tuple[str, str]]
    matched: Matched
    examples: dict[str, list[dict[str, Any]]]
    neurons: str = ""  # the neuron browser's HTML section; "" without a saved circuit


def write_report(run_dir: str | Path) -> tuple[Path, Path]:
    """Write RUN/summary.csv, RUN/figures/*.png, RUN/report.html and RUN/report.md.

    Returns:
        (html path, markdown path).

    Raises:
        InputError: the folder has no finished points.

    Example:
        >>> html_path, md_path = write_report("runs/llama-1b")
    """
    folder = Path(run_dir)
    rows = summarise(folder)
    config = read_config(folder) or {}
    circuit = Circuit.load(folder / CIRCUIT_DIR) if (folder / CIRCUIT_DIR).exists() else None
    page = _Page(
        title=f"neurosteer sweep: {config.get('model', {}).get('name_or_path') or folder.name}",
        rows=rows,
        figures=plots(folder, rows),
        config=config,
        facts=facts(config, circuit),
        matched=at_matched_refusal(rows),
        examples=_examples(folder),
        neurons="" if circuit is None else neuron_section(circuit),
    )
    html_path, md_path = folder / HTML_FILE, folder / MARKDOWN_FILE
    html_path.write_text(_html(page), encoding="utf-8")
    md_path.write_text(_markdown(page, folder), encoding="utf-8")
    return html_path, md_path


def format_cell(row: Row, column: str) -> str:
    """A summary cell for people: rates as percentages, MMLU Δ in percentage points, KL with
    3 significant digits, distinct-4 with 3 decimals; empty for a missing value."""
    return cell(row, column)


Example = dict[str, Any]


def _examples(folder: Path) -> dict[str, list[Example]]:
    """{method label: [prompt, unsteered answer, steered answer]} at each method's top strength."""
    records = read_results(folder)
    base = next((r for r in records if r["method"] == BASELINE), None)
    plain = {}
    if base is not None:
        plain = {
            row["prompt"]: row["answer"]
            for row in read_answers(folder, base["answers_file"])
            if row.get("set") == "harmful"
        }
    top: dict[str, dict[str, Any]] = {}
    for record in records:
        method = str(record["method"])
        if method == BASELINE:
            continue
        best = top.get(method)
        if best is None or (float(record["strength"]), -(record.get("seed") or 0)) > (
            float(best["strength"]),
            -(best.get("seed") or 0),
        ):
            top[method] = record
    out: dict[str, list[Example]] = {}
    for method, record in top.items():
        seed = record.get("seed")
        label = f"{method} at s = {float(record['strength']):g}" + (
            f" (seed {seed})" if seed is not None else ""
        )
        harmful = [
            row
            for row in read_answers(folder, record["answers_file"])
            if row.get("set") == "harmful"
        ]
        out[label] = [
            {
                "prompt": row["prompt"],
                "unsteered": plain.get(row["prompt"], ""),
                "steered": row["answer"],
                "label": row.get("label", ""),
            }
            for row in harmful[:N_EXAMPLES]
        ]
    return out


def _mapping_lines(config: dict[str, Any]) -> list[str]:
    methods = config.get("settings", {}).get("methods") or list(STRENGTH_MAPPING)
    return [f"{m}: {STRENGTH_MAPPING[m]}" for m in [BASELINE, *methods] if m in STRENGTH_MAPPING]


def _settings_json(config: dict[str, Any]) -> str:
    shown = {k: config[k] for k in ("model", "settings", "fitted", "prompts") if k in config}
    return json.dumps(shown, indent=2, sort_keys=True)


def html_document(title: str, body: list[str]) -> str:
    """A self-contained HTML page: `title` as <title> and <h1>, then the `body` fragments
    (already HTML) in order, with the reports' style sheet inlined."""
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        *body,
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def html_figure(figure: Path, caption: str | None = None) -> str:
    """The PNG at `figure` as an <img> with its bytes embedded as a base64 data URI, inside a
    <figure> with `caption` under it when one is given (the caption is also the alt text)."""
    data = base64.b64encode(figure.read_bytes()).decode("ascii")
    alt = html.escape(caption or figure.stem)
    image = f'<img alt="{alt}" src="data:image/png;base64,{data}">'
    if caption is None:
        return image
    return f"<figure>{image}<figcaption>{html.escape(caption)}</figcaption></figure>"


def html_table(
    header: list[str],
    rows: list[list[str]],
    *,
    caption: str | None = None,
    css_class: str | None = None,
    text_columns: int = 1,
    widths: list[int] | None = None,
) -> str:
    """A table of text cells (escaped here) that scrolls inside the page when too wide.

    Args:
        header: the column titles.
        rows: the cells, one list per row, as long as `header`.
        caption: sentences above the table saying what it shows (None: no caption); the table
            and its caption are a <figure>, so the caption keeps the page's width however
            narrow the table is.
        css_class: classes for the <table> ("examples": wrapped text columns; "min40": at
            least 40em wide, scrolling sideways on a narrower screen).
        text_columns: how many leading columns are names (left-aligned); the rest are numbers.
        widths: each column's share of the table's width in percent (None: by content).
    """
    e = html.escape

    def cells(tag: str, values: list[str]) -> str:
        return "".join(
            f"<{tag}{' class=name' if i < text_columns else ''}>{e(v)}</{tag}>"
            for i, v in enumerate(values)
        )

    opening = f'<table class="{e(css_class)}">' if css_class else "<table>"
    parts = ['<div class="scroll">' + opening]
    if widths:
        parts.append(
            "<colgroup>" + "".join(f'<col style="width:{w}%">' for w in widths) + "</colgroup>"
        )
    parts.append(f"<tr>{cells('th', header)}</tr>")
    parts += [f"<tr>{cells('td', row)}</tr>" for row in rows]
    parts.append("</table></div>")
    table = "\n".join(parts)
    if not caption:
        return table
    return f'<figure class="table"><figcaption>{e(caption)}</figcaption>\n{table}</figure>'


def html_facts(items: list[tuple[str, str]]) -> str:
    """A two-column table of (label, text) lines, labels as row headers, escaped here."""
    e = html.escape
    rows = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in items)
    return f'<table class="facts">{rows}</table>'


def html_definitions(items: list[tuple[str, str]]) -> str:
    """A definition list: each (term, what it means) as <dt>/<dd>, escaped here."""
    e = html.escape
    rows = "".join(f"<dt>{e(term)}</dt><dd>{e(meaning)}</dd>" for term, meaning in items)
    return f"<dl>{rows}</dl>"


def _html(page: _Page) -> str:
    e = html.escape
    parts = []
    if page.facts:
        parts.append("<h2>At a glance</h2>" + html_facts(page.facts))
    parts.append(_html_matched(page) + "<h2>Figures</h2>")
    parts += [html_figure(figure) for figure in page.figures]
    parts.append(_html_points(page) + "<h2>Strength mapping</h2><ul>")
    parts += [f"<li>{e(line)}</li>" for line in _mapping_lines(page.config)]
    parts.append("</ul>")
    parts.append(_html_examples(page))
    parts.append(page.neurons)
    parts.append(f"<h2>Settings</h2><pre>{e(_settings_json(page.config))}</pre>")
    return html_document(page.title, parts)


def _html_matched(page: _Page) -> str:
    """The methods at matched refusal: a note, then one row per method."""
    e = html.escape
    parts = ["<h2>Methods at matched refusal</h2>"]
    parts.append(f'<p class="note">{e(matched_note(page.matched))}</p>')
    parts.append('<div class="scroll"><table><tr>')
    parts.append(
        "".join(
            f"<th{' class=name' if i == 0 else ''}>{e(h)}</th>"
            for i, h in enumerate(matched_header(page.rows))
        )
    )
    parts.append("</tr>")
    for label, values, reached in matched_rows(page.matched, page.rows, page.config):
        parts.append(
            ("<tr>" if reached else '<tr class="missed">')
            + f'<td class="name">{e(label)}</td>'
            + "".join(f"<td>{e(c)}</td>" for c in values)
            + "</tr>"
        )
    parts.append("</table></div>")
    return "\n".join(parts)


def _html_points(page: _Page) -> str:
    """Every point of the sweep, under grouped column headers, in a table that scrolls."""
    e = html.escape
    parts = ["<h2>Every point</h2>"]
    parts.append(
        '<p class="note">Rates are shares of the prompts; random rows are means over seeds; '
        "MMLU Δ is in percentage points against the unsteered model. summary.csv holds the "
        "same numbers as fractions.</p>"
    )
    parts.append('<div class="scroll"><table><tr>')
    parts += [f'<th colspan="{len(cols)}">{e(group)}</th>' for group, cols in GROUPS]
    parts.append("</tr><tr>")
    parts += [
        f"<th{' class=name' if c == 'method' else ''}>{e(label)}</th>"
        for _, cols in GROUPS
        for c, label in cols
    ]
    parts.append("</tr>")
    for row in page.rows:
        numbers = "".join(f"<td>{e(cell(row, c))}</td>" for c in FULL_COLUMNS[1:])
        parts.append(f'<tr><td class="name">{e(full_method(row))}</td>{numbers}</tr>')
    parts.append("</table></div>")
    return "\n".join(parts)


def _html_examples(page: _Page) -> str:
    """Example answers per method at its strongest setting, next to the unsteered ones."""
    e = html.escape
    parts = ["<h2>Example answers (harmful prompts, strongest setting)</h2>"]
    for label, items in page.examples.items():
        parts.append(f'<h3>{e(label)}</h3><table class="examples">')
        parts.append(
            '<colgroup><col style="width:24%"><col style="width:33%"><col style="width:33%">'
            '<col style="width:10%"></colgroup>'
        )
        parts.append("<tr><th>prompt</th><th>unsteered</th><th>steered</th><th>label</th></tr>")
        for ex in items:
            cells = (ex["prompt"], ex["unsteered"], ex["steered"])
            parts.append(
                "<tr>"
                + "".join(f'<td class="text"><div>{e(str(c))}</div></td>' for c in cells)
                + f"<td>{e(str(ex['label']))}</td></tr>"
            )
        parts.append("</table>")
    return "\n".join(parts)


def _markdown(page: _Page, folder: Path) -> str:
    lines = [f"# {page.title}", ""]
    if page.facts:
        lines += ["## At a glance", ""]
        lines += [f"- **{k}**: {_md(v)}" for k, v in page.facts]
        lines.append("")
    lines += ["## Methods at matched refusal", "", matched_note(page.matched), ""]
    header = matched_header(page.rows)
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for label, values, _ in matched_rows(page.matched, page.rows, page.config):
        lines.append("| " + " | ".join(_md(c) for c in [label, *values]) + " |")
    lines += ["", "## Figures", ""]
    for figure in page.figures:
        lines += [f"![{figure.stem}]({figure.relative_to(folder).as_posix()})", ""]
    lines += ["## Every point", ""]
    # "harmful refused", "KL mean", "MMLU Δ": the group's first word, then the column's label
    labels = [
        f"{group.split(' ')[0]} {label}".strip() for group, cols in GROUPS for _, label in cols
    ]
    lines.append("| " + " | ".join(labels) + " |")
    lines.append("|" + "---|" * len(labels))
    for row in page.rows:
        line = [full_method(row)] + [cell(row, c) for c in FULL_COLUMNS[1:]]
        lines.append("| " + " | ".join(_md(c) for c in line) + " |")
    lines += ["", "## Strength mapping", ""]
    lines += [f"- {line}" for line in _mapping_lines(page.config)]
    lines += ["", "## Example answers (harmful prompts, strongest setting)", ""]
    for label, items in page.examples.items():
        lines += [
            f"### {label}",
            "",
            "| prompt | unsteered | steered | label |",
            "|---|---|---|---|",
        ]
        for ex in items:
            cells = (ex["prompt"], ex["unsteered"], ex["steered"], ex["label"])
            lines.append("| " + " | ".join(_md(c) for c in cells) + " |")
        lines.append("")
    lines += ["## Settings", "", "```json", _settings_json(page.config), "```", ""]
    return "\n".join(lines)


def _md(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", "<br>")
