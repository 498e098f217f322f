"""Pure attribution functions: k for a fraction, global top-k selection, candidate masks."""

from __future__ import annotations

import pytest
import torch

from neurosteer.errors import InputError
from neurosteer.methods.selection import (
    UNIVERSAL_THRESHOLD,
    candidate_mask,
    difference_of_means,
    layer_mask,
    neurons_for_fraction,
    select_top_k,
    universal_mask,
)

# --- neurons_for_fraction --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_layers", "d_mlp", "k"),
    [
        (16, 8192, 131),  # Llama-3.2-1B
        (32, 14336, 459),  # Llama-3.1-8B
        (80, 28672, 2294),  # Llama-3.1-70B
        (28, 18944, 530),  # Qwen2.5-7B
    ],
)
def test_paper_k(n_layers: int, d_mlp: int, k: int) -> None:
    assert neurons_for_fraction(0.001, n_layers * d_mlp) == k


def test_at_least_one() -> None:
    assert neurons_for_fraction(0.001, 4 * 37) == 1  # 0.148 rounds to 0, but never below 1
    assert neurons_for_fraction(1e-9, 10) == 1


def test_halves_round_up_and_whole_fraction() -> None:
    assert neurons_for_fraction(0.5, 5) == 3  # 2.5 → 3, not banker's 2
    assert neurons_for_fraction(0.001, 2500) == 3  # 2.5 → 3
    assert neurons_for_fraction(1.0, 148) == 148


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.0001, 2.0, float("nan")])
def test_bad_fraction(fraction: float) -> None:
    with pytest.raises(InputError, match=r"fraction must be in \(0, 1\]"):
        neurons_for_fraction(fraction, 1000)


# --- select_top_k ----------------------------------------------------------------------------


def _delta() -> torch.Tensor:
    # [3 layers, 4 neurons]
    return torch.tensor(
        [
            [0.1, -9.0, 0.2, 0.0],
            [5.0, -0.3, -7.0, 0.4],
            [-0.5, 6.0, 0.05, -2.0],
        ]
    )


def _pairs(layers: torch.Tensor, neurons: torch.Tensor) -> list[tuple[int, int]]:
    return list(zip(layers.tolist(), neurons.tolist(), strict=True))


def test_largest_abs_delta_both_signs_in_rank_order() -> None:
    delta = _delta()
    everything = torch.ones_like(delta, dtype=torch.bool)
    chosen = select_top_k(delta, everything, 4)
    assert _pairs(chosen.layers, chosen.neurons) == [(0, 1), (1, 2), (2, 1), (1, 0)]
    assert chosen.layers.dtype == chosen.neurons.dtype == torch.int64
    picked = delta[chosen.layers, chosen.neurons]
    assert (picked < 0).any()
    assert (picked > 0).any()
    assert chosen.n_candidates == 12


def test_respects_candidate_mask() -> None:
    delta = _delta()
    candidates = torch.ones_like(delta, dtype=torch.bool)
    candidates[0] = False  # a skipped layer
    candidates[1, 2] = False  # a universal neuron
    chosen = select_top_k(delta, candidates, 3)
    assert _pairs(chosen.layers, chosen.neurons) == [(2, 1), (1, 0), (2, 3)]
    assert chosen.n_candidates == 7


def test_positive_only_keeps_positive_delta() -> None:
    delta = _delta()
    everything = torch.ones_like(delta, dtype=torch.bool)
    chosen = select_top_k(delta, everything, 3, positive_only=True)
    assert _pairs(chosen.layers, chosen.neurons) == [(2, 1), (1, 0), (1, 3)]
    assert (delta[chosen.layers, chosen.neurons] > 0).all()
    assert chosen.n_candidates == 6  # 0.0 is not > 0


def test_positive_only_too_few_positive_candidates() -> None:
    delta = _delta()
    with pytest.raises(InputError, match="only 6 positive"):
        select_top_k(delta, torch.ones_like(delta, dtype=torch.bool), 7, positive_only=True)


def test_ties_broken_in_layer_neuron_order() -> None:
    delta = torch.tensor([[1.0, -3.0, 3.0], [3.0, 1.0, -3.0]])
    everything = torch.ones_like(delta, dtype=torch.bool)
    chosen = select_top_k(delta, everything, 3)
    assert _pairs(chosen.layers, chosen.neurons) == [(0, 1), (0, 2), (1, 0)]
    # and the same again: deterministic
    again = select_top_k(delta.clone(), everything.clone(), 3)
    assert torch.equal(again.layers, chosen.layers)
    assert torch.equal(again.neurons, chosen.neurons)


