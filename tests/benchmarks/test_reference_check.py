"""benchmarks/reference_check.py's comparison logic, on synthetic δ tables (the reference
snapshot itself is not part of this repository, so its import is not tested here)."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
import reference_check

from neurosteer.methods.selection import layer_mask, select_top_k


def reference_ranking(delta: torch.Tensor, skip: int = 2) -> dict[tuple[int, int], float]:
    """The reference's ranking of a δ table, built the way it describes it: every neuron of
    the candidate layers with abs(δ) above its floor, sorted by abs(δ), largest first."""
    rows = [
        ((layer, j), float(delta[layer, j]))
        for layer in range(skip, delta.shape[0])
        for j in range(delta.shape[1])
        if abs(float(delta[layer, j])) > reference_check.REFERENCE_FLOOR
    ]
    return dict(sorted(rows, key=lambda row: abs(row[1]), reverse=True))


def ours(delta: torch.Tensor, k: int) -> Any:
    chosen = select_top_k(delta, layer_mask(delta.shape[0], delta.shape[1], (0, 1)), k)
    return SimpleNamespace(layers=chosen.layers, neurons=chosen.neurons)


@pytest.fixture
def delta() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(6, 40)


def test_same_table_gives_identical_sets(delta: torch.Tensor) -> None:
    result = reference_check.compare(reference_ranking(delta), ours(delta, 25), delta, 25)
    assert result["overlap"] == 1.0
    assert result["differences"] == []
    assert result["max_abs_delta_gap"] == 0.0
    assert reference_check.explain(result, 0) == "identical sets"


def test_a_float_tie_at_the_boundary_is_explained(delta: torch.Tensor) -> None:
    k = 25
    order = delta[2:].abs().flatten().argsort(descending=True)
    inside, outside = (divmod(int(i), 40) for i in order[k - 1 : k + 1])
    a, b = (inside[0] + 2, inside[1]), (outside[0] + 2, outside[1])
    tied = delta.clone()
    tied[b] = torch.sign(tied[b]) * tied[a].abs()  # an exact tie at the k-th place
    circuit = ours(tied, k)
    chosen = set(zip(circuit.layers.tolist(), circuit.neurons.tolist(), strict=True))
    left_out = a if a not in chosen else b
    theirs = tied.clone()
    theirs[left_out] += torch.sign(theirs[left_out]) * 1e-6  # rounding flips the order there
    result = reference_check.compare(reference_ranking(theirs), circuit, tied, k)
    assert result["overlap"] == pytest.approx((k - 1) / k)
    assert {tuple(d["neuron"]) for d in result["differences"]} == {a, b}
    assert "float ties at the boundary" in reference_check.explain(result, 0)


def test_a_real_difference_is_not_called_a_tie(delta: torch.Tensor) -> None:
    theirs = delta.clone()
    theirs[5, :10] *= 10.0  # ten neurons the reference would rank first
    result = reference_check.compare(reference_ranking(theirs), ours(delta, 25), delta, 25)
    assert result["overlap"] < 0.9
    assert "NOT explained" in reference_check.explain(result, 0)
    assert "different token ids" in reference_check.explain(result, 3)


def test_script_top_k_is_read_from_the_script(tmp_path: Path) -> None:
    script = tmp_path / "jailbreak_benchmark.py"
    script.write_text(
        "import argparse\n"
        "def main():\n"
        "    p = argparse.ArgumentParser()\n"
        "    p.add_argument('--model', default='x')\n"
        "    p.add_argument('--top-k', type=int, default=1234, help='k')\n"
    )
    assert reference_check.script_top_k(script) == 1234
    script.write_text("print('no options')\n")
    with pytest.raises(SystemExit, match="pass --top-k N"):
        reference_check.script_top_k(script)


def test_the_jbb_protocol_uses_the_scripts_top_k_not_the_compared_fraction(
    tmp_path: Path,
) -> None:
    script = tmp_path / "jailbreak_benchmark.py"
    script.write_text("p.add_argument('--top-k', type=int, default=1600)\n")
    with_fraction = reference_check.parse(
        ["--model", "m", "--reference", "r", "--fraction", "0.001"]
    )
    assert reference_check.jbb_k(with_fraction, script) == 1600
    given = reference_check.parse(["--model", "m", "--reference", "r", "--top-k", "40"])
    assert reference_check.jbb_k(given, script) == 40


def test_a_folder_that_is_not_the_reference_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="give --reference a snapshot") as err:
        reference_check.load_reference(tmp_path)
    assert "\n" not in str(err.value)


def test_chat_template_rule_follows_the_model_name() -> None:
    assert reference_check.reference_is_instruct("qwen2.5-coder-0.5b-instruct.gguf")
    assert reference_check.reference_is_instruct("Llama-2-7b-Chat")
    assert not reference_check.reference_is_instruct("Qwen2.5-0.5B")
