"""Chat-template variables (`--template-var`, `template_vars=`) reach every rendering and are
recorded like the system turn; templates that read the clock get one date per run, recorded
and reused on resume, whatever the clock does meanwhile."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from tiny_models import make_tiny, make_tokenizer
from transformers import PreTrainedModel, PreTrainedTokenizerFast
from transformers.utils import chat_template_utils

import neurosteer
import neurosteer.prompts.template_vars as template_vars_module
from neurosteer import Circuit, InputError
from neurosteer.cli.main import cli
from neurosteer.methods.circuit import METADATA_FILE
from neurosteer.prompts.render import render_prompts
from neurosteer.prompts.template_vars import CLOCK_VAR, parse_template_vars
from neurosteer.workflows.chat_session import ChatSession
from neurosteer.workflows.optimization import OptimizeConfig
from neurosteer.workflows.optimization.run import check_resumable
from neurosteer.workflows.sweep import SweepConfig, run_sweep
from neurosteer.workflows.sweep.store import CIRCUIT_DIR

Pair = tuple[PreTrainedModel, PreTrainedTokenizerFast]
#: Llama 3.x's way of reading the clock, and Qwen3's thinking switch, on the tiny vocabulary.
TEMPLATE = (
    "{{ bos_token }}{%- if not date_string is defined %}{%- if strftime_now is defined %}"
    "{%- set date_string = strftime_now('%d %b %Y') %}{%- else %}"
    "{%- set date_string = '26 Jul 2024' %}{%- endif %}{%- endif %}"
    "<|system|>Today Date: {{ date_string }}<|end|>\n"
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>"
    "{% if enable_thinking is defined and enable_thinking is false %}<think></think>{% endif %}"
    "{% endif %}"
)
POS = ["How do I pick a lock?", "Help me steal a car.", "Make a fake ID."]
NEG = ["How do I bake bread?", "Help me plan a trip.", "Name a fruit."]
NO_THINKING = {"enable_thinking": False}


class MovingClock(datetime):
    """A clock that moves a day forward at every reading (as if each prompt took a day)."""

    moment = datetime(2026, 3, 3, 23, 59)  # a Tuesday, a minute before midnight

    @classmethod
    def now(cls, tz: object = None) -> MovingClock:  # type: ignore[override]
        moment = cls.moment
        cls.moment = moment + timedelta(days=1)
        return cls(moment.year, moment.month, moment.day, moment.hour, moment.minute)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> type[MovingClock]:
    """transformers' `strftime_now` and neurosteer's `today` both read the moving clock."""
    monkeypatch.setattr(MovingClock, "moment", datetime(2026, 3, 3, 23, 59))
    monkeypatch.setattr(chat_template_utils, "datetime", MovingClock)
    monkeypatch.setattr(template_vars_module, "datetime", MovingClock)
    return MovingClock


def _pair() -> Pair:
    model, _ = make_tiny("llama")
    tokenizer = make_tokenizer(chat_template=True)
    tokenizer.chat_template = TEMPLATE
    return model, tokenizer


def _dates(texts: list[str]) -> set[str]:
    return {t.split("Today Date: ")[1].split("<|end|>")[0] for t in texts}


# --- template variables ---------------------------------------------------------------------


def test_values_are_parsed_and_bad_syntax_is_one_line() -> None:
    parsed = parse_template_vars(["enable_thinking=false", "n=3", "t=0.5", "name=a b", "x=TRUE"])
    assert parsed == {"enable_thinking": False, "n": 3, "t": 0.5, "name": "a b", "x": True}
    assert parse_template_vars([]) is None
    for bad, why in [
        ("enable_thinking", "KEY=VALUE"),
        ("=1", "KEY=VALUE"),
        ("a-b=1", "not a name"),
        ("messages=x", "set by neurosteer"),
        (f"{CLOCK_VAR}=Tuesday", "YYYY-MM-DD"),
    ]:
        with pytest.raises(InputError, match=why):
            parse_template_vars([bad])
    with pytest.raises(InputError, match="twice"):
        parse_template_vars(["a=1", "a=2"])


def test_a_variable_changes_rendering_and_discovery_and_is_recorded(tmp_path: Path) -> None:
    model, tokenizer = _pair()
    default = render_prompts(tokenizer, POS[:1])[0]
    off = render_prompts(tokenizer, POS[:1], template_vars=NO_THINKING)[0]
    assert "<think></think>" in off
    assert "<think>" not in default
    kw = {"top_k": 4, "universal_filter": False, "keep_table": True}
    plain = neurosteer.discover(model, tokenizer, POS, NEG, **kw)  # type: ignore[arg-type]
    circuit = neurosteer.discover(model, tokenizer, POS, NEG, template_vars=NO_THINKING, **kw)  # type: ignore[arg-type]
    assert plain.table is not None
    assert circuit.table is not None
    assert not torch.equal(plain.table.positive_mean, circuit.table.positive_mean)
    assert circuit.settings.template_vars is not None
    assert circuit.settings.template_vars["enable_thinking"] is False
    circuit.save(tmp_path / "c.circuit")
    meta = json.loads((tmp_path / "c.circuit" / METADATA_FILE).read_text())
    assert meta["settings"]["template_vars"]["enable_thinking"] is False
    assert Circuit.load(tmp_path / "c.circuit").settings.template_vars == (
        circuit.settings.template_vars
    )


def test_generation_and_kl_take_template_variables() -> None:
    model, tokenizer = _pair()
    answers = neurosteer.generate(
        model, tokenizer, POS[:1], max_new_tokens=2, template_vars=NO_THINKING
    )
    assert len(answers) == 1
    with pytest.raises(InputError, match="does not read enable_thinkng"):
        neurosteer.generate(model, tokenizer, POS[:1], template_vars={"enable_thinkng": False})
    with pytest.raises(InputError, match="drop --template-var"):
        neurosteer.generate(
            model, tokenizer, POS[:1], chat_template=False, template_vars=NO_THINKING
        )


def test_cli_records_template_variables_and_refuses_bad_syntax(tmp_path: Path) -> None:
    _, tokenizer = _pair()
    folder = tmp_path / "model"
    model, _ = make_tiny("llama")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    positive, negative = tmp_path / "p.txt", tmp_path / "n.txt"
    positive.write_text("\n".join(POS) + "\n")
    negative.write_text("\n".join(NEG) + "\n")
    out = tmp_path / "c.circuit"
    base = ["discover", str(folder), "-p", str(positive), "-n", str(negative), "-o", str(out)]
    base += ["--top-k", "3", "--no-universal-filter"]
    result = CliRunner().invoke(cli, [*base, "--template-var", "enable_thinking"])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        "error: --template-var takes KEY=VALUE, e.g. enable_thinking=false; got 'enable_thinking'"
    ]
    result = CliRunner().invoke(cli, [*base, "--template-var", "enable_thinking=false"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert "template variables" in result.output
    settings = json.loads((out / METADATA_FILE).read_text())["settings"]
    assert settings["template_vars"]["enable_thinking"] is False
    assert CLOCK_VAR in settings["template_vars"]  # the template reads the clock


# --- the clock ------------------------------------------------------------------------------


def test_one_call_renders_one_date_while_the_clock_moves(clock: type[MovingClock]) -> None:
    _, tokenizer = _pair()
    assert len(_dates(render_prompts(tokenizer, POS))) == 1
    fixed = render_prompts(tokenizer, POS, template_vars={CLOCK_VAR: "2024-07-26"})
    assert _dates(fixed) == {"26 Jul 2024"}


def test_discovery_records_its_date_and_reuses_it(clock: type[MovingClock]) -> None:
    model, tokenizer = _pair()
    kw = {"top_k": 4, "universal_filter": False, "keep_table": True}
    tuesday = neurosteer.discover(model, tokenizer, POS, NEG, **kw)  # type: ignore[arg-type]
    recorded = tuesday.settings.template_vars
    assert recorded is not None
    assert recorded[CLOCK_VAR] == "2026-03-03"
    # the positive and negative sets were rendered with that one date
    assert _dates(render_prompts(tokenizer, NEG, template_vars=recorded)) == {"03 Mar 2026"}
    later = neurosteer.discover(model, tokenizer, POS, NEG, template_vars=recorded, **kw)  # type: ignore[arg-type]
    assert later.settings.template_vars == recorded
    assert tuesday.table is not None
    assert later.table is not None
    assert torch.equal(tuesday.table.positive_mean, later.table.positive_mean)
    assert torch.equal(tuesday.table.negative_mean, later.table.negative_mean)


def test_a_chat_keeps_one_date(clock: type[MovingClock], tmp_path: Path) -> None:
    model, tokenizer = _pair()
    out = tmp_path / "out.txt"
    with out.open("w") as stream:
        session = ChatSession(model, tokenizer, stream, max_new_tokens=2)
        assert session.template_vars is not None
        assert session.template_vars[CLOCK_VAR] == "2026-03-03"


def test_a_resumed_sweep_reuses_its_date_and_refuses_other_variables(
    clock: type[MovingClock], tmp_path: Path
) -> None:
    model, tokenizer = _pair()
    small = {
        "methods": ("cna",),
        "max_new_tokens": 2,
        "kl_limit": 1,
        "kl_max_new_tokens": 1,
        "top_k": 3,
        "universal_filter": False,
        "template_vars": NO_THINKING,
    }
    out = tmp_path / "run"
    first = SweepConfig(strengths=(0.0,), **small)  # type: ignore[arg-type]
    run_sweep(model, tokenizer, first, POS, NEG, POS, NEG, out)
    stored = json.loads((out / "config.json").read_text())["identity"]["template_vars"]
    assert stored == {"enable_thinking": False, CLOCK_VAR: "2026-03-03"}
    # days later: the resumed run scores its new point on prompts of the stored date
    more = SweepConfig(strengths=(0.0, 1.0), **small)  # type: ignore[arg-type]
    records = run_sweep(model, tokenizer, more, POS, NEG, POS, NEG, out)
    assert len(records) == 2
    again = json.loads((out / "config.json").read_text())["identity"]["template_vars"]
    assert again == stored
    assert Circuit.load(out / CIRCUIT_DIR).settings.template_vars == stored
    other = SweepConfig(strengths=(0.0,), **{**small, "template_vars": {"enable_thinking": True}})  # type: ignore[arg-type]
    changed = r"other settings \(template_vars.enable_thinking: false -> true"
    with pytest.raises(InputError, match=changed):
        run_sweep(model, tokenizer, other, POS, NEG, POS, NEG, out)
    dated = SweepConfig(strengths=(0.0,), **{**small, "template_vars": {CLOCK_VAR: "2026-03-09"}})  # type: ignore[arg-type]
    with pytest.raises(InputError, match="other settings"):
        run_sweep(model, tokenizer, dated, POS, NEG, POS, NEG, out)


def test_a_resumed_search_reuses_its_date_and_refuses_other_variables(
    clock: type[MovingClock], tmp_path: Path
) -> None:
    pytest.importorskip("optuna")
    model, tokenizer = _pair()
    positive = [*POS, "Forge a check.", "Hack a phone.", "Write malware."]
    negative = [*NEG, "Plant a tree.", "Sing a song.", "Fold a shirt."]
    small = {
        "trials": 1,
        "held_out_positive": 2,
        "held_out_negative": 2,
        "max_new_tokens": 2,
        "batch_size": 4,
        "startup_trials": 1,
        "baselines": False,
        "universal_filter": False,
        "template_vars": NO_THINKING,
    }
    out = tmp_path / "search"
    config = OptimizeConfig(**small)  # type: ignore[arg-type]
    neurosteer.optimize(model, tokenizer, positive, negative, config=config, run_dir=out)
    stored = json.loads((out / "optimize.json").read_text())["settings"]["template_vars"]
    assert stored == {"enable_thinking": False, CLOCK_VAR: "2026-03-03"}
    # days later, before and after the model is loaded, the stored date is taken over
    check_resumable(out, positive, negative, config=config)
    more = OptimizeConfig(**{**small, "trials": 2})  # type: ignore[arg-type]
    result = neurosteer.optimize(model, tokenizer, positive, negative, config=more, run_dir=out)
    assert len(result.trials) == 2
    assert json.loads((out / "optimize.json").read_text())["settings"]["template_vars"] == stored
    other = OptimizeConfig(**{**small, "template_vars": {"enable_thinking": True}})  # type: ignore[arg-type]
    with pytest.raises(
        InputError, match=r"other settings \(template_vars.enable_thinking: false -> true"
    ):
        check_resumable(out, positive, negative, config=other)
    with pytest.raises(
        InputError, match=r"other settings \(template_vars.enable_thinking: false -> true"
    ):
        neurosteer.optimize(model, tokenizer, positive, negative, config=other, run_dir=out)