def test_all_equal_scores_take_the_first_neurons() -> None:
    delta = torch.ones(4, 5)
    chosen = select_top_k(delta, torch.ones_like(delta, dtype=torch.bool), 7)
    assert _pairs(chosen.layers, chosen.neurons) == [
        (0, 0),
        (0, 1),
        (0, 2),
        (0, 3),
        (0, 4),
        (1, 0),
        (1, 1),
    ]


def test_non_finite_delta_never_selected() -> None:
    delta = torch.tensor([[float("nan"), 1.0], [float("inf"), 2.0]])
    chosen = select_top_k(delta, torch.ones_like(delta, dtype=torch.bool), 2)
    assert _pairs(chosen.layers, chosen.neurons) == [(1, 1), (0, 1)]


def test_k_larger_than_candidates() -> None:
    delta = _delta()
    candidates = torch.zeros_like(delta, dtype=torch.bool)
    candidates[2] = True
    assert len(select_top_k(delta, candidates, 4).layers) == 4  # exactly all is fine
    with pytest.raises(InputError, match="only 4 candidate"):
        select_top_k(delta, candidates, 5)


@pytest.mark.parametrize("k", [0, -3])
def test_k_below_one(k: int) -> None:
    delta = _delta()
    with pytest.raises(InputError, match="at least 1"):
        select_top_k(delta, torch.ones_like(delta, dtype=torch.bool), k)


def test_select_does_not_modify_inputs() -> None:
    delta = _delta()
    candidates = torch.ones_like(delta, dtype=torch.bool)
    candidates[0, 0] = False
    before_delta, before_mask = delta.clone(), candidates.clone()
    select_top_k(delta, candidates, 3, positive_only=True)
    assert torch.equal(delta, before_delta)
    assert torch.equal(candidates, before_mask)


def test_difference_of_means() -> None:
    pos = torch.tensor([[1.0, 2.0]], dtype=torch.bfloat16)
    neg = torch.tensor([[0.5, 3.0]])
    delta = difference_of_means(pos, neg)
    assert delta.dtype == torch.float32
    assert delta.tolist() == [[0.5, -1.0]]


# --- layer_mask, universal_mask --------------------------------------------------------------


def test_layer_mask_default_skip() -> None:
    mask = layer_mask(4, 3, (0, 1))
    assert mask.shape == (4, 3)
    assert mask.dtype == torch.bool
    assert mask.tolist() == [[False] * 3, [False] * 3, [True] * 3, [True] * 3]


def test_layer_mask_negative_index_and_no_skip() -> None:
    assert layer_mask(4, 2, (-1,))[:, 0].tolist() == [True, True, True, False]
    assert layer_mask(4, 2, ()).all()


@pytest.mark.parametrize("skip", [(4,), (0, 7), (-5,)])
def test_layer_mask_out_of_range(skip: tuple[int, ...]) -> None:
    with pytest.raises(InputError, match=r"out of range.*4 layers"):
        layer_mask(4, 3, skip)


@pytest.mark.parametrize("skip", [(0, 1, 2, 3), (0, 1, 2, -1)])
def test_layer_mask_skipping_every_layer(skip: tuple[int, ...]) -> None:
    with pytest.raises(InputError, match="no candidate layer"):
        layer_mask(4, 3, skip)


def test_layer_mask_result_is_writable() -> None:
    mask = layer_mask(3, 2, (0,))
    mask &= torch.tensor([[True, False]] * 3)  # callers combine it in place
    assert mask.tolist() == [[False, False], [True, False], [True, False]]


@pytest.mark.parametrize("dtype", [torch.bool, torch.uint8, torch.long])
def test_candidate_mask_is_candidate_layers_without_universal_neurons(dtype: torch.dtype) -> None:
    universal = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 0], [1, 1, 1]], dtype=dtype)
    before = universal.clone()
    mask = candidate_mask(4, 3, (0, -1), universal)
    assert mask.dtype == torch.bool
    assert mask.tolist() == [
        [False, False, False],
        [True, False, True],
        [True, True, True],
        [False, False, False],
    ]
    assert torch.equal(universal, before)
    assert torch.equal(candidate_mask(4, 3, (0,)), layer_mask(4, 3, (0,)))  # none known
    with pytest.raises(InputError, match="out of range"):
        candidate_mask(4, 3, (4,), universal)


def test_universal_threshold_is_inclusive_at_point_eight() -> None:
    assert UNIVERSAL_THRESHOLD == 0.8
    frequency = torch.tensor([[0.0, 0.79, 0.8], [0.81, 1.0, 0.5]])
    assert universal_mask(frequency).tolist() == [[False, False, True], [True, True, False]]
    assert universal_mask(frequency, threshold=0.5).tolist() == [
        [False, True, True],
        [True, True, True],
    ]
