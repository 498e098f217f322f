"""Headless Chromium for the `browser` tests: open a copy of a page with a script appended, and
read back what the script measured (the report, the demo page and the neuron browser use it).

The script writes a JSON object into `<pre id="probe">`; `--dump-dom` prints the DOM after the
page's load handlers ran, and `probe_page` reads the object from it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

#: Debian's `chromium` (or another distribution's name for it); None where none is installed.
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

#: Appended to a copy of the page: after layout, writes the page's widths into the DOM, where
#: --dump-dom shows them. Elements inside a scrolling box (a wide table) may be wider.
LAYOUT_PROBE = """<script>
window.addEventListener("load", () => {
  const root = document.documentElement;
  const inScroll = (el) => el.closest(".scroll, pre") !== null;
  const wide = [...document.body.querySelectorAll("*")]
    .filter((el) => !inScroll(el) && el.getBoundingClientRect().right > window.innerWidth + 1)
    .map((el) => el.tagName + (el.className ? "." + el.className : ""));
  const first = document.querySelector("h2");
  const probe = document.createElement("pre");
  probe.id = "probe";
  probe.textContent = JSON.stringify({
    scrollWidth: root.scrollWidth, innerWidth: window.innerWidth, wide: wide.slice(0, 8),
    firstSection: first ? first.textContent : null,
    firstSectionTop: first ? first.getBoundingClientRect().top : null,
    innerHeight: window.innerHeight,
  });
  document.body.appendChild(probe);
});
</script>"""


def probe_page(
    page: Path, script: str, name: str, width: int, height: int, tmp: Path
) -> dict[str, Any]:
    """What `script` wrote into `<pre id="probe">` (a JSON object) once `page` loaded in a
    width x height headless window; the copy with the script is `name` beside `page`, the
    browser profile a folder under `tmp`. Fails the test when Chromium printed no probe."""
    assert CHROMIUM is not None, "no chromium here; mark the test to skip without one"
    probed = page.with_name(name)
    probed.write_text(page.read_text().replace("</body>", script + "</body>"))
    command = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--no-first-run", f"--user-data-dir={tmp / f'profile-{width}'}",
        f"--window-size={width},{height}", "--virtual-time-budget=10000", "--dump-dom",
        probed.as_uri(),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    found = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout, re.S)
    assert found, f"chromium printed no probe (exit {done.returncode}): {done.stderr[-500:]}"
    return dict(json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&")))


def page_layout(page: Path, width: int, height: int, tmp: Path) -> dict[str, Any]:
    """Chromium's measurements of `page` in a window of width x height pixels (`LAYOUT_PROBE`)."""
    return probe_page(page, LAYOUT_PROBE, f"probe-{width}.html", width, height, tmp)


def assert_fits(page: Path, width: int, height: int, tmp: Path, first_section: str) -> None:
    """`page` in a width x height window: nothing runs off it sideways, and it opens with the
    section `first_section` on the first screen."""
    layout = page_layout(page, width, height, tmp)
    assert layout["innerWidth"] == width
    assert layout["wide"] == [], f"elements run off the page: {layout['wide']}"
    assert layout["scrollWidth"] <= layout["innerWidth"], layout
    assert layout["firstSection"] == first_section
    assert layout["firstSectionTop"] < layout["innerHeight"]  # on the first screen
