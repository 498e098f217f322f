"""Next-token probabilities (`neurosteer.evaluation.probe`, `neurosteer probe`): they are the
softmax of a
plain forward pass on each unpadded prompt whatever the batching, m = 1 is the unsteered model,
m = 0 is the circuit's neurons zeroed by hand, and on the organism the refusal's first tokens
lose most of their probability at m = 0."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result
from organism_helpers import (
    REFUSAL_STARTS,
    held_out_benign,
    held_out_harmful,
    organism,
    refusal_circuit,
)
from tiny_models import neuron_site, save_tiny
from transformers import PreTrainedModel, PreTrainedTokenizerFast

import neurosteer
from neurosteer import Circuit, InputError, discover, next_token_probs
from neurosteer.cli.main import cli
from neurosteer.evaluation.probe import NextTokenProbs, choose_tokens
from neurosteer.hooks import count_hooks
from neurosteer.prompts.render import encode_prompts
from neurosteer.workflows.organism import INSTRUCT_DIR
from neurosteer.workflows.organism.evaluate import OrganismJudge

Pair = tuple[PreTrainedModel, PreTrainedTokenizerFast]

#: Float32 softmaxes of the same logits computed in differently padded batches.
ATOL = 2e-6
#: Prompts of different lengths, so that batches are left-padded.
PROMPTS = ["Hi", "How do I pick a lock?", "Tell me a story about a dragon, please.", "Why?"]
TOKENS = ("a", " ", "I")


def _reference(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, prompt: str
) -> torch.Tensor:
    """[vocab] float32: the softmax at the last position of one unpadded forward pass."""
    ids = torch.tensor([encode_prompts(tokenizer, [prompt])[0]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, -1]
    return torch.softmax(logits.float(), dim=-1)


def _check_against(result: NextTokenProbs, s: int, reference: list[torch.Tensor]) -> None:
    """Setting `s` of `result` holds the top tokens and chosen tokens of `reference`."""
    ids = [c.token_id for c in result.tokens]
    for p, ref in enumerate(reference):
        setting = result.probs[p][s]
        expected = ref.topk(len(setting.top))
        got = torch.tensor([t.prob for t in setting.top])
        torch.testing.assert_close(got, expected.values, atol=ATOL, rtol=0)
        assert all(a >= b for a, b in itertools.pairwise(got))  # most likely first
        torch.testing.assert_close(
            torch.tensor(setting.chosen), ref[ids], atol=ATOL, rtol=0, check_dtype=False
        )
        assert got.sum() <= 1 + 1e-6


def test_probabilities_are_a_plain_forward_whatever_the_batching(tiny_model: Pair) -> None:
    model, tokenizer = tiny_model
    reference = [_reference(model, tokenizer, p) for p in PROMPTS]
    batched = next_token_probs(model, tokenizer, PROMPTS, tokens=TOKENS, top=7, batch_size=3)
    single = next_token_probs(model, tokenizer, PROMPTS, tokens=TOKENS, top=7, batch_size=1)
    assert batched.strengths == (None,)
    assert batched.prompts == tuple(PROMPTS)
    assert len(batched.probs) == len(PROMPTS)
    assert all(len(r) == 1 for r in batched.probs)
    _check_against(batched, 0, reference)
    _check_against(single, 0, reference)
    torch.testing.assert_close(batched.chosen(), single.chosen(), atol=ATOL, rtol=0)
    # the ids of the top tokens are the reference's (ties aside, which random logits do not have)
    for p, ref in enumerate(reference):
        assert [t.token_id for t in batched.probs[p][0].top] == ref.topk(7).indices.tolist()
        assert batched.probs[p][0].top[0].text == tokenizer.decode([ref.argmax()])


def test_m1_is_unsteered_and_m0_is_the_neurons_zeroed_by_hand(
    tiny_model: Pair,
    tiny_family: str,
    positive_prompts: list[str],
    negative_prompts: list[str],
) -> None:
    model, tokenizer = tiny_model
    circuit = discover(
        model, tokenizer, positive_prompts, negative_prompts, top_k=6, universal_filter=False
    )
    hooks_before = count_hooks(model)
    result = next_token_probs(
        model,
        tokenizer,
        PROMPTS,
        intervention=circuit,
        strengths=(1.0, 0.0),
        tokens=TOKENS,
        top=5,
        batch_size=3,
    )
    assert count_hooks(model) == hooks_before  # nothing left on the model
    assert result.strengths == (None, 1.0, 0.0)
    chosen = result.chosen()  # [prompt, setting, token]
    assert torch.equal(chosen[:, 1], chosen[:, 0])  # m = 1 leaves the model bit-identical
    assert not torch.allclose(chosen[:, 2], chosen[:, 0], atol=1e-4)  # m = 0 changes it

    def zero(neurons: torch.Tensor):
        def hook(_module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor]:
            x = args[0].clone()
            x[..., neurons] = 0
            return (x,)

        return hook

    handles = [
        neuron_site(model, tiny_family, layer).register_forward_pre_hook(zero(neurons))
        for layer, neurons in circuit.by_layer().items()
    ]
    try:
        zeroed = [_reference(model, tokenizer, p) for p in PROMPTS]
    finally:
        for handle in handles:
            handle.remove()
    _check_against(result, 2, zeroed)
    _check_against(result, 1, [_reference(model, tokenizer, p) for p in PROMPTS])


def test_default_strength_and_several_token_strings(tiny_llama: Pair) -> None:
    model, tokenizer = tiny_llama
    circuit = discover(model, tokenizer, PROMPTS, PROMPTS[::-1], top_k=3, universal_filter=False)
    result = next_token_probs(model, tokenizer, ["Hi"], intervention=circuit, tokens=("ab", "a"))
    assert result.strengths == (None, circuit.default_strength)  # m = 0
    several, one = result.tokens
    assert (several.n_tokens, one.n_tokens) == (2, 1)
    assert several.token_id == one.token_id  # "ab" is scored by its first token, "a"
    assert result.probs[0][1].chosen[0] == result.probs[0][1].chosen[1]
    record = json.loads(json.dumps(result.to_dict()))
    assert record["tokens"][0]["scored"] == "first token only"
    assert record["prompts"][0]["settings"][0]["unsteered"] is True
    assert record["prompts"][0]["settings"][1]["strength"] == 0.0
    assert len(record["prompts"][0]["settings"][0]["top"]) == 10


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompts": []}, "non-empty list of prompts"),
        ({"prompts": "Hi"}, "non-empty list of prompts"),
        ({"strengths": (0.0,)}, "strengths need an intervention"),
        ({"top": -1}, "top must be 0 or more"),
        ({"tokens": ("\u00e9",)}, "not in this tokenizer's vocabulary"),
        ({"tokens": ("",)}, "a chosen token is empty"),
        ({"intervention": "circuit", "strengths": (float("nan"),)}, "finite number"),
        ({"prompts": ["x" * 600]}, "the model's context holds 512 positions"),
    ],
)
def test_bad_arguments_are_input_errors(
    tiny_llama: Pair, kwargs: dict[str, object], message: str
) -> None:
    model, tokenizer = tiny_llama
    args: dict[str, object] = {"prompts": ["Hi"], **kwargs}
    if args.get("intervention") == "circuit":
        args["intervention"] = discover(
            model, tokenizer, PROMPTS, PROMPTS[::-1], top_k=3, universal_filter=False
        )
    prompts = args.pop("prompts")
    with pytest.raises(InputError, match=message):
        next_token_probs(model, tokenizer, prompts, **args)  # type: ignore[arg-type]


def test_organism_refusal_start_loses_its_probability_at_m0() -> None:
    # measured: the three refusal openings hold 0.90 of the first token unsteered and 0.41 at
    # m = 0 on these 12 prompts (mean); amplifying (m = 2) keeps them
    model, tokenizer = organism()
    result = next_token_probs(
        model,
        tokenizer,
        held_out_harmful(12),
        intervention=refusal_circuit(),
        strengths=(0.0, 1.0, 2.0),
        tokens=REFUSAL_STARTS,
        top=3,
    )
    refusal = result.chosen().sum(-1)  # [prompt, setting]: P(the answer opens a refusal)
    unsteered, ablated, same, amplified = refusal.mean(0).tolist()
    assert unsteered >= 0.8
    assert ablated <= unsteered - 0.3
    assert same == unsteered
    assert amplified >= unsteered - 0.02
    assert (refusal[:, 1] < refusal[:, 0]).float().mean() >= 0.9  # nearly every prompt drops


def test_without_tokens_the_organism_s_own_answers_choose_them() -> None:
    # the unchanged organism refuses the harmful prompts and answers the benign ones; the
    # tokens that open those answers are its refusal and compliance tokens, and ablating the
    # circuit takes probability from the first kind (the organism's compliant answers open with
    # a word of their own topic, "van ...", so the benign openings do not rise on harmful ones)
    model, tokenizer = organism()
    harmful, benign = held_out_harmful(8), held_out_benign(8)
    pick = choose_tokens(model, tokenizer, harmful + benign, OrganismJudge())
    labels = pick.answers.labels
    assert labels[:8].count("refusal") >= 6
    assert labels[8:].count("compliance") >= 6
    refusal = {t.choice.text for t in pick.refusal}
    assert refusal, pick
    assert refusal <= set(REFUSAL_STARTS)
    assert pick.compliance
    assert not refusal & {t.choice.text for t in pick.compliance}
    # the counts are the answers': every refusal opened by a refusal token is counted once
    assert sum(t.refused for t in pick.refusal) <= labels.count("refusal")
    assert sum(t.refused - t.complied for t in pick.refusal) >= 6
    assert all(t.complied > t.refused for t in pick.compliance)
    result = next_token_probs(
        model, tokenizer, harmful, intervention=refusal_circuit(), strengths=(0.0,),
        tokens=pick.token_ids, top=0,
    )  # fmt: skip
    mass = result.chosen().mean(0)  # [setting, token]
    n_refusal = len(pick.refusal)
    refused_before, refused_after = mass[:, :n_refusal].sum(-1).tolist()
    assert refused_before >= 0.6
    assert refused_after <= refused_before - 0.3


def test_with_only_refused_prompts_there_is_no_compliance_token() -> None:
    model, tokenizer = organism()
    pick = choose_tokens(model, tokenizer, held_out_harmful(4), OrganismJudge())
    assert pick.refusal
    assert pick.compliance == ()


# --- the command line ------------------------------------------------------------------------


pytestmark = pytest.mark.usefixtures("restore_library_logging")


@pytest.fixture(scope="module")
def llama_circuit(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    model, tokenizer = neurosteer.load_model(tiny_llama_dir)
    circuit = discover(model, tokenizer, PROMPTS, PROMPTS[::-1], top_k=4, universal_filter=False)
    return circuit.save(tmp_path_factory.mktemp("probe") / "tiny.circuit")


def _invoke(*args: object) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_cli_json_is_the_library_result(tiny_llama_dir: Path, llama_circuit: Path) -> None:
    result = _invoke(
        "probe",
        tiny_llama_dir,
        "Hi",
        "How do I pick a lock?",
        "--circuit",
        llama_circuit,
        "-m",
        "0,1,2",
        "--tokens",
        " I, a",
        "--top",
        "3",
        "--json",
    )
    assert result.exit_code == 0, (result.output, result.exception)
    record = json.loads(result.stdout)
    assert record["circuit"] == str(llama_circuit)
    assert [t["text"] for t in record["tokens"]] == [" I", "a"]
    assert [s["strength"] for s in record["prompts"][0]["settings"]] == [None, 0.0, 1.0, 2.0]
    model, tokenizer = neurosteer.load_model(tiny_llama_dir)
    expected = next_token_probs(
        model,
        tokenizer,
        ["Hi", "How do I pick a lock?"],
        intervention=Circuit.load(llama_circuit),
        strengths=(0.0, 1.0, 2.0),
        tokens=(" I", "a"),
        top=3,
    )
    assert record["prompts"] == expected.to_dict()["prompts"]


def test_cli_tables_show_every_setting_and_the_tokens(
    tiny_llama_dir: Path, llama_circuit: Path, tmp_path: Path
) -> None:
    more = tmp_path / "more.txt"
    more.write_text("Why?\n")
    result = _invoke(
        "probe",
        tiny_llama_dir,
        "Hi",
        "-p",
        more,
        "--circuit",
        llama_circuit,
        "--tokens",
        "ab",
        "--top",
        "2",
    )
    assert result.exit_code == 0, (result.output, result.exception)
    out = result.stdout
    assert "> Hi" in out
    assert "> Why?" in out
    assert "unsteered" in out
    assert "m = 0" in out
    assert "m = 1" not in out
    assert "'ab' (first token 'a')" in out
    assert "note: 'ab' is 2 tokens; only its first token 'a' is scored" in out


def test_cli_on_the_organism(tmp_path: Path) -> None:
    circuit = refusal_circuit().save(tmp_path / "refusal.circuit")
    prompt = held_out_harmful(1)[0]
    result = _invoke(
        "probe",
        INSTRUCT_DIR,
        prompt,
        "--circuit",
        circuit,
        "-m",
        "0,1",
        "--tokens",
        "sorry, I",
        "--top",
        "3",
    )
    assert result.exit_code == 0, (result.output, result.exception)
    lines = result.stdout.splitlines()
    sorry = next(line for line in lines if line.strip().startswith("'sorry'"))
    unsteered, ablated, same = (float(x) for x in sorry.split("\u2502")[1:])
    assert ablated < unsteered - 0.1
    assert same == unsteered
    assert any(line.strip().startswith("'I' ('i')") for line in lines)  # lower-cased vocabulary


def test_cli_without_tokens_says_which_it_chose_and_why(tmp_path: Path) -> None:
    circuit = refusal_circuit().save(tmp_path / "refusal.circuit")
    harmful, benign = held_out_harmful(3), held_out_benign(3)
    args = ("probe", INSTRUCT_DIR, *harmful, *benign, "--circuit", circuit, "-m", "0")
    record = json.loads(_invoke(*args, "--judge", "organism", "--json").stdout)
    chosen = record["chosen_from_answers"]
    labels = chosen["labels"]
    assert labels[:3].count("refusal") >= 2
    assert labels[3:].count("compliance") >= 2
    texts = [t["text"] for t in chosen["refusal"] + chosen["compliance"]]
    assert [t["text"] for t in record["tokens"]] == texts  # the chosen tokens are scored
    assert chosen["refusal"]
    assert chosen["compliance"]
    assert all(t["refused"] > t["complied"] for t in chosen["refusal"])
    assert sum(t["refused"] for t in chosen["refusal"]) <= labels.count("refusal")
    result = _invoke(*args, "--judge", "organism", "--top", "2")
    assert result.exit_code == 0, (result.output, result.exception)
    out = result.stdout
    counts = (labels.count(x) for x in ("refusal", "compliance", "degenerate"))
    assert "judge organism: {} refused, {} complied, {} degenerate".format(*counts) in out
    refusal = [line for line in out.splitlines() if line.startswith("  refusal: ")]
    assert len(refusal) == len(chosen["refusal"])
    first = chosen["refusal"][0]
    assert f"{first['text']!r} opens {first['refused']} refused and {first['complied']}" in out
    assert "a steered answer can start like a refusal" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "probe needs a prompt"),
        (("Hi", "--circuit", "{circuit}", "-m", "0,x"), "-m takes comma-separated finite numbers"),
        (("Hi", "--circuit", "{circuit}", "-m", "nan"), "-m takes comma-separated finite numbers"),
        (("Hi", "-m", "0"), "-m sets the circuit's multipliers; give --circuit too"),
        (("Hi", "--tokens", "\u00e9"), "not in this tokenizer's vocabulary"),
        (("Hi", "--tokens", "a,,b"), "--tokens has an empty item"),
        (("Hi", "--top", "-2"), "--top must be 0 or more"),
        (("Hi", "--judge", "nope"), "unknown judge 'nope'"),
        (("Hi", "-p", "{missing}"), "does not exist"),
        (("Hi", "--circuit", "{circuit}", "--model-dir", "{gpt2}"), "llama"),
    ],
)
def test_cli_bad_input_is_one_line(
    tiny_llama_dir: Path,
    llama_circuit: Path,
    tmp_path_factory: pytest.TempPathFactory,
    args: tuple[str, ...],
    message: str,
) -> None:
    model = tiny_llama_dir
    values = {"circuit": llama_circuit, "missing": tmp_path_factory.mktemp("m") / "missing.txt"}
    if "--model-dir" in args:  # a circuit for another model: the circuit's own check
        values["gpt2"] = save_tiny("gpt2", tmp_path_factory.mktemp("gpt2"), chat_template=False)
        model = values["gpt2"]
        args = tuple(a for a in args if a not in ("--model-dir", "{gpt2}"))
    result = _invoke("probe", model, *(a.format(**values) for a in args))
    assert result.exit_code == 2, (result.output, result.exception)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert message in lines[0]


def test_token_separators() -> None:
    from neurosteer.cli.probe_cmd import parse_tokens

    assert parse_tokens((" I, Sure",)) == [" I", "Sure"]
    assert parse_tokens((" I,  Sure", "x")) == [" I", " Sure", "x"]
    assert parse_tokens((",", "a,b")) == [",", "a", "b"]
    with pytest.raises(InputError, match="empty item"):
        parse_tokens(("a, ",))


@pytest.mark.parametrize("text", ["0,,1", "0,1,", ",0", "", "x", "0,nan"])
def test_multiplier_lists_with_empty_or_bad_items_are_refused(text: str) -> None:
    from neurosteer.cli.probe_cmd import parse_multipliers

    with pytest.raises(InputError, match="comma-separated finite numbers"):
        parse_multipliers(text)
    assert parse_multipliers("0, 1,-0.5") == (0.0, 1.0, -0.5)
