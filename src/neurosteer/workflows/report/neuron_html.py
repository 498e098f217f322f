"""The neuron browser's HTML: its rows, the activation histograms as inline SVG, and the
style and script that sort and filter the table (inline, no network). Below 900 px each row
becomes a card whose cells carry their column's name.
"""

from __future__ import annotations

import html

from neurosteer.methods.circuit import Circuit
from neurosteer.methods.logit_lens import NeuronLens
from neurosteer.workflows.report.neurons import Example, Histogram, NeuronEntry, neuron_entries

#: (key, title, numeric): the table's columns; "lens" columns only with a model.
COLUMNS: tuple[tuple[str, str, bool], ...] = (
    ("rank", "#", True),
    ("layer", "layer", True),
    ("neuron", "neuron", True),
    ("delta", "δ", True),
    ("standardized", "standardized", True),
    ("sign", "sign", False),
    ("universal", "universal", False),
    ("most", "activates most", False),
    ("least", "activates least", False),
    ("promotes", "promotes", False),
    ("suppresses", "suppresses", False),
    ("histogram", "activations", False),
)
_LENS = ("promotes", "suppresses")
_COLOURS = {"positive": "#c0392b", "negative": "#2e6fb7"}
_SVG_W, _SVG_H = 132, 40

_CSS = """<style>
.nb-controls{display:flex;flex-wrap:wrap;gap:0.5em 1em;align-items:center;font-size:14px;
  margin:0.5em 0}
.nb-controls input{min-width:0;width:16em;max-width:100%}
table.nb{font-size:13px}
table.nb th{cursor:pointer;user-select:none}
table.nb th[aria-sort=ascending]::after{content:" \\25B2"}
table.nb th[aria-sort=descending]::after{content:" \\25BC"}
table.nb td.t{text-align:left;white-space:normal;min-width:11em;max-width:20em}
table.nb td.t ol{margin:0;padding-left:1.2em}
table.nb code{background:#f3f3f3;padding:0 2px;white-space:pre-wrap;overflow-wrap:anywhere}
table.nb .set{font-size:11px;color:#fff;border-radius:3px;padding:0 3px;margin-right:3px}
table.nb .set.positive{background:#c0392b}table.nb .set.negative{background:#2e6fb7}
table.nb .v{color:#555}
@media (max-width:900px){
  table.nb,table.nb tbody,table.nb tr,table.nb td{display:block;width:auto}
  table.nb thead{display:none}
  table.nb tr{border:1px solid #ccc;margin:0 0 0.8em;padding:0.3em}
  table.nb td{border:none;text-align:left;white-space:normal;max-width:none;padding:2px 4px}
  table.nb td.t{max-width:none;min-width:0}
  table.nb td.n{display:inline-block;margin-right:0.6em}
  table.nb td::before{content:attr(data-label) ": ";font-weight:600}
}
</style>"""

_SCRIPT = """<script>
(() => {
  const table = document.querySelector("table.nb");
  if (!table) return;
  const body = table.tBodies[0];
  const heads = [...table.querySelectorAll("tr.head th")];
  const text = document.getElementById("nb-filter");
  const sign = document.getElementById("nb-sign");
  const order = document.getElementById("nb-order");
  const shown = document.getElementById("nb-shown");
  const key = (row, i, numeric) => {
    const v = row.cells[i].dataset.value;
    return numeric ? (v === "" ? -Infinity : parseFloat(v)) : (v || "").toLowerCase();
  };
  const sortBy = (i, descending) => {
    const numeric = heads[i].dataset.numeric === "1";
    const rows = [...body.rows];
    rows.sort((a, b) => {
      const x = key(a, i, numeric), y = key(b, i, numeric);
      return (x < y ? -1 : x > y ? 1 : 0) * (descending ? -1 : 1);
    });
    rows.forEach((r) => body.appendChild(r));
    heads.forEach((h, j) => h.setAttribute("aria-sort",
      j === i ? (descending ? "descending" : "ascending") : "none"));
    order.value = i + (descending ? ":d" : ":a");
  };
  heads.forEach((h, i) => h.addEventListener("click", () =>
    sortBy(i, h.getAttribute("aria-sort") !== "descending")));
  order.addEventListener("change", () => {
    const [i, d] = order.value.split(":");
    sortBy(parseInt(i, 10), d === "d");
  });
  const filter = () => {
    const q = text.value.trim().toLowerCase();
    let n = 0;
    for (const row of body.rows) {
      const ok = (!q || row.textContent.toLowerCase().includes(q)) &&
        (sign.value === "all" || row.dataset.sign === sign.value);
      row.hidden = !ok;
      n += ok ? 1 : 0;
    }
    shown.textContent = n + " of " + body.rows.length + " neurons shown";
  };
  text.addEventListener("input", filter);
  sign.addEventListener("change", filter);
  filter();
})();
</script>"""


