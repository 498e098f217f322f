"""Issue 21 items 4 and 2 on the command line: `neurosteer judge RUN/` re-scores a run folder's
stored answers (old and new shares side by side, each judge with its caption), `sweep` and
`optimize` take the judge model the way `neurosteer judge` does, and the captions say which
model's answers the accuracy was measured on."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from gguf_files import write_gguf
from optimize_support import neutral, one_thread, prompts
from tiny_models import make_tiny

from neurosteer.cli.main import cli
from neurosteer.evaluation.judge_accuracy import judge_caption, measured_on
from neurosteer.evaluation.judge_cache import release_judge_models
from neurosteer.evaluation.model_judge_names import ENV_MODEL, ENV_PROMPTS
from neurosteer.workflows.judges import RUN_CACHE_FILE, get_judge
from neurosteer.workflows.optimization import read_search
from neurosteer.workflows.optimization.answers import ANSWERS_FILE
from neurosteer.workflows.organism import INSTRUCT_DIR

pytestmark = pytest.mark.usefixtures("restore_library_logging")
__all__ = ["one_thread"]  # the module's autouse fixture


@pytest.fixture(autouse=True)
def _no_judge_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(ENV_MODEL, raising=False)
    monkeypatch.delenv(ENV_PROMPTS, raising=False)
    release_judge_models()
    yield
    release_judge_models()


ROW = re.compile(r"^(.+?)\s+(\d+)\s+(\S+)\s+->\s+(\S+)\s+(\S+)\s+->\s+(\S+)")


def _rows(lines: list[str]) -> dict[str, tuple[str, ...]]:
    """{point: (answers, old refusal, new refusal, old degenerate, new degenerate)} of the
    table lines of `neurosteer judge RUN/`."""
    found = [ROW.match(line) for line in lines]
    return {m.group(1): m.groups()[1:] for m in found if m}


def _invoke(*args: object, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args], env=env)


def _prompt_files(folder: Path) -> tuple[Path, Path, Path]:
    harmful, benign = prompts()
    files = (folder / "harmful.txt", folder / "benign.txt", folder / "neutral.txt")
    for file, lines in zip(files, (harmful, benign, neutral()), strict=True):
        file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return files


def _optimize(folder: Path, *extra: object) -> Result:
    harmful, benign, neutral_file = _prompt_files(folder.parent)
    return _invoke(
        *("optimize", INSTRUCT_DIR, "-p", harmful, "-n", benign, "--neutral", neutral_file),
        *("--max-new-tokens", 40, "--held-out-positive", 8, "--held-out-negative", 8),
        *("--trials", 3, "--startup-trials", 2, "--no-baselines", "-o", folder),
        *extra,
    )


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cli") / "search"
    result = _optimize(folder, "--judge", "organism")
    assert result.exit_code == 0, (result.output, result.stderr)
    return folder


def test_judge_on_a_search_folder_prints_old_and_new_shares(searched: Path) -> None:
    result = _invoke("judge", searched, "--judge", "strict")
    assert result.exit_code == 0, (result.output, result.stderr)
    lines = result.output.splitlines()
    assert lines[0].startswith(f"re-scored {8 * 4} stored answers of 4 points of search ")
    assert lines[1] == f"old: {judge_caption('organism', str(INSTRUCT_DIR))}"
    assert lines[2] == f"new: {judge_caption('strict', str(INSTRUCT_DIR))}"
    assert "measured on another model's answers, not on instruct's" in lines[2]
    rows = _rows(lines[4:])
    trials = read_search(searched).trials
    assert set(rows) == {"unchanged"} | {f"trial {t.number}" for t in trials}
    assert len(lines) == 4 + len(rows)
    strict = get_judge("strict")
    for trial in trials:
        record = next(
            r
            for r in map(json.loads, (searched / ANSWERS_FILE).read_text().splitlines())
            if r["trial"] == trial.number
        )
        answers = [r["answer"] for r in record["rows"]]
        new = strict([r["prompt"] for r in record["rows"]], answers).count("refusal") / 8
        assert rows[f"trial {trial.number}"][:3] == ("8", f"{trial.refusal:.1%}", f"{new:.1%}")
    as_json = _invoke("judge", searched, "--judge", "strict", "--json")
    points = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [p["point"] for p in points] == ["unchanged"] + [f"trial {t.number}" for t in trials]
    assert {p["old"]["judge"] for p in points} == {"organism"}
    assert {p["new"]["judge"] for p in points} == {"strict"}


def test_a_search_made_before_answers_were_kept_is_one_line(searched: Path) -> None:
    old = searched.parent / "old"
    shutil.copytree(searched, old)
    (old / ANSWERS_FILE).unlink()
    result = _invoke("judge", old, "--judge", "strict")
    assert result.exit_code == 2
    assert "made before neurosteer stored each point's answers" in result.stderr
    assert result.stderr.count("\n") == 1


def test_show_captions_the_judge_with_the_model_it_was_measured_on(searched: Path) -> None:
    result = _invoke("optimize", searched, "--show")
    assert result.exit_code == 0, result.output
    assert f"refusal by {judge_caption('organism', str(INSTRUCT_DIR))}" in result.output


def test_optimize_and_sweep_without_the_judge_model_fail_before_loading(tmp_path: Path) -> None:
    harmful, benign, _ = _prompt_files(tmp_path)
    search = _optimize(tmp_path / "s", "--judge", "model")
    sweep = _invoke(
        *("sweep", INSTRUCT_DIR, "-p", harmful, "-n", benign, "--eval-harmful", harmful),
        *("--eval-harmless", benign, "-o", tmp_path / "w", "--judge", "model"),
    )
    for result in (search, sweep):
        assert result.exit_code == 2, result.output
        assert "--judge-model PATH" in result.stderr
        assert ENV_MODEL in result.stderr
        assert result.stderr.count("\n") == 1
    assert not (tmp_path / "s").exists()  # refused before the search began
    missing = _optimize(tmp_path / "m", "--judge", "model", "--judge-model", tmp_path / "no.gguf")
    assert missing.exit_code == 2
    assert "judge model" in missing.stderr
    assert "does not exist" in missing.stderr


def test_optimize_and_sweep_judge_with_a_model_from_the_option_or_environment(
    tmp_path: Path,
) -> None:
    model, tokenizer = make_tiny("llama")
    gguf = write_gguf(model, tokenizer, tmp_path / "judge.gguf")
    search = _optimize(tmp_path / "s", "--judge", "model", "--judge-model", gguf)
    assert search.exit_code == 0, (search.output, search.stderr)
    lines = [json.loads(x) for x in (tmp_path / "s" / ANSWERS_FILE).read_text().splitlines()]
    assert {r["judge"] for r in lines} == {"model"}
    cached = (tmp_path / "s" / RUN_CACHE_FILE).read_text().splitlines()
    assert len(cached) >= 8  # the model judge's verdicts, kept in the run folder
    harmful, benign, _ = _prompt_files(tmp_path)
    sweep = _invoke(
        *("sweep", INSTRUCT_DIR, "-p", harmful, "-n", benign, "--eval-harmful", harmful),
        *("--eval-harmless", benign, "-o", tmp_path / "w", "--judge", "model"),
        *("--methods", "cna", "--strengths", "0,1", "--eval-limit", 4, "--max-new-tokens", 8),
        *("--kl-limit", 2, "--kl-tokens", 2, "--no-universal-filter"),
        env={ENV_MODEL: str(gguf)},
    )
    assert sweep.exit_code == 0, (sweep.output, sweep.stderr)
    assert (tmp_path / "w" / RUN_CACHE_FILE).is_file()
    # re-scored with the model judge: the run folder's cache answers every question again
    again = _invoke("judge", tmp_path / "s", "--judge", "model", "--judge-model", gguf)
    assert again.exit_code == 0, again.stderr
    assert len((tmp_path / "s" / RUN_CACHE_FILE).read_text().splitlines()) == len(cached)
    rows = _rows(again.output.splitlines()[4:])
    assert len(rows) == 4
    for _, old, new, old_degenerate, new_degenerate in rows.values():
        assert (old, old_degenerate) == (new, new_degenerate)  # the same judge, the same shares


def test_a_caption_names_the_models_its_accuracy_was_measured_on() -> None:
    measured = measured_on()
    assert measured == "Qwen2.5-Coder-0.5B-Instruct and Qwen2.5-Coder-1.5B-Instruct"
    plain = judge_caption("sweep")
    assert f"real answers of {measured} read twice" in plain
    other = "measured on another model's answers"
    for same in (
        "Qwen/Qwen2.5-Coder-0.5B-Instruct",
        "/cache/qwen2.5-coder-0.5b-instruct.gguf",
        "/cache/Qwen2.5-Coder-0.5B-Instruct-Q8_0.gguf",
        "/models/qwen2.5-coder-0.5b-instruct/",
        "/cache/qwen2.5-coder-1.5b-instruct.gguf",
    ):
        assert judge_caption("sweep", same) == plain, same
    for different in (
        "/cache/qwen2.5-coder-7b-instruct.gguf",
        "Qwen/Qwen2.5-Coder-0.5B",
        "Qwen/Qwen2.5-0.5B-Instruct",
        "/models/llama-3.2-1b-instruct",
    ):
        caption = judge_caption("sweep", different)
        assert caption.startswith(plain), different
        assert other in caption, different
    assert judge_caption("sweep", "/cache/qwen2.5-coder-7b-instruct.gguf").endswith(
        "not on qwen2.5-coder-7b-instruct's"
    )
    assert judge_caption("organism", "/any/model") == (
        "judge organism: accuracy on real answers not measured"
    )
