"""Stage 10 (reports), the pages: RUN/report.html (self-contained) and RUN/report.md.

Both hold the summary table, the figures, the strength mapping, the run's settings and a few
example answers per method at its strongest setting next to the unsteered answers. The HTML
embeds every figure as a base64 data URI and uses no external file, script or style sheet, so
it can be mailed or archived alone; the Markdown links the PNGs in RUN/figures/.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from neurosteer.report.plots import plots
from neurosteer.report.summary import COLUMNS, Row, summarise
from neurosteer.sweep.config import BASELINE, STRENGTH_MAPPING
from neurosteer.sweep.store import read_answers, read_config, read_results

HTML_FILE = "report.html"
MARKDOWN_FILE = "report.md"
N_EXAMPLES = 3
_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
    "table{border-collapse:collapse;font-size:13px;margin:1em 0}"
    "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right;vertical-align:top}"
    "td.text{text-align:left;white-space:pre-wrap;max-width:380px}"
    "img{max-width:100%;margin:0.5em 0}pre{background:#f6f6f6;padding:1em;overflow:auto}"
)


def write_report(run_dir: str | Path) -> tuple[Path, Path]:
    """Write RUN/summary.csv, RUN/figures/*.png, RUN/report.html and RUN/report.md.

    Returns:
        (html path, markdown path).

    Example:
        >>> html_path, md_path = write_report("runs/llama-1b")
    """
    folder = Path(run_dir)
    rows = summarise(folder)
    figures = plots(folder, rows)
    config = read_config(folder) or {}
    examples = _examples(folder)
    title = f"neurosteer sweep: {config.get('model', {}).get('name_or_path') or folder.name}"
    html_path, md_path = folder / HTML_FILE, folder / MARKDOWN_FILE
    html_path.write_text(_html(title, rows, figures, config, examples), encoding="utf-8")
    md_path.write_text(_markdown(title, rows, figures, config, examples, folder), encoding="utf-8")
    return html_path, md_path


def format_cell(row: Row, column: str) -> str:
    """A table cell: rates and scores with 3 decimals, empty for missing values."""
    value = row.get(column)
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:g}" if column == "strength" else f"{value:.3f}"
    return str(value)


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


def _html(
    title: str,
    rows: list[Row],
    figures: list[Path],
    config: dict[str, Any],
    examples: dict[str, list[Example]],
) -> str:
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        "<h2>Summary</h2><table><tr>",
        "".join(f"<th>{e(c)}</th>" for c in COLUMNS),
        "</tr>",
    ]
    for row in rows:
        parts.append("<tr>" + "".join(f"<td>{e(format_cell(row, c))}</td>" for c in COLUMNS))
        parts.append("</tr>")
    parts.append("</table><h2>Figures</h2>")
    for figure in figures:
        data = base64.b64encode(figure.read_bytes()).decode("ascii")
        parts.append(f'<img alt="{e(figure.stem)}" src="data:image/png;base64,{data}">')
    parts.append("<h2>Strength mapping</h2><ul>")
    parts += [f"<li>{e(line)}</li>" for line in _mapping_lines(config)]
    parts.append("</ul>")
    parts.append("<h2>Example answers (harmful prompts, strongest setting)</h2>")
    for label, items in examples.items():
        parts.append(f"<h3>{e(label)}</h3><table>")
        parts.append("<tr><th>prompt</th><th>unsteered</th><th>steered</th><th>label</th></tr>")
        for ex in items:
            cells = (ex["prompt"], ex["unsteered"], ex["steered"], ex["label"])
            parts.append(
                "<tr>" + "".join(f'<td class="text">{e(str(c))}</td>' for c in cells) + "</tr>"
            )
        parts.append("</table>")
    parts.append(f"<h2>Settings</h2><pre>{e(_settings_json(config))}</pre></body></html>")
    return "\n".join(parts) + "\n"


def _markdown(
    title: str,
    rows: list[Row],
    figures: list[Path],
    config: dict[str, Any],
    examples: dict[str, list[Example]],
    folder: Path,
) -> str:
    lines = [f"# {title}", "", "## Summary", ""]
    lines.append("| " + " | ".join(COLUMNS) + " |")
    lines.append("|" + "---|" * len(COLUMNS))
    for row in rows:
        lines.append("| " + " | ".join(format_cell(row, c) for c in COLUMNS) + " |")
    lines += ["", "## Figures", ""]
    for figure in figures:
        lines += [f"![{figure.stem}]({figure.relative_to(folder).as_posix()})", ""]
    lines += ["## Strength mapping", ""]
    lines += [f"- {line}" for line in _mapping_lines(config)]
    lines += ["", "## Example answers (harmful prompts, strongest setting)", ""]
    for label, items in examples.items():
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
    lines += ["## Settings", "", "```json", _settings_json(config), "```", ""]
    return "\n".join(lines)


def _md(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", "<br>")
