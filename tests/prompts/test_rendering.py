"""`prompts.rendering.Rendering`: the rendering triple as one value."""

from __future__ import annotations

import dataclasses

import pytest

from neurosteer.prompts.rendering import Rendering
from neurosteer.workflows.optimization.config import OptimizeConfig
from neurosteer.workflows.sweep.config import SweepConfig


def test_as_kwargs_gives_the_three_settings() -> None:
    rendering = Rendering(chat_template=False, system="Be brief.", template_vars={"a": 1})
    assert rendering.as_kwargs() == {
        "chat_template": False,
        "system": "Be brief.",
        "template_vars": {"a": 1},
    }
    assert Rendering().as_kwargs() == {"chat_template": None, "system": None, "template_vars": None}


def test_rendering_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Rendering().system = "x"  # type: ignore[misc]


@pytest.mark.parametrize("config_type", [SweepConfig, OptimizeConfig])
def test_configs_give_their_rendering(config_type: type) -> None:
    config = config_type(chat_template=True, system="S", template_vars={"enable_thinking": False})
    assert config.rendering == Rendering(
        chat_template=True, system="S", template_vars={"enable_thinking": False}
    )
