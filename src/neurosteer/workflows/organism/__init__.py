"""A built-in model organism: a tiny Llama pair (helpful base, safety-tuned instruct) trained on a
synthetic chat corpus whose harmfulness is compositional, so the instruct model carries a real,
learned refusal gate for CNA to find, and its mixture-of-experts twin (a Qwen2-MoE trained the
same way, `MOE_INSTRUCT_DIR`). See docs/organism.md.
"""

from neurosteer.workflows.organism.corpus import Verdict, judge
from neurosteer.workflows.organism.paths import (
    BASE_DIR,
    INSTRUCT_DIR,
    MOE_INSTRUCT_DIR,
    WEIGHTS_DIR,
)
from neurosteer.workflows.organism.prompt_sets import PromptSets, demo_prompt_sets, neutral_prompts

__all__ = [
    "BASE_DIR",
    "INSTRUCT_DIR",
    "MOE_INSTRUCT_DIR",
    "WEIGHTS_DIR",
    "PromptSets",
    "Verdict",
    "demo_prompt_sets",
    "judge",
    "neutral_prompts",
]
