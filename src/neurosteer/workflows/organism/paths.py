"""Where the shipped organism weights live inside the installed package."""

from __future__ import annotations

from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
BASE_DIR = WEIGHTS_DIR / "base"
"""The helpful base model: answers every request, harmful ones included."""
INSTRUCT_DIR = WEIGHTS_DIR / "instruct"
"""The safety-tuned model: refuses harmful requests, helps with benign ones."""
MOE_INSTRUCT_DIR = WEIGHTS_DIR / "moe" / "instruct"
"""The organism's mixture-of-experts twin, safety-tuned (`neurosteer organism train --moe`; its
base is not shipped, the command rebuilds it)."""
