"""The pieces of the search, on tiny models: the KL reference computed once gives
`kl_to_reference`'s numbers, the standardized score, a trial's circuit from the kept table, the
search space's checks and the Pareto front."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from optimize_support import trial_result
from tiny_models import D_MLP, N_LAYERS
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from neurosteer import Circuit, discover
from neurosteer.errors import InputError
from neurosteer.evaluation.kl import KLReference, kl_from_reference, kl_reference, kl_to_reference
from neurosteer.methods.selection import neuron_scores
from neurosteer.workflows.optimization import Params, SearchSpace, build_circuit, pareto_front
from neurosteer.workflows.optimization.space import NoCandidates

Pair = tuple[PreTrainedModel, PreTrainedTokenizerFast]


@pytest.fixture(scope="module")
def table(tiny_llama: Pair, positive_prompts: list[str], negative_prompts: list[str]) -> Circuit:
    model, tok = tiny_llama
    return discover(
        model,
        tok,
        positive_prompts,
        negative_prompts,
        top_k=1,
        skip_layers=(),
        universal_filter=False,
        keep_table=True,
    )


# --- KL against a stored reference -----------------------------------------------------------


@pytest.mark.parametrize("tokens", [1, 6])
def test_stored_reference_gives_the_same_kl(
    tiny_llama: Pair, table: Circuit, negative_prompts: list[str], tmp_path: Path, tokens: int
) -> None:
    model, tok = tiny_llama
    circuit = table.reselect(top_k=8)
    direct = kl_to_reference(
        model,
        tok,
        negative_prompts,
        intervention=circuit,
        strength=0.0,
        max_new_tokens=tokens,
        batch_size=3,
    )
    reference = kl_reference(model, tok, negative_prompts, max_new_tokens=tokens, batch_size=3)
    stored = kl_from_reference(model, reference, intervention=circuit, strength=0.0)
    assert stored == direct
    loaded = KLReference.load(reference.save(tmp_path / "ref.safetensors"))
    assert kl_from_reference(model, loaded, intervention=circuit, strength=0.0) == direct
    assert direct.first_token > 0
    half = kl_from_reference(model, reference.to(torch.float16), intervention=circuit, strength=0.0)
    assert half.first_token == pytest.approx(direct.first_token, rel=1e-2, abs=1e-4)
    unchanged = kl_from_reference(model, reference, intervention=circuit, strength=1.0)
    assert unchanged.first_token == 0.0


def test_reference_file_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not a readable KL reference"):
        KLReference.load(tmp_path / "missing.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"nope")
    with pytest.raises(InputError, match="not a readable KL reference"):
        KLReference.load(tmp_path / "bad.safetensors")


# --- the standardized score ------------------------------------------------------------------


def test_standardized_score_by_hand() -> None:
    pos_mean = torch.tensor([[1.0, 0.0, 5.0]])
    neg_mean = torch.tensor([[0.0, 1.0, 4.0]])
    pos_var = torch.tensor([[1.0, 4.0, 0.01]])
    neg_var = torch.tensor([[3.0, 4.0, 0.01]])
    diff = neuron_scores(pos_mean, neg_mean, pos_var, neg_var)
    assert diff.tolist() == [[1.0, -1.0, 1.0]]
    # pooled variance with 3 and 5 prompts: (2 * var+ + 4 * var-) / 6
    std = neuron_scores(pos_mean, neg_mean, pos_var, neg_var, kind="standardized", counts=(3, 5))
    expected = [1 / ((2 * 1 + 4 * 3) / 6) ** 0.5, -1 / 2.0, 1 / 0.1]
    assert std[0].tolist() == pytest.approx(expected, rel=1e-5)
    # same sign as δ; the steady neuron ranks first although all three δ are 1 in size
    assert int(std.abs().argmax()) == 2
    with pytest.raises(InputError, match="unknown neuron score"):
        neuron_scores(pos_mean, neg_mean, pos_var, neg_var, kind="t")


def test_standardized_score_floors_the_deviation() -> None:
    zeros = torch.zeros(1, 4)
    var = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    scores = neuron_scores(
        torch.tensor([[1.0, 1.0, 1.0, 1e-3]]), zeros, var, var, kind="standardized"
    )
    assert torch.isfinite(scores).all()
    assert float(scores[0, 3]) == pytest.approx(1e-3 / 0.01)  # 1% of the median std


def test_circuit_scores_follow_its_settings(table: Circuit) -> None:
    std = table.scores("standardized")
    assert std.shape == (N_LAYERS, D_MLP)
    assert torch.equal(torch.sign(std), torch.sign(table.table.delta))  # type: ignore[union-attr]
    assert torch.equal(table.scores(), table.table.delta)  # type: ignore[union-attr]
    standardized = replace(table, settings=replace(table.settings, score="standardized"))
    k = 5
    picked = standardized.reselect(top_k=k)
    flat = std.abs().flatten().topk(k).indices
    assert sorted((picked.layers * D_MLP + picked.neurons).tolist()) == sorted(flat.tolist())


# --- a trial's circuit -----------------------------------------------------------------------


def _params(**changes: object) -> Params:
    base = Params(k=6, multiplier=-0.5, sign="both", score="diff", first_layer_share=0.5)
    return replace(base, **changes)  # type: ignore[arg-type]


def test_trial_circuit_follows_its_params(table: Circuit) -> None:
    circuit = build_circuit(table, _params())
    assert len(circuit) == 6
    assert int(circuit.layers.min()) >= 2  # floor(0.5 * 4)
    assert circuit.settings.skip_layers == (0, 1)
    assert circuit.settings.multiplier == -0.5
    assert circuit.default_strength == -0.5
    assert circuit.table is None
    assert torch.equal(circuit.delta, table.table.delta[circuit.layers, circuit.neurons])  # type: ignore[union-attr]
    delta = table.table.delta  # type: ignore[union-attr]
    positive = build_circuit(table, _params(sign="positive"))
    assert bool((delta[positive.layers, positive.neurons] > 0).all())
    assert positive.settings.positive_only
    last = build_circuit(table, _params(first_layer_share=0.99))
    assert set(last.layers.tolist()) == {N_LAYERS - 1}
    capped = build_circuit(table, _params(k=10_000, first_layer_share=0.75))
    assert len(capped) == D_MLP  # all of the last layer
    standardized = build_circuit(table, _params(score="standardized"))
    assert standardized.settings.score == "standardized"
    assert not torch.equal(standardized.neurons, circuit.neurons) or not torch.equal(
        standardized.layers, circuit.layers
    )


def test_trial_circuit_without_candidates(table: Circuit) -> None:
    flat = replace(
        table,
        table=replace(
            table.table,  # type: ignore[arg-type]
            positive_mean=table.table.negative_mean.clone(),  # type: ignore[union-attr]
        ),
    )
    with pytest.raises(NoCandidates, match="no positive-δ candidate"):
        build_circuit(flat, _params(sign="positive"))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"k_share": (0.0, 0.1)}, "k_share must satisfy"),
        ({"k_share": (0.1,)}, "k_share must be two finite numbers"),
        ({"multiplier": (1.0, -2.0)}, "low <= high"),
        ({"first_layer": (0.0, 1.0)}, "first_layer must satisfy"),
        ({"signs": ("both", "negative")}, "sign rules must be distinct values"),
        ({"scores": ()}, "at least one of the neuron scores"),
    ],
)
def test_search_space_checks(changes: dict[str, object], message: str) -> None:
    with pytest.raises(InputError, match=message):
        SearchSpace(**changes)  # type: ignore[arg-type]


def test_k_bounds_cover_the_shares() -> None:
    assert SearchSpace().k_bounds(24 * 4864) == (23, 5837)  # a 0.5B Qwen: 0.02% .. 5%
    assert SearchSpace().k_bounds(6 * 512) == (1, 154)  # the organism


def test_pareto_front_keeps_only_undominated_points() -> None:
    trials = [
        trial_result(0, 0.5, 0.1),
        trial_result(1, 0.2, 0.3),
        trial_result(2, 0.6, 0.2),
        trial_result(3, 0.2, 0.3),
        trial_result(4, None, 0.0),
    ]
    assert [t.number for t in pareto_front(trials)] == [0, 1, 3]


def test_missing_optuna_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from neurosteer.workflows.optimization.study import optuna_module

    monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` raises ImportError
    with pytest.raises(InputError, match=r"pip install 'neurosteer\[optimize\]'"):
        optuna_module()


def test_refusal_tokens_are_those_that_mostly_open_refusals() -> None:
    from neurosteer.evaluation.kl import ReferenceBatch
    from neurosteer.evaluation.refusal import JudgedAnswers
    from neurosteer.workflows.optimization.objectives import refusal_tokens

    i, sure, no, eh = 7, 8, 9, 10  # first answer tokens
    firsts = [i, i, i, i, sure, sure, no, eh]
    labels = (
        "refusal",
        "refusal",
        "refusal",
        "compliance",
        "compliance",
        "compliance",
        "refusal",
        "degenerate",
    )
    batch = ReferenceBatch(
        index=torch.arange(8),
        input_ids=torch.tensor([[1, 2, t] for t in firsts]),
        attention_mask=torch.ones(8, 3, dtype=torch.long),
        logprobs=torch.zeros(8, 1, 12),
        valid=torch.ones(8, 1),
    )
    answers = JudgedAnswers(("p",) * 8, ("a",) * 8, labels, {})  # type: ignore[arg-type]
    # "I" opens three refusals and one odd compliant answer: still a refusal token
    assert refusal_tokens(KLReference((batch,), 8, 1), answers) == (i, no)