def _columns(with_lens: bool) -> list[tuple[str, str, bool]]:
    return [c for c in COLUMNS if with_lens or c[0] not in _LENS]


def section_html(rows: list[str], *, with_lens: bool) -> str:
    """The browser's section: an <h2>, notes, controls, the table of `rows` (from
    `entry_row`, each with its columns), style and script."""
    e = html.escape
    columns = _columns(with_lens)
    head = "".join(
        f'<th data-numeric="{int(numeric)}" aria-sort="{"ascending" if i == 0 else "none"}">'
        f"{e(title)}</th>"
        for i, (_, title, numeric) in enumerate(columns)
    )
    options = "".join(
        f'<option value="{i}:{d}"{" selected" if (i, d) == (0, "a") else ""}>'
        f"{e(title)} {word}</option>"
        for i, (_, title, numeric) in enumerate(columns)
        if key_sortable(columns[i][0])
        for d, word in (("d", "high to low"), ("a", "low to high"))
        if numeric or d == "a"
    )
    controls = (
        '<div class="nb-controls">'
        '<label>Filter <input id="nb-filter" type="search" placeholder="layer, prompt, token">'
        '</label><label>Sign <select id="nb-sign"><option value="all">all</option>'
        '<option value="+">+ (more active on positive)</option>'
        '<option value="-">− (more active on negative)</option></select></label>'
        f'<label>Sort <select id="nb-order">{options}</select></label>'
        '<span id="nb-shown"></span></div>'
    )
    note = (
        '<p class="note">One row per circuit neuron, in rank order. δ = mean activation on the '
        "positive prompts − on the negative ones, at the last prompt token; standardized = δ over "
        "the pooled standard deviation. Prompts that activate it most and least come from both "
        "discovery sets (red: positive, blue: negative). "
        + (
            "Promotes / suppresses: the tokens its output column raises and lowers through the "
            "final norm's weight and the unembedding (logit lens, logit per unit of activation; "
            "a neuron with δ < 0 raises its suppressed tokens on the positive prompts). "
            if with_lens
            else ""
        )
        + "Click a column title (or use Sort) to sort.</p>"
    )
    table = (
        f'<div class="scroll"><table class="nb"><thead><tr class="head">{head}</tr></thead>'
        "<tbody>" + "\n".join(rows) + "</tbody></table></div>"
    )
    return "\n".join(["<h2>Neurons</h2>", _CSS, note, controls, table, _SCRIPT])


def key_sortable(key: str) -> bool:
    """Whether the Sort menu offers this column (not the prompt and histogram columns)."""
    return key not in ("most", "least", "histogram", "promotes", "suppresses")


def entry_row(entry: NeuronEntry) -> str:
    """One table row: every column's cell with its sort value and label."""
    with_lens = entry.lens is not None
    sign = "+" if entry.delta >= 0 else "-"
    cells: dict[str, tuple[str, str]] = {  # key: (sort value, HTML content)
        "rank": (str(entry.rank), str(entry.rank)),
        "layer": (str(entry.layer), str(entry.layer)),
        "neuron": (str(entry.neuron), str(entry.neuron)),
        "delta": (repr(entry.delta), f"{entry.delta:+.4g}"),
        "standardized": _number(entry.standardized),
        "sign": (sign, "+" if sign == "+" else "−"),
        "universal": _flag(entry.universal),
        "most": ("", _examples(entry.most)),
        "least": ("", _examples(entry.least)),
        "histogram": ("", "" if entry.histogram is None else histogram_svg(entry.histogram)),
    }
    if entry.lens is not None:
        cells["promotes"] = ("", _tokens(entry.lens.promoted))
        cells["suppresses"] = ("", _tokens(entry.lens.suppressed))
    parts = []
    for key, title, numeric in _columns(with_lens):
        value, content = cells.get(key, ("", ""))
        cls = ' class="n"' if numeric or key in ("sign", "universal") else ' class="t"'
        cls = "" if key == "histogram" else cls
        parts.append(
            f'<td{cls} data-label="{html.escape(title)}" data-value="{html.escape(value)}">'
            f"{content}</td>"
        )
    return f'<tr data-sign="{sign}">' + "".join(parts) + "</tr>"


