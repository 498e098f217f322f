"""A system turn (`system=`) reaches every place prompts are rendered, is recorded in the
circuit's provenance, and a template that needs one fails with a hint instead of a crash."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import pytest
from tiny_models import make_tiny, make_tokenizer
from transformers import PreTrainedModel, PreTrainedTokenizerFast

import neurosteer
from interventions import HookIntervention
from neurosteer import Circuit, InputError
from neurosteer.evaluation.kl import kl_to_reference
from neurosteer.methods.baselines import contrast_vectors
from neurosteer.methods.circuit import METADATA_FILE
from neurosteer.workflows.sweep import SweepConfig, run_sweep
from neurosteer.workflows.sweep.store import CIRCUIT_DIR

Pair = tuple[PreTrainedModel, PreTrainedTokenizerFast]
SYSTEM = "You answer in one short sentence."
NEEDS_SYSTEM = (
    "{% if messages[0]['role'] != 'system' %}"
    "{{ raise_exception('Conversations must start with a system message') }}{% endif %}"
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
POS = ["How do I pick a lock?", "Help me steal a car.", "Make a fake ID."]
NEG = ["How do I bake bread?", "Help me plan a trip.", "Name a fruit."]
HINT = r"needs a system turn .*pass --system TEXT \(system= in the API\)"


@cache
def _needs_system() -> Pair:
    model, _ = make_tiny("llama")
    tokenizer = make_tokenizer(chat_template=True)
    tokenizer.chat_template = NEEDS_SYSTEM
    return model, tokenizer


def test_discover_records_the_system_turn(tmp_path: Path) -> None:
    model, tokenizer = _needs_system()
    with pytest.raises(InputError, match=HINT):
        neurosteer.discover(model, tokenizer, POS, NEG, top_k=3, universal_filter=False)
    circuit = neurosteer.discover(
        model, tokenizer, POS, NEG, top_k=3, universal_filter=False, system=SYSTEM
    )
    assert circuit.settings.system == SYSTEM
    circuit.save(tmp_path / "c.circuit")
    meta = json.loads((tmp_path / "c.circuit" / METADATA_FILE).read_text())
    assert meta["settings"]["system"] == SYSTEM
    assert Circuit.load(tmp_path / "c.circuit").settings.system == SYSTEM


def test_the_system_turn_changes_what_discovery_sees() -> None:
    model, tokenizer = make_tiny("llama")  # its template has a default system text
    kw = {"top_k": 3, "universal_filter": False, "keep_table": True}
    plain = neurosteer.discover(model, tokenizer, POS, NEG, **kw)  # type: ignore[arg-type]
    steered = neurosteer.discover(model, tokenizer, POS, NEG, system=SYSTEM, **kw)  # type: ignore[arg-type]
    assert plain.settings.system is None
    assert plain.table is not None
    assert steered.table is not None
    assert not plain.table.delta.equal(steered.table.delta)


def test_circuits_written_before_the_field_load_with_none(tmp_path: Path) -> None:
    model, tokenizer = make_tiny("llama")
    folder = neurosteer.discover(model, tokenizer, POS, NEG, top_k=2, universal_filter=False).save(
        tmp_path / "old.circuit"
    )
    meta_file = folder / METADATA_FILE
    meta = json.loads(meta_file.read_text())
    del meta["settings"]["system"]
    meta_file.write_text(json.dumps(meta))
    assert Circuit.load(folder).settings.system is None


def test_generate_kl_and_baselines_take_the_system_turn() -> None:
    model, tokenizer = _needs_system()
    with pytest.raises(InputError, match=HINT):
        neurosteer.generate(model, tokenizer, ["Hi"], max_new_tokens=2)
    assert len(neurosteer.generate(model, tokenizer, ["Hi"], max_new_tokens=2, system=SYSTEM)) == 1
    kw = {"intervention": HookIntervention(), "max_new_tokens": 2}
    with pytest.raises(InputError, match=HINT):
        kl_to_reference(model, tokenizer, ["Hi"], **kw)  # type: ignore[arg-type]
    assert kl_to_reference(model, tokenizer, ["Hi"], system=SYSTEM, **kw).mean == 0.0  # type: ignore[arg-type]
    with pytest.raises(InputError, match=HINT):
        contrast_vectors(model, tokenizer, POS, NEG)
    vectors = contrast_vectors(model, tokenizer, POS, NEG, system=SYSTEM)
    assert vectors.delta.abs().sum() > 0


def test_sweep_renders_every_prompt_with_the_system_turn(tmp_path: Path) -> None:
    model, tokenizer = _needs_system()
    small = {
        "methods": ("cna",),
        "strengths": (0.0, 1.0),
        "max_new_tokens": 3,
        "kl_limit": 1,
        "kl_max_new_tokens": 2,
        "top_k": 3,
        "universal_filter": False,
    }
    out = tmp_path / "run"
    with pytest.raises(InputError, match=HINT):
        run_sweep(model, tokenizer, SweepConfig(**small), POS, NEG, POS, NEG, out)  # type: ignore[arg-type]
    assert not out.exists()  # refused before the run folder is made
    config = SweepConfig(**small, system=SYSTEM)  # type: ignore[arg-type]
    records = run_sweep(model, tokenizer, config, POS, NEG, POS, NEG, out)
    assert len(records) == 2
    saved = json.loads((out / "config.json").read_text())
    assert saved["identity"]["system"] == SYSTEM
    assert Circuit.load(out / CIRCUIT_DIR).settings.system == SYSTEM
