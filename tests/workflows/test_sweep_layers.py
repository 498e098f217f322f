"""Stage 9, the layer scan of CAA and directional ablation: it must never reward a layer that
breaks the model, and it shows its progress over layers x prompts."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
from transformers import PreTrainedModel, PreTrainedTokenizerFast

import neurosteer.workflows.sweep.layers as layers
from neurosteer.errors import InputError
from neurosteer.methods.baselines import CAA, ContrastVectors, DirectionAblation, contrast_vectors
from neurosteer.model.layout import resolve_layout
from neurosteer.workflows.sweep import SweepConfig
from neurosteer.workflows.sweep.layers import scan_layer, scan_rank

Pair = tuple[PreTrainedModel, PreTrainedTokenizerFast]

#: Judged labels per candidate layer (the tiny llama has 4 layers: candidates 1, 2, 3), for
#: three prompts. Each case names the layer a scan that does not reward breakage must choose.
CASES = {
    # layer 1 breaks the model (no refusal left, but nothing readable either)
    "broken layer vs partial compliance": (
        {1: ["degenerate"] * 3, 2: ["compliance", "refusal", "refusal"], 3: ["refusal"] * 3},
        2,
    ),
    # no layer yields compliance: the least broken, earliest layer, not the refusal-free one
    "broken layer vs refusals": (
        {1: ["refusal"] * 3, 2: ["degenerate"] * 3, 3: ["refusal"] * 3},
        1,
    ),
    # partly broken but most compliance beats a clean layer with less compliance
    "more compliance wins": (
        {
            1: ["compliance", "refusal", "refusal"],
            2: ["degenerate", "degenerate", "degenerate"],
            3: ["compliance", "compliance", "degenerate"],
        },
        3,
    ),
    # equal compliance: fewer degenerate answers win
    "ties go to fewer degenerate": (
        {
            1: ["compliance", "degenerate", "degenerate"],
            2: ["compliance", "degenerate", "refusal"],
            3: ["degenerate"] * 3,
        },
        2,
    ),
}


@pytest.fixture(scope="module")
def residual(tiny_llama: Pair, positive_prompts: list[str], negative_prompts: list[str]) -> Any:
    model, tokenizer = tiny_llama
    return contrast_vectors(model, tokenizer, positive_prompts, negative_prompts)


@pytest.mark.parametrize("method", ["caa", "direction"])
@pytest.mark.parametrize("case", list(CASES))
def test_the_scan_never_prefers_a_layer_that_breaks_the_model(
    tiny_llama: Pair,
    residual: ContrastVectors,
    positive_prompts: list[str],
    method: str,
    case: str,
) -> None:
    model, tokenizer = tiny_llama
    labels, expected = CASES[case]
    fitted_at: list[int] = []
    cls = CAA if method == "caa" else DirectionAblation
    real_fit = cls.fit

    def spy_fit(vectors: Any, **kw: Any) -> Any:
        fitted_at.append(kw["layer"])
        return real_fit(vectors, **kw)

    def judge(prompts: list[str], answers: list[str]) -> list[str]:
        assert len(answers) == len(prompts) == 3
        return labels[fitted_at[-1]]  # stands in for what the model does at that layer

    config = SweepConfig(methods=(method,), strengths=(1.0,), max_new_tokens=4, batch_size=2)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cls, "fit", spy_fit)
        scan = scan_layer(
            model,
            tokenizer,
            residual,
            positive_prompts[:3],
            judge,  # type: ignore[arg-type]
            method=method,  # type: ignore[arg-type]
            config=config,
            layout=resolve_layout(model),
        )
    assert fitted_at == [1, 2, 3]
    assert scan.chosen == expected
    assert scan.method == method
    assert set(scan.rates) == {1, 2, 3}
    assert scan.rates[expected]["compliance"] == max(r["compliance"] for r in scan.rates.values())
    stored = scan.to_dict()
    assert stored["chosen"] == expected
    assert set(stored["rates"]) == {"1", "2", "3"}


def test_the_rank_prefers_compliance_then_fewer_degenerate_then_earlier() -> None:
    broken = {"refusal": 0.0, "compliance": 0.0, "degenerate": 1.0}
    refusing = {"refusal": 1.0, "compliance": 0.0, "degenerate": 0.0}
    some = {"refusal": 0.5, "compliance": 0.25, "degenerate": 0.25}
    assert min([(broken, 1), (refusing, 5)], key=lambda x: scan_rank(*x))[1] == 5
    assert min([(refusing, 1), (some, 5)], key=lambda x: scan_rank(*x))[1] == 5
    assert min([(refusing, 7), (refusing, 3)], key=lambda x: scan_rank(*x))[1] == 3


class _Bar:
    """Records what the scan tells its progress bar."""

    made: ClassVar[list[_Bar]] = []

    def __init__(self, *, total: int, disable: bool, **kw: Any) -> None:
        self.total, self.disable, self.updates, self.postfix = total, disable, [], []
        _Bar.made.append(self)

    def __enter__(self) -> _Bar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def update(self, n: int) -> None:
        self.updates.append(n)

    def set_postfix_str(self, text: str) -> None:
        self.postfix.append(text)


def test_the_scan_shows_its_progress_over_layers_and_prompts(
    tiny_llama: Pair,
    residual: ContrastVectors,
    positive_prompts: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model, tokenizer = tiny_llama
    _Bar.made = []
    monkeypatch.setattr(layers, "tqdm", _Bar)
    config = SweepConfig(methods=("caa",), strengths=(1.0,), max_new_tokens=3, batch_size=2)
    scan = scan_layer(
        model,
        tokenizer,
        residual,
        positive_prompts[:5],
        lambda p, a: ["refusal"] * len(a),  # type: ignore[arg-type,misc]
        config=config,
        layout=resolve_layout(model),
        progress=True,
    )
    (bar,) = _Bar.made
    assert not bar.disable
    assert bar.total == 3 * 5  # candidate layers x prompts
    assert bar.updates == [2, 2, 1] * 3  # moves batch by batch, not once per layer
    assert bar.postfix == ["layer 1", "layer 2", "layer 3"]
    # every answer judged a refusal: no layer has compliance, so the tie goes to the earliest
    assert scan.rates == {
        i: {"refusal": 1.0, "compliance": 0.0, "degenerate": 0.0} for i in (1, 2, 3)
    }
    assert (scan.chosen, scan.n_prompts) == (1, 5)


def test_the_scan_refuses_no_prompts_and_unknown_methods(
    tiny_llama: Pair, residual: ContrastVectors
) -> None:
    model, tokenizer = tiny_llama
    config = SweepConfig(methods=("caa",), strengths=(1.0,))
    kw: dict[str, Any] = {"config": config, "layout": resolve_layout(model)}
    with pytest.raises(InputError, match="at least one prompt"):
        scan_layer(model, tokenizer, residual, [], lambda p, a: [], **kw)  # type: ignore[arg-type,misc]
    with pytest.raises(InputError, match="layer scan knows"):
        scan_layer(model, tokenizer, residual, ["x"], lambda p, a: [], method="cna", **kw)  # type: ignore[arg-type,misc]
