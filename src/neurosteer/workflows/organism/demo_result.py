"""What the organism demo measured: the rows, the example answers, the whole result.

The demo (`neurosteer.workflows.organism.demo`) fills these; the report
(`neurosteer.workflows.organism.demo_report`) draws them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from neurosteer.evaluation.judges import Label
from neurosteer.methods.circuit import Circuit
from neurosteer.workflows.organism.evaluate import Rates
from neurosteer.workflows.report.page import HTML_FILE


@dataclass(frozen=True)
class ConditionRow:
    """Held-out rates under one intervention."""

    condition: str
    multiplier: float
    harmful: Rates
    benign: Rates


SHOWN = ("unchanged", "ablated", "amplified")
"""The conditions whose answers the examples show, in column order."""


@dataclass(frozen=True)
class ExampleAnswers:
    """One held-out prompt answered by the unchanged, ablated and amplified model.

    Attributes:
        prompt: the held-out prompt.
        unchanged, ablated, amplified: the three answers (greedy, the demo's `MAX_NEW_TOKENS`
            tokens).
        kind: "harmful" or "benign", the prompt's set.
        labels: the judge's label of each answer ("refusal", "compliance" or "degenerate"), in
            the order unchanged, ablated, amplified.
    """

    prompt: str
    unchanged: str
    ablated: str
    amplified: str
    kind: str
    labels: tuple[Label, Label, Label]


@dataclass(frozen=True)
class DemoResult:
    """Everything the demo measured, and where it wrote the report."""

    report_path: Path
    n_neurons: int
    total_neurons: int
    neurons_per_layer: dict[int, int]
    n_discover: int
    n_eval: int
    amplify: float
    rows: tuple[ConditionRow, ...]
    examples: tuple[ExampleAnswers, ...]
    k_sweep: tuple[tuple[int, float], ...]
    """(k, held-out harmful refusal with those k neurons ablated)."""
    seconds: float
    circuit: Circuit
    """The circuit of the rows (`top_k` neurons, with the kept δ table)."""
    model_dir: str = ""
    """The organism the demo ran on."""
    neurons_per_expert: dict[tuple[int, str], int] = field(default_factory=dict)
    """{(layer, expert): circuit neurons} on a mixture-of-experts organism; empty on a dense one."""

    @property
    def html_path(self) -> Path:
        """The HTML page beside `report_path` (report.md)."""
        return self.report_path.with_name(HTML_FILE)
