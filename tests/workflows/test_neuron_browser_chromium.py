"""The neuron browser in a real browser: headless Chromium lays the page out at desktop,
laptop and phone widths without anything running off the page, and its table sorts and
filters. Marked `browser`; skipped only where no Chromium is installed (CI installs it)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from chromium_probe import CHROMIUM, assert_fits, probe_page
from test_neuron_browser import _circuit

from neurosteer.methods.discovery_record import DiscoveryRecord
from neurosteer.methods.logit_lens import NeuronLens
from neurosteer.workflows.report.neuron_page import write_neuron_page

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)"),
]

WORDS = ["zebra", "apple", "mango", "kiwi"]

#: After load: sorts by δ (one click on its title), filters by a token, then by sign, and
#: writes what the rows showed each time into the DOM for --dump-dom.
INTERACT = """<script>
window.addEventListener("load", () => {
  const heads = [...document.querySelectorAll("table.nb tr.head th")];
  const rows = () => [...document.querySelectorAll("table.nb tbody tr")];
  const col = (name) => heads.findIndex((h) => h.textContent === name);
  const shown = () => rows().filter((r) => !r.hidden && r.offsetParent !== null).length;
  heads[col("δ")].click();
  const afterClick = rows().map((r) => parseFloat(r.cells[col("δ")].dataset.value));
  heads[col("δ")].click();
  const afterSecond = rows().map((r) => parseFloat(r.cells[col("δ")].dataset.value));
  const text = document.getElementById("nb-filter");
  text.value = "ZEBRA";
  text.dispatchEvent(new Event("input"));
  const byToken = rows().filter((r) => !r.hidden).map((r) => r.cells[col("#")].textContent);
  const byTokenShown = shown();
  text.value = "";
  text.dispatchEvent(new Event("input"));
  const sign = document.getElementById("nb-sign");
  sign.value = "-";
  sign.dispatchEvent(new Event("change"));
  const negatives = shown();
  const counter = document.getElementById("nb-shown").textContent;
  const box = document.querySelector("table.nb").parentElement;
  const sideways = box.scrollWidth - box.clientWidth;
  const probe = document.createElement("pre");
  probe.id = "probe";
  probe.textContent = JSON.stringify({afterClick, afterSecond, byToken, byTokenShown,
                                      negatives, counter, sideways});
  document.body.appendChild(probe);
});
</script>"""


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A browser page with long prompts (one with no place to break) and long tokens."""
    circuit = _circuit(n_pos=9, n_neg=9, seed=3)
    record = circuit.discovery
    assert record is not None
    long = ("how would one " * 30, "x" * 600, *record.prompts["positive"][2:])
    circuit = replace(circuit, discovery=DiscoveryRecord({**record.prompts, "positive": long},
                      record.activations, record.standardized))  # fmt: skip
    pairs = zip(circuit.layers.tolist(), circuit.neurons.tolist(), strict=True)
    lens = {
        pair: NeuronLens(
            ((f" {WORDS[i]}", 3.0), ("y" * 80, 2.0), ("\n\n", 1.0)),
            (("Sure", -2.0), (" " * 6, -1.0), ("ー" * 30, -0.5)),
        )
        for i, pair in enumerate(pairs)
    }
    return write_neuron_page(circuit, tmp_path_factory.mktemp("nb") / "neurons.html", lens)


@pytest.mark.parametrize(("width", "height"), [(1280, 900), (800, 700), (500, 900)])
def test_the_browser_fits_the_window(page: Path, tmp_path: Path, width: int, height: int) -> None:
    assert_fits(page, width, height, tmp_path, "At a glance")


def _interact(page: Path, width: int, tmp: Path) -> dict[str, Any]:
    return probe_page(page, INTERACT, f"interact-{width}.html", width, 900, tmp)


@pytest.mark.parametrize("width", [1280, 800, 500])  # a table, then cards
def test_the_table_sorts_and_filters(page: Path, tmp_path: Path, width: int) -> None:
    seen = _interact(page, width, tmp_path)
    deltas = _circuit().delta.tolist()
    assert seen["afterClick"] == pytest.approx(sorted(deltas, reverse=True))
    assert seen["afterSecond"] == pytest.approx(sorted(deltas))
    assert seen["byToken"] == ["1"]  # "zebra" is only the first neuron's token
    assert seen["byTokenShown"] == 1
    n_negative = sum(d < 0 for d in deltas)
    assert 0 < n_negative < len(deltas)
    assert seen["negatives"] == n_negative
    assert seen["counter"] == f"{n_negative} of {len(deltas)} neurons shown"
    assert seen["sideways"] <= 1  # the whole table is readable without scrolling sideways
