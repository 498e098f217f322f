"""The package surface: lazy public names, all importable, and a fast command line."""

from __future__ import annotations

import importlib
import subprocess
import sys

import neurosteer


def test_every_public_name_resolves_and_is_listed() -> None:
    exported = set(neurosteer._EXPORTS)
    assert set(neurosteer.__all__) == exported | {"__version__"}
    for name in exported:
        defining = importlib.import_module(neurosteer._EXPORTS[name])
        assert getattr(neurosteer, name) is getattr(defining, name)
    assert neurosteer.Circuit.__module__ == "neurosteer.methods.circuit"


def test_cli_help_does_not_import_torch() -> None:
    code = "import sys, neurosteer.cli.main; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_python_dash_m_runs_the_command_line() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "neurosteer", "--help"], capture_output=True, text=True, check=True
    )
    assert "Usage: neurosteer" in out.stdout
    assert "discover" in out.stdout
