"""The byte-identity check (`support/identity_check.py`): the commands write the recorded files.

A change that should not change behaviour (a module move, a rename, a split function) must leave
every circuit, baked checkpoint, baked GGUF, sweep row and study trial as recorded in
`tests/data/identity-manifest.json`. A change that means to change them rewrites the manifest
(`python tests/support/identity_check.py --write`) in the same commit and says why.
"""

from __future__ import annotations

import json

import identity_check
import pytest


def test_the_commands_write_the_recorded_files_and_numbers() -> None:
    recorded = json.loads(identity_check.MANIFEST.read_text())
    if recorded["environment"] != identity_check.environment():
        pytest.skip(
            f"the manifest was recorded under {recorded['environment']}, this is "
            f"{identity_check.environment()}: floats may differ; record it here from the "
            "commit before a change (python tests/support/identity_check.py --write) to compare"
        )
    now = identity_check.manifest()
    changed = sorted(
        name
        for name in recorded["files"].keys() | now["files"].keys()
        if recorded["files"].get(name) != now["files"].get(name)
    )
    assert changed == [], f"these files differ from the recorded ones: {changed}"
    assert now["sweep_results"] == recorded["sweep_results"]
    assert now["study_trials"] == recorded["study_trials"]