def _number(value: float | None) -> tuple[str, str]:
    return ("", "") if value is None else (repr(value), f"{value:+.3g}")


def _flag(value: bool | None) -> tuple[str, str]:
    text = "unknown" if value is None else ("yes" if value else "no")
    return text, text


def _examples(examples: tuple[Example, ...]) -> str:
    """An ordered list of (set badge, activation, prompt) items."""
    if not examples:
        return ""
    items = "".join(
        f'<li><span class="set {name}" title="{name} prompt">{"+" if name == "positive" else "−"}'
        f'</span><span class="v">{value:+.3g}</span> {html.escape(_short(prompt))}</li>'
        for name, value, prompt in examples
    )
    return f"<ol>{items}</ol>"


def _short(text: str, limit: int = 90) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _tokens(tokens: tuple[tuple[str, float], ...]) -> str:
    """Tokens as <code> with spaces and line breaks made visible, each with its logit."""
    return " ".join(
        f'<code title="{value:+.3g}">{html.escape(visible(text))}</code>' for text, value in tokens
    )


def visible(token: str) -> str:
    """A token's text with its leading/trailing spaces as ␣ and line breaks as ⏎."""
    shown = token.replace("\n", "⏎").replace("\t", "⇥")
    stripped = shown.strip(" ")
    lead = len(shown) - len(shown.lstrip(" "))
    trail = len(shown) - len(shown.rstrip(" "))
    return "␣" * lead + stripped + "␣" * trail if stripped else "␣" * len(shown) or "∅"


def histogram_svg(histogram: Histogram) -> str:
    """The two sets' activation counts as overlaid bars in a small SVG, with the range's
    ends written under it."""
    counts = histogram.counts
    n_bins = len(next(iter(counts.values())))
    tallest = max(max(c) for c in counts.values()) or 1
    bar_w = _SVG_W / n_bins
    plot_h = _SVG_H - 12
    bars = []
    for name, values in counts.items():
        for i, count in enumerate(values):
            if count:
                h = plot_h * count / tallest
                bars.append(
                    f'<rect x="{i * bar_w:.1f}" y="{plot_h - h:.1f}" width="{bar_w - 1:.1f}" '
                    f'height="{h:.1f}" fill="{_COLOURS.get(name, "#777")}" fill-opacity="0.55"/>'
                )
    label = (
        f"activations from {histogram.low:.3g} to {histogram.high:.3g}; red: positive "
        f"prompts, blue: negative"
    )
    return (
        f'<svg width="{_SVG_W}" height="{_SVG_H}" viewBox="0 0 {_SVG_W} {_SVG_H}" role="img" '
        f'aria-label="{html.escape(label)}"><title>{html.escape(label)}</title>'
        + "".join(bars)
        + f'<text x="0" y="{_SVG_H - 1}" font-size="9">{histogram.low:.3g}</text>'
        f'<text x="{_SVG_W}" y="{_SVG_H - 1}" font-size="9" text-anchor="end">'
        f"{histogram.high:.3g}</text></svg>"
    )


def neuron_section(circuit: Circuit, lens: dict[tuple[int, int], NeuronLens] | None = None) -> str:
    """The browser as an HTML fragment (an <h2>, its notes, the table, its style and script),
    for a page of its own or a report; `lens` maps (layer, neuron) to its logit lens."""
    entries = neuron_entries(circuit, lens)
    return section_html([entry_row(e) for e in entries], with_lens=lens is not None)
