"""Importing a module changes nothing outside it: matplotlib's backend stays the user's."""

from __future__ import annotations

import json
import subprocess
import sys

# every module that draws figures, and the ones that import them
DRAWING_MODULES = [
    "neurosteer.workflows.report.plots",
    "neurosteer.workflows.report",
    "neurosteer.workflows.organism.demo_report",
    "neurosteer.workflows.organism.demo",
    "neurosteer.cli.analysis_cmds",
]


def test_imports_leave_the_matplotlib_backend_alone() -> None:
    # a notebook's backend ("svg" here, not the headless default "agg"), set before the
    # imports, in a fresh interpreter so that nothing is imported yet
    code = (
        "import importlib, json, sys, matplotlib\n"
        "matplotlib.use('svg')\n"
        "seen = {}\n"
        f"for name in {DRAWING_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "    seen[name] = [matplotlib.get_backend(), 'matplotlib.pyplot' in sys.modules]\n"
        "print(json.dumps(seen))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout)
    assert seen == {name: ["svg", False] for name in DRAWING_MODULES}
