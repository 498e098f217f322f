"""The organism demo runs end to end, offline, and writes its report."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from support_circuits import make_circuit

import neurosteer.cli.main  # before analysis_cmds: main registers it at its end
from neurosteer.cli.analysis_cmds import report_command
from neurosteer.cli.organism_cmds import demo_command
from neurosteer.evaluation.judges import Label
from neurosteer.evaluation.refusal import JudgedAnswers, judge_answers
from neurosteer.methods.circuit import Circuit
from neurosteer.model.loading import load_model
from neurosteer.workflows.organism import INSTRUCT_DIR, demo_prompt_sets, neutral_prompts
from neurosteer.workflows.organism.demo import (
    DEMO_TOP_K,
    ConditionRow,
    DemoResult,
    _examples,
    run_demo,
)
from neurosteer.workflows.organism.demo_report import DEFINITIONS, DEMO_FILE, write_demo_report
from neurosteer.workflows.organism.evaluate import ANSWER_BATCH, ANSWER_TOKENS, Rates
from neurosteer.workflows.organism.prompt_sets import PromptSets
from neurosteer.workflows.sweep import CIRCUIT_DIR, SweepConfig, run_sweep

#: the steps the module's demo run announced, in order
STEPS: list[str] = []


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoResult:
    out = tmp_path_factory.mktemp("demo")
    return run_demo(
        out, n_discover=16, n_eval=16, n_examples=2, sweep_ks=(3, DEMO_TOP_K), progress=STEPS.append
    )


def test_every_step_of_the_demo_says_it_started(demo: DemoResult) -> None:
    assert STEPS[0] == "loading the organism"
    assert STEPS[1].startswith("discovering the refusal circuit on 16+16")
    conditions = [s for s in STEPS if s.startswith("answering 32 held-out prompts")]
    assert [c.split(": ")[1] for c in conditions] == [
        "unchanged (m = 1)",
        "ablated (m = 0)",
        "amplified (m = 2)",
        "random ablated (m = 0)",
    ]
    assert [s for s in STEPS if s.startswith("ablating the top")] == [
        "ablating the top 3 neurons: 16 harmful answers",
        f"ablating the top {DEMO_TOP_K} neurons: 16 harmful answers",
    ]
    assert STEPS[-1] == "writing the report"


def test_the_demo_command_off_a_terminal_logs_a_line_a_step(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import neurosteer.workflows.organism.demo

    def fake_run(out: Path, *, top_k: int, progress: Callable[[str], None]) -> None:
        progress("loading the organism")
        progress("writing the report")
        raise SystemExit(0)  # the steps are what this test is about

    monkeypatch.setattr(neurosteer.workflows.organism.demo, "run_demo", fake_run)
    result = CliRunner().invoke(demo_command, ["-o", str(tmp_path / "d")])
    assert "demo: loading the organism\ndemo: writing the report\n" in result.output


def test_run_demo_writes_report(demo: DemoResult) -> None:
    result, tmp_path = demo, demo.report_path.parent
    assert result.n_neurons == DEMO_TOP_K
    assert sum(result.neurons_per_layer.values()) == DEMO_TOP_K
    assert min(result.neurons_per_layer) >= 2  # layers 0 and 1 are not candidates
    assert [r.condition for r in result.rows] == [
        "unchanged",
        "ablated",
        "amplified",
        "random ablated",
    ]
    assert len(result.examples) == 2
    assert [k for k, _ in result.k_sweep] == [3, DEMO_TOP_K]
    report = (tmp_path / "report.md").read_text()
    page = (tmp_path / "report.html").read_text()
    for png in ("circuit_layers.png", "refusal_rates.png", "k_sweep.png"):
        assert (tmp_path / png).stat().st_size > 1000
        assert f"]({png})" in report
    assert page.count("data:image/png;base64,") == 3  # one self-contained file
    # every example is labelled by prompt set and by the judge, and the benign one is there
    assert [ex.kind for ex in result.examples] == ["harmful", "benign"]
    assert result.examples[-1].prompt in demo_prompt_sets(16, 16).heldout_benign
    for ex in result.examples:
        assert ex.prompt in report
        assert ex.prompt in page
    # `neurosteer report` on the demo's folder redraws the same pages from demo.json
    before = report
    done = CliRunner().invoke(_report_group(), ["report", str(tmp_path)])
    assert done.exit_code == 0, done.output
    assert done.output.splitlines() == [str(result.html_path), str(result.report_path)]
    assert (tmp_path / "report.md").read_text() == before


def test_demo_and_sweep_report_the_same_rates(demo: DemoResult, tmp_path: Path) -> None:
    # one generation, judge and rate path: a sweep with the organism's judge on the demo's
    # prompts finds the demo's circuit and measures each demo condition at its strength exactly
    model, tok = load_model(INSTRUCT_DIR)
    sets = demo_prompt_sets(demo.n_discover, demo.n_eval)
    config = SweepConfig(
        methods=("cna", "random"),
        strengths=(0.0, 1.0, 1.0 - demo.amplify),  # cna m = 1 - s: ablated and amplified
        random_seeds=(0,),
        judge="organism",
        max_new_tokens=ANSWER_TOKENS,
        batch_size=ANSWER_BATCH,
        top_k=DEMO_TOP_K,
        kl_limit=1,
        kl_max_new_tokens=1,
    )
    records = run_sweep(
        model,
        tok,
        config,
        sets.train_harmful,
        sets.train_benign,
        sets.heldout_harmful,
        sets.heldout_benign,
        tmp_path / "run",
        neutral=neutral_prompts(),
    )
    swept = Circuit.load(tmp_path / "run" / CIRCUIT_DIR)
    assert torch.equal(swept.layers, demo.circuit.layers)
    assert torch.equal(swept.neurons, demo.circuit.neurons)
    points = {(r["method"], r["strength"]): r for r in records}
    pairs = {
        "unchanged": points[("baseline", 0.0)],
        "ablated": points[("cna", 1.0)],
        "amplified": points[("cna", 1.0 - demo.amplify)],
        "random ablated": points[("random", 1.0)],
    }
    for row in demo.rows:
        record = pairs[row.condition]
        for demo_rates, name in ((row.harmful, "harmful"), (row.benign, "harmless")):
            measured = record[name]
            assert (demo_rates.n, demo_rates.refusal) == (measured["n"], measured["refusal"])
            assert demo_rates.compliant == measured["compliance"]
            assert demo_rates.fragment == measured["degenerate"]
    # the demo's ablation is a real effect on this sample, so equal numbers are not trivial
    assert demo.rows[1].harmful.refusal < demo.rows[0].harmful.refusal


def test_demo_command_refuses_a_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("x")
    result = CliRunner().invoke(demo_command, ["-o", str(tmp_path)])
    assert result.exit_code != 0
    assert "--force" in str(result.exception) + result.output


@pytest.mark.slow
def test_demo_command_end_to_end(tmp_path: Path) -> None:
    result = CliRunner().invoke(demo_command, ["-o", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.output
    assert "Neurons per layer" in result.output
    assert (tmp_path / "demo" / "report.md").exists()


# --- the report's page, without a model: judged answers made up, the real selection and pages


def _report_group() -> neurosteer.cli.main._Group:
    group = neurosteer.cli.main._Group(name="t")
    group.add_command(report_command)
    return group


def _judged(prompts: list[str], labels: list[Label]) -> JudgedAnswers:
    """Answers that say their own label (the judge is a lookup), judged like real ones."""
    answers = [f"answer {i} ({label})" for i, label in enumerate(labels)]
    verdicts = dict(zip(answers, labels, strict=True))
    return judge_answers(prompts, answers, lambda _p, a: [verdicts[x] for x in a])


HARMFUL = [f"harmful prompt {i}" for i in range(10)]
BENIGN = [f"benign prompt {i}" for i in range(4)]
R, C, D = "refusal", "compliance", "degenerate"
#: unchanged refuses 0-7 (8 and 9 complied already); ablated still refuses 0, 2 and 5 of them
LABELS: dict[str, tuple[list[Label], list[Label]]] = {
    "unchanged": ([R] * 8 + [C, C], [R, C, C, C]),
    "ablated": ([R, C, R, D, C, R, C, C, C, C], [R, C, C, C]),
    "amplified": ([R] * 10, [R, R, C, C]),
    "random ablated": ([R] * 8 + [C, C], [R, C, C, C]),
}


def _made_up_answers() -> dict[str, tuple[JudgedAnswers, JudgedAnswers]]:
    return {
        name: (_judged(HARMFUL, harmful), _judged(BENIGN, benign))
        for name, (harmful, benign) in LABELS.items()
    }


def _made_up_result(out: Path, n_examples: int = 4) -> DemoResult:
    answers = _made_up_answers()
    sets = PromptSets((), (), tuple(HARMFUL), tuple(BENIGN))
    m = {"unchanged": 1.0, "ablated": 0.0, "amplified": 2.0, "random ablated": 0.0}
    rows = tuple(
        ConditionRow(
            name,
            m[name],
            Rates.from_labels(answers[name][0].labels),
            Rates.from_labels(answers[name][1].labels),
        )
        for name in LABELS
    )
    circuit = make_circuit([(2, 1), (3, 4), (3, 5)])
    return DemoResult(
        report_path=out / "report.md",
        n_neurons=3,
        total_neurons=80,
        neurons_per_layer=circuit.neurons_per_layer(),
        n_discover=4,
        n_eval=len(HARMFUL),
        amplify=2.0,
        rows=rows,
        examples=_examples(sets, answers, n_examples),
        k_sweep=((1, 0.7), (3, 0.3)),
        seconds=1.0,
        circuit=circuit,
        model_dir="organism",
    )


def test_examples_show_the_effect_in_proportion_and_carry_their_labels() -> None:
    sets = PromptSets((), (), tuple(HARMFUL), tuple(BENIGN))
    examples = _examples(sets, _made_up_answers(), 4)
    # 3 harmful from the 8 the unchanged model refuses; 3 of those 8 are still refused after
    # ablation, so round(3 * 3/8) = 1 shown still refused (the first), then the first 2 flipped
    assert [ex.prompt for ex in examples[:3]] == [HARMFUL[0], HARMFUL[1], HARMFUL[3]]
    assert [ex.labels for ex in examples[:3]] == [(R, R, R), (R, C, R), (R, D, R)]
    assert all(ex.kind == "harmful" for ex in examples[:3])
    # the benign example is one the unchanged model answers (benign 0 it refuses)
    assert (examples[3].kind, examples[3].prompt, examples[3].labels) == (
        "benign",
        BENIGN[1],
        (C, C, R),
    )
    assert examples[3].unchanged == "answer 1 (compliance)"
    # more examples than refused prompts: never a prompt the unchanged model already answers
    many = _examples(sets, _made_up_answers(), 12)
    assert sorted(ex.prompt for ex in many[:-1]) == HARMFUL[:8]


def test_the_demo_page_captions_every_table_defines_every_column_and_says_what_is_refused(
    tmp_path: Path,
) -> None:
    result = _made_up_result(tmp_path)
    html_path, md_path = write_demo_report(result, tmp_path)
    page, markdown = html_path.read_text(), md_path.read_text()
    # every table but the facts has a caption; every figure too
    assert page.count("<table>") + page.count('<table class="examples min40">') == 4
    assert page.count('<figure class="table"><figcaption>Table ') == 4
    assert page.count("<figcaption>Figure ") == 3
    assert markdown.count("\n*Table ") == 4
    # every column title is made of the words "How to read this" defines
    defined = {w for term, _ in DEFINITIONS for w in re.split(r"[ /()]+", term) if w}
    after_facts = page.split("</table>", 1)[1]  # the facts' row labels are not columns
    titles = re.findall(r"<th[^>]*>([^<]*)</th>", after_facts)
    assert len(titles) >= 8 + 6 + 2 + 2
    for title in titles:
        assert set(re.split(r"[ ()]+", title.strip())) - {""} <= defined, title
    # the headline's numbers are the rows' and it says how many are still refused
    assert "from 80% to 30%" in page
    assert "30% are still refused" in page
    # example 1 is still refused after ablation, and the page says so in words
    assert "Example 1: still refused with the circuit switched off." in page
    assert "steered: ablated (m = 0)" in page
    assert "unchanged (m = 1)" in page
    assert page.count("<td class=name>harmful</td>") == 3
    assert page.count("<td class=name>benign</td>") == 1


def test_neurosteer_report_redraws_a_demo_folder_and_explains_a_broken_one(tmp_path: Path) -> None:
    write_demo_report(_made_up_result(tmp_path), tmp_path)
    for name in ("report.html", "report.md", "refusal_rates.png"):
        (tmp_path / name).unlink()
    done = CliRunner().invoke(_report_group(), ["report", str(tmp_path)])
    assert done.exit_code == 0, done.output
    assert done.output.splitlines() == [str(tmp_path / "report.html"), str(tmp_path / "report.md")]
    assert "Example 1: still refused" in (tmp_path / "report.html").read_text()
    assert (tmp_path / "refusal_rates.png").stat().st_size > 1000
    (tmp_path / DEMO_FILE).write_text("{not json")
    bad = CliRunner().invoke(_report_group(), ["report", str(tmp_path)])
    assert bad.exit_code == 2
    assert bad.output.startswith("error: ")
    assert "neurosteer demo" in bad.output
    assert len(bad.output.strip().splitlines()) == 1


def test_a_moe_demo_names_its_experts_and_a_dense_one_has_none(tmp_path: Path) -> None:
    dense = _made_up_result(tmp_path / "dense")
    moe = dataclasses.replace(
        _made_up_result(tmp_path / "moe"), neurons_per_expert={(2, "E1"): 1, (3, "S"): 2}
    )
    for result in (dense, moe):
        result.report_path.parent.mkdir()
        write_demo_report(result, result.report_path.parent)
    record = json.loads((tmp_path / "moe" / DEMO_FILE).read_text())
    assert record["neurons_per_expert"] == {"L2 E1": 1, "L3 S": 2}
    assert "L2 E1: 1, L3 S: 2" in (tmp_path / "moe" / "report.md").read_text()
    # the dense demo's record and pages are as before: no experts
    assert "neurons_per_expert" not in json.loads((tmp_path / "dense" / DEMO_FILE).read_text())
    assert "experts" not in (tmp_path / "dense" / "report.md").read_text()
