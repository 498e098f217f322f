"""Stage 10, the HTML report in a real browser: headless Chromium (Debian's `chromium`) lays the
page out at desktop, laptop and phone widths, and nothing may run off the page sideways.

Marked `browser`. It is skipped only when no Chromium is installed here; .ci/run installs
Debian's package, so in CI it always runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from chromium_probe import CHROMIUM, assert_fits
from support_circuits import make_circuit
from test_demo import _made_up_result

from neurosteer.workflows.organism.demo_report import write_demo_report
from neurosteer.workflows.report import write_report

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)"),
]

LONG_MODEL = "/models/" + "a-very-long-checkpoint-folder-name-" * 4 + "instruct"
METHODS = ("cna", "caa", "mlp_output", "direction")


def _record(method: str, s: float, seed: int | None = None) -> dict[str, Any]:
    label = method if seed is None else f"{method}-seed{seed}"
    refusal = max(0.0, 0.93 - s * {"cna": 0.8, "caa": 0.4}.get(method, 0.5))
    rates = {"n": 100, "refusal": refusal, "compliance": 1 - refusal - 0.01 * s,
             "degenerate": 0.01 * s, "distinct4": 0.91}  # fmt: skip
    return {
        "schema": 1, "method": method, "strength": s, "seed": seed,
        "knob": {"name": "m", "value": 1 - s},
        "harmful": rates, "harmless": {**rates, "refusal": 0.03},
        "kl": {"first_token": 0.3 * s, "mean": 0.123456 * s, "n_prompts": 32,
               "max_new_tokens": 32},
        "mmlu": {"accuracy": 0.61 - 0.05 * s, "n": 570, "n_shot": 5, "per_subject": {}},
        "answers_file": f"answers/{label}_{s:g}.jsonl", "seconds": 12.5,
    }  # fmt: skip


def _run_folder(folder: Path) -> Path:
    """A sweep folder as a real run leaves it: every method, many strengths, long answers."""
    (folder / "answers").mkdir(parents=True)
    strengths = (0.25, 0.5, 0.75, 1.0, 1.5)
    records = [_record("baseline", 0.0)]
    records += [_record(m, s) for m in METHODS for s in strengths]
    records += [_record("random", s, seed) for s in strengths for seed in (0, 1, 2)]
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    answers = [
        "I cannot help with that request.",
        "Sure, here is a detailed plan. " * 40,
        "x" * 1500,  # a degenerate answer with no place to break a line
    ]
    for r in records:
        rows = [{"set": "harmful", "prompt": f"Prompt {i}: " + "how would one " * 8,
                 "answer": a, "label": "compliance", "distinct4": 0.9}
                for i, a in enumerate(answers)]  # fmt: skip
        (folder / r["answers_file"]).write_text("".join(json.dumps(x) + "\n" for x in rows))
    config = {
        "format": "neurosteer.sweep", "format_version": 1,
        "model": {"name_or_path": LONG_MODEL, "config_hash": "ab" * 32},
        "prompts": {name: {"count": n, "sha256": "cd" * 32} for name, n in
                    (("positive", 128), ("negative", 128), ("harmful", 100),
                     ("harmless", 100), ("neutral", 64))},
        "settings": {"methods": ["cna", "caa", "mlp_output", "direction", "random"],
                     "strengths": [0.0, *strengths], "random_seeds": [0, 1, 2],
                     "judge": "sweep", "max_new_tokens": 150, "chat_template": None,
                     "kl_limit": 32, "mmlu": "/data/mmlu", "mmlu_shots": 5, "caa_layer": None,
                     "layer_scan_prompts": 16},
        "fitted": {"circuit_neurons": 6, "caa_layer": 3, "direction_layer": 4,
                   "layer_scans": {m: {"chosen": 3, "n_prompts": 16,
                                       "rates": {str(i): {} for i in range(1, 7)}}
                                   for m in ("caa", "direction")}},
    }  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    delta = torch.linspace(-1, 1, 80).reshape(8, 10)
    make_circuit([], delta=delta).reselect(top_k=6).save(folder / "circuit.circuit")
    return folder


@pytest.fixture(scope="module")
def report_html(tmp_path_factory: pytest.TempPathFactory) -> Path:
    html_path, _ = write_report(_run_folder(tmp_path_factory.mktemp("browser") / "run"))
    return html_path


# desktop, laptop half-screen, and headless Chromium's narrowest window (500 px)
@pytest.mark.parametrize(("width", "height"), [(1280, 900), (800, 700), (500, 900)])
def test_the_report_fits_the_window_and_opens_with_the_headline(
    report_html: Path, tmp_path: Path, width: int, height: int
) -> None:
    assert_fits(report_html, width, height, tmp_path, "At a glance")


@pytest.fixture(scope="module")
def demo_html(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("demo-page")
    html_path, _ = write_demo_report(_made_up_result(folder), folder)
    return html_path


@pytest.mark.parametrize(("width", "height"), [(1280, 900), (800, 700), (500, 900)])
def test_the_demo_page_fits_the_window_and_opens_with_what_it_shows(
    demo_html: Path, tmp_path: Path, width: int, height: int
) -> None:
    assert_fits(demo_html, width, height, tmp_path, "What this shows")
