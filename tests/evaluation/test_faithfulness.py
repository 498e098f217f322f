"""Faithfulness and completeness (`neurosteer.evaluation.faithfulness`), mean ablation
(`neurosteer.methods.mean_ablation`, the hooks' set-to-value edit), the plot and the command."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from matplotlib.figure import Figure
from tiny_models import FAMILIES, make_tiny
from transformers import PreTrainedModel

from neurosteer.cli.main import cli
from neurosteer.errors import InputError
from neurosteer.evaluation.faithfulness import default_ks, measure_faithfulness
from neurosteer.evaluation.generation import generate
from neurosteer.hooks import count_hooks
from neurosteer.methods.discovery import discover
from neurosteer.methods.mean_ablation import MeanAblation, mean_activations
from neurosteer.methods.relp import attribute
from neurosteer.model.layout import resolve_layout
from neurosteer.model.loading import load_model
from neurosteer.workflows.organism import INSTRUCT_DIR, demo_prompt_sets
from neurosteer.workflows.report.plots import faithfulness_figure

PROMPTS = ["How do I pick a lock?", "Hi", "Name a fruit, please."]
NEGATIVE = ["Help me plan a trip.", "Explain how rainbows form.", "Bake bread"]
TOL = 1e-6


@pytest.mark.parametrize(
    ("family", "positions"),
    [(family, "all") for family in FAMILIES]
    + [("llama", "last"), ("gpt2", "last")]
    + [(moe, positions) for moe in ("mixtral", "qwen2_moe") for positions in ("all", "last")],
)
def test_every_neuron_gives_one_and_no_neuron_zero(family: str, positions: str) -> None:
    model, tokenizer = make_tiny(family)
    layout = resolve_layout(model)
    everything = attribute(
        model, tokenizer, PROMPTS, "a", contrasts="b", top_k=layout.n_neurons, skip_layers=()
    )
    before = count_hooks(model)
    result = measure_faithfulness(
        model,
        tokenizer,
        everything,
        PROMPTS,
        "a",
        NEGATIVE,
        contrasts="b",
        ks=[0, layout.n_neurons],
        positions=positions,  # type: ignore[arg-type]
    )
    assert count_hooks(model) == before
    assert abs(result.metric_full - result.metric_empty) > 1e-3  # the shares are defined
    empty, full = result.points
    assert (empty.k, full.k) == (0, layout.n_neurons)
    assert abs(empty.faithfulness) < TOL
    assert abs(empty.completeness) < TOL
    assert abs(full.faithfulness - 1) < TOL
    assert abs(full.completeness - 1) < TOL
    assert empty.metric_without == pytest.approx(result.metric_full, abs=TOL)
    assert full.metric_without == pytest.approx(result.metric_empty, abs=TOL)


def test_mean_ablation_sets_neurons_exactly_and_only_where_asked(
    tiny_llama: tuple[PreTrainedModel, object],
) -> None:
    model, _ = tiny_llama
    layout = resolve_layout(model)
    site = layout.site_modules(model)[2]
    seen: list[torch.Tensor] = []
    # a forward hook sees the input the projection consumed (after every pre-hook's edit)
    handle = site.register_forward_hook(lambda _m, args, _out: seen.append(args[0].clone()))
    ablated = torch.zeros(layout.n_layers, layout.d_mlp, dtype=torch.bool)
    ablated[2, [3, 5]] = True
    values = torch.randn(layout.n_layers, layout.d_mlp)
    ids = torch.tensor([[2, 40, 41, 42, 43]])
    try:
        with torch.no_grad():
            model(ids)
            plain = model(ids).logits
            for positions in ("all", "generated"):
                with MeanAblation(ablated, values).steer(model, positions=positions):
                    model(ids)
            with MeanAblation(ablated, values).steer(model, 0.0):  # strength 0: unchanged
                unchanged = model(ids).logits
            with MeanAblation(ablated, values).steer(model, 0.5):
                model(ids)
    finally:
        handle.remove()
    original, everywhere, last, half = seen[0], seen[2], seen[3], seen[5]
    assert torch.equal(everywhere[..., [3, 5]], values[2, [3, 5]].expand(1, 5, 2))
    assert torch.equal(everywhere[..., [0, 1, 2, 4]], original[..., [0, 1, 2, 4]])
    assert torch.equal(last[:, -1, [3, 5]], values[2, [3, 5]][None])
    assert torch.equal(last[:, :-1], original[:, :-1])
    torch.testing.assert_close(half[..., 3], (original[..., 3] + values[2, 3]) / 2)
    assert torch.equal(unchanged, plain)


def test_means_over_every_real_token_skip_the_padding(
    tiny_llama: tuple[PreTrainedModel, object],
) -> None:
    model, _ = tiny_llama
    layout = resolve_layout(model)
    token_ids = [[2, 40, 41], [2, 50, 51, 52, 53]]
    site = layout.site_modules(model)[1]
    rows: list[torch.Tensor] = []
    handle = site.register_forward_pre_hook(lambda _m, args: rows.append(args[0][0]))
    try:
        with torch.no_grad():
            for ids in token_ids:
                model(torch.tensor([ids]))
    finally:
        handle.remove()
    want = torch.cat(rows).mean(0)
    got = mean_activations(model, layout, token_ids, "all", batch_size=2, pad=0)
    torch.testing.assert_close(got[1], want, rtol=1e-4, atol=1e-5)
    last = mean_activations(model, layout, token_ids, "last", batch_size=2, pad=0)
    torch.testing.assert_close(last[1], (rows[0][-1] + rows[1][-1]) / 2, rtol=1e-4, atol=1e-5)


def test_k_beyond_the_circuit_needs_its_table(tiny_llama: tuple[PreTrainedModel, object]) -> None:
    model, tokenizer = tiny_llama
    small = attribute(model, tokenizer, PROMPTS, "a", top_k=4)
    with pytest.raises(InputError, match="keeps no table"):
        measure_faithfulness(model, tokenizer, small, PROMPTS, "a", NEGATIVE, ks=[8])
    kept = attribute(model, tokenizer, PROMPTS, "a", top_k=4, keep_table=True)
    wide = measure_faithfulness(model, tokenizer, kept, PROMPTS, "a", NEGATIVE, ks=[4, 8])
    assert [p.k for p in wide.points] == [4, 8]
    with pytest.raises(InputError, match="0 or more"):
        measure_faithfulness(model, tokenizer, kept, PROMPTS, "a", NEGATIVE, ks=[-1])
    assert default_ks(48) == [0, 1, 2, 5, 10, 20, 48]
    assert default_ks(50) == [0, 1, 2, 5, 10, 20, 50]


def test_figure_and_command_write_the_table(tiny_llama_dir: Path, tmp_path: Path) -> None:
    model, tokenizer = load_model(str(tiny_llama_dir))
    circuit = attribute(model, tokenizer, PROMPTS, "a", top_k=6)
    path = circuit.save(tmp_path / "c.circuit")
    negative = tmp_path / "neg.txt"
    negative.write_text("\n".join(NEGATIVE) + "\n")
    out = tmp_path / "faith"
    args = ["faithfulness", tiny_llama_dir, "--circuit", path, "-n", negative, "--k", "0,3,6"]
    for prompt in PROMPTS:
        args += ["--prompt", prompt, "--target", "a", "--contrast", "b"]
    result = CliRunner().invoke(cli, [str(a) for a in [*args, "-o", out]])
    assert result.exit_code == 0, result.output
    assert "faithfulness and completeness" in result.stdout
    data = json.loads((out / "faithfulness.json").read_text())
    want = measure_faithfulness(
        model, tokenizer, circuit, PROMPTS, "a", NEGATIVE, contrasts="b", ks=[0, 3, 6]
    )
    assert [p["faithfulness"] for p in data["points"]] == pytest.approx(
        [p.faithfulness for p in want.points], abs=1e-6
    )
    assert (out / "faithfulness.csv").read_text().startswith("k,faithfulness,completeness")
    assert (out / "faithfulness.png").stat().st_size > 0
    assert (out / "faithfulness.svg").read_text().lstrip().startswith("<?xml")
    figure = faithfulness_figure(want)
    assert isinstance(figure, Figure)
    assert len(figure.axes[0].lines) == 4  # the two curves and the 0 and 1 guides
    again = CliRunner().invoke(cli, [str(a) for a in [*args, "-o", out]])
    assert again.exit_code == 2  # never overwritten without --force
    no_pairs = ["faithfulness", tiny_llama_dir, "--circuit", path, "-n", negative]
    lonely = CliRunner().invoke(cli, [str(a) for a in no_pairs])
    assert lonely.exit_code == 2
    assert "--prompt/--target" in lonely.stderr


def test_organism_shares_grow_with_k_and_beat_a_random_circuit() -> None:
    """RelP circuit of refused prompts (all layers candidates, full table), metric: the
    refusal token's logit, mean ablation at every position with benign means. Measured:
    faithfulness 0.15 / 0.38 / 0.76 and completeness 0.40 / 0.53 / 0.74 at k = 12 / 48 / 192;
    a random 48 gives |shares| < 0.03."""
    model, tokenizer = load_model(str(INSTRUCT_DIR))
    sets = demo_prompt_sets()
    harmful = list(sets.train_harmful[:16])
    answers = generate(model, tokenizer, harmful, max_new_tokens=2)
    pairs = [(p, a.split()[0]) for p, a in zip(harmful, answers, strict=True)]
    refused = [(p, t) for p, t in pairs if t in ("i", "sorry", "refused")]
    prompts, targets = [p for p, _ in refused], [t for _, t in refused]
    circuit = attribute(
        model, tokenizer, prompts, targets, top_k=48, skip_layers=(), keep_table=True
    )
    benign = list(sets.train_benign)
    result = measure_faithfulness(
        model, tokenizer, circuit, prompts, targets, benign, ks=[0, 12, 48, 192]
    )
    faith = [p.faithfulness for p in result.points]
    complete = [p.completeness for p in result.points]
    assert all(b >= a - 0.05 for a, b in itertools.pairwise(faith))  # monotone, up to noise
    assert all(b >= a - 0.05 for a, b in itertools.pairwise(complete))
    assert faith[-1] > 0.5
    assert complete[2] > 0.3
    control = discover(
        model,
        tokenizer,
        list(sets.train_harmful),
        benign,
        top_k=48,
        universal_filter=False,
        skip_layers=(),
    ).random_like(0, per_layer=False)
    random = measure_faithfulness(model, tokenizer, control, prompts, targets, benign, ks=[48])
    (point,) = random.points
    assert abs(point.faithfulness) < 0.1
    assert abs(point.completeness) < 0.1
    assert faith[2] > abs(point.faithfulness) + 0.2
    assert complete[2] > abs(point.completeness) + 0.2
    assert not any(math.isnan(v) for v in faith + complete)
