"""Whether a run folder (a sweep's config.json, a search's optimize.json) may be resumed by
this run, and, when not, what differs in words: the model first, then prompts, then settings.

Both files hold sections of plain JSON: "model" (name, config hash, the weights fingerprint
of `neurosteer.model.fingerprint`), "prompts" ({set: {"count", "sha256"}}) and one of settings
("identity" for sweeps, "settings" for searches). Every value must match, except the weights:
two fingerprints that cannot be compared (a folder written before they were recorded, or one
kind on each side) do not block a resume.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from neurosteer.model.fingerprint import WeightsFingerprint

_SHOWN_SETTINGS = 3


def differences_in_words(
    old: dict[str, Any], new: dict[str, Any], sections: Sequence[str]
) -> str | None:
    """What differs between a stored run and this one, in `sections`, as one line; None when
    this run may resume the stored one.

    Example:
        >>> differences_in_words(old, new, ("model", "identity", "prompts"))
        'another model (it ran on org/base, this is org/instruct); other settings (k: 5 -> 6)'
    """
    words = []
    for section in sorted(sections, key=lambda s: {"model": 0, "prompts": 1}.get(s, 2)):
        before, after = old.get(section) or {}, new.get(section) or {}
        if section == "model":
            words.append(_model(before, after))
        elif section == "prompts":
            words.append(_prompts(before, after))
        else:
            words.append(_settings(before, after))
    found = [w for w in words if w]
    return "; ".join(found) if found else None


def _model(before: dict[str, Any], after: dict[str, Any]) -> str | None:
    reasons = []
    old_name, new_name = before.get("name_or_path"), after.get("name_or_path")
    if old_name != new_name:
        reasons.append(f"it ran on {old_name}, this is {new_name}")
    other = [
        key
        for key in sorted(set(before) | set(after))
        if key not in ("name_or_path", "weights") and before.get(key) != after.get(key)
    ]
    if other:
        reasons.append(f"another {', '.join(k.replace('_', ' ') for k in other)}")
    old_weights = WeightsFingerprint.from_dict(before.get("weights"))
    new_weights = WeightsFingerprint.from_dict(after.get("weights"))
    if old_weights and new_weights and old_weights.same_as(new_weights) is False:
        same = " under the same name" if old_name == new_name else ""
        reasons.append(
            f"other weights{same}: {old_weights.short()} -> {new_weights.short()}, as when "
            "another checkpoint is put in the model's folder"
        )
    return f"another model ({'; '.join(reasons)})" if reasons else None


def _prompts(before: dict[str, Any], after: dict[str, Any]) -> str | None:
    changed = []
    for name in sorted(set(before) | set(after)):
        old, new = before.get(name), after.get(name)
        if old == new:
            continue
        old_count = "none" if old is None else old.get("count")
        new_count = "none" if new is None else new.get("count")
        if old_count == new_count:
            changed.append(f"{name}: other text, {new_count} prompts")
        else:
            changed.append(f"{name}: {old_count} -> {new_count} prompts")
    return f"other prompts ({', '.join(changed)})" if changed else None


def _settings(before: dict[str, Any], after: dict[str, Any]) -> str | None:
    before, after = _flat(before), _flat(after)
    keys = [k for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]
    if not keys:
        return None
    shown = [f"{k}: {_short(before.get(k))} -> {_short(after.get(k))}" for k in keys]
    rest = keys[_SHOWN_SETTINGS:]
    text = ", ".join(shown[:_SHOWN_SETTINGS]) + (f"; also {', '.join(rest)}" if rest else "")
    return f"other settings ({text})"


def _flat(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as dotted keys ({"template_vars": {"a": 1}} -> {"template_vars.a": 1}),
    so that a difference names the value that changed, not the whole mapping."""
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, dict) and value:
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 24 else text[:21] + "..."
