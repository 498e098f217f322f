"""The old (flat) module paths still import for one release: each warns, naming the new path,
and is the very module object of its new home, so `isinstance` and monkeypatching agree."""

from __future__ import annotations

import importlib
import sys

import pytest

from neurosteer._compat import OLD_PATHS, new_path


@pytest.mark.parametrize("old", sorted(OLD_PATHS))
def test_an_old_path_warns_and_is_the_new_module(old: str) -> None:
    new = importlib.import_module(OLD_PATHS[old])
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=f"{old} is deprecated.*import {OLD_PATHS[old]}"):
        module = importlib.import_module(old)
    assert module is new
    assert module.__name__ == OLD_PATHS[old]


def test_a_moved_packages_submodule_follows_it() -> None:
    assert new_path("neurosteer.sweep.runner") == "neurosteer.workflows.sweep.runner"
    assert new_path("neurosteer.gguf.reader") == "neurosteer.model.gguf.reader"
    assert new_path("neurosteer.gguf.bake") == "neurosteer.export.gguf"
    assert new_path("neurosteer.errors") is None
    from neurosteer.workflows.optimization import store as new_store

    sys.modules.pop("neurosteer.optimization.store", None)
    with pytest.warns(DeprecationWarning, match="neurosteer.workflows.optimization.store"):
        store = importlib.import_module("neurosteer.optimization.store")

    assert store is new_store


def test_moved_names_warn_and_resolve() -> None:
    from neurosteer.workflows.judges import get_judge

    with pytest.warns(DeprecationWarning, match="import it from neurosteer.workflows.judges"):
        from neurosteer.evaluation import get_judge as old
    assert old is get_judge
    with pytest.warns(DeprecationWarning, match="neurosteer.evaluation.judges.get_judge"):
        from neurosteer.evaluation.judges import get_judge as older
    assert older is get_judge
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        importlib.import_module("neurosteer.evaluation").nothing  # noqa: B018


def test_the_old_prompts_module_names_are_served_by_the_package() -> None:
    import neurosteer.prompts
    from neurosteer.prompts.render import load_prompts

    assert neurosteer.prompts.load_prompts is load_prompts
