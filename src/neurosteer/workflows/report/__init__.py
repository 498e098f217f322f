"""Reports of a sweep folder, from its files alone (never a model).

summary   summarise(RUN) -> rows (one per method and strength), RUN/summary.csv;
          at_matched_refusal(rows) -> the headline comparison of methods
headline  the facts a reader needs first (model, circuit, prompt sets, judge)
plots     plots(RUN, rows) -> PNGs in RUN/figures/
page      write_report(RUN) -> (RUN/report.html, RUN/report.md)

html_path, md_path = write_report("runs/llama-1b")
"""

from neurosteer.workflows.report.page import HTML_FILE, MARKDOWN_FILE, format_cell, write_report
from neurosteer.workflows.report.plots import FIGURES_DIR, plots
from neurosteer.workflows.report.summary import (
    COLUMNS,
    SUMMARY_FILE,
    Matched,
    at_matched_refusal,
    curves,
    summarise,
    to_csv,
)

__all__ = [
    "COLUMNS",
    "FIGURES_DIR",
    "HTML_FILE",
    "MARKDOWN_FILE",
    "SUMMARY_FILE",
    "Matched",
    "at_matched_refusal",
    "curves",
    "format_cell",
    "plots",
    "summarise",
    "to_csv",
    "write_report",
]
