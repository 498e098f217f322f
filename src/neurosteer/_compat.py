"""Old public spellings kept for one release, each with a `DeprecationWarning` naming the new one.

The layered package (0.2) moved the flat modules into `prompts/`, `model/`, `methods/` ...;
`OLD_PATHS` maps each old module path onto its new home, and a finder on `sys.meta_path`
serves the old paths with a warning. The one-interface change (0.1 → 0.2) renamed keywords:
`multiplier` and `alpha` became
`strength`, `circuit` became `intervention`. `renamed_keywords` maps the old keyword onto the
new one at call time, so scripts written against the last release keep working and are told
what to write instead. Remove these in the release after next.
"""

from __future__ import annotations

import functools
import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ParamSpec, TypeVar, cast

P = ParamSpec("P")
R = TypeVar("R")


def renamed_keywords(
    renames: Mapping[str, str], *, old_positional: Sequence[str] | None = None
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorator: accept each old keyword of `renames` ({old: new}) with a DeprecationWarning.

    Args:
        renames: old keyword → the parameter that replaced it.
        old_positional: the old signature's positional parameters, where the new one moved
            them; a call that uses an old keyword (and none of these by name) is read with
            these names for its positional arguments (`save_baked(model, tok, out_dir,
            circuit=c, multiplier=m)`).

    Raises (from the wrapped call):
        TypeError: the old and the new spelling of one parameter given together.
    """

    def wrap(func: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(func)
        def call(*args: P.args, **kwargs: P.kwargs) -> R:
            used = [old for old in renames if old in kwargs]
            if not used:
                return func(*args, **kwargs)
            new_kwargs: dict[str, Any] = dict(kwargs)
            new_args: tuple[Any, ...] = args
            for old in used:
                new = renames[old]
                if new in new_kwargs:
                    raise TypeError(f"{func.__name__}() got both {old!r} and {new!r}; give {new!r}")
                warnings.warn(
                    f"{func.__name__}(): the keyword {old!r} is deprecated and will be removed "
                    f"in the next release; use {new!r}",
                    DeprecationWarning,
                    stacklevel=2,
                )
                new_kwargs[new] = new_kwargs.pop(old)
            if old_positional is not None and not set(old_positional) & set(new_kwargs):
                new_kwargs.update(zip(old_positional, args, strict=False))  # may be fewer
                new_args = args[len(old_positional) :]
            return cast(Callable[..., R], func)(*new_args, **new_kwargs)

        return call

    return wrap


def deprecated_name(old: str, instead: str) -> None:
    """Warn that the public name `old` is deprecated (removed in the next release): `instead`."""
    warnings.warn(
        f"{old} is deprecated and will be removed in the next release; {instead}",
        DeprecationWarning,
        stacklevel=3,
    )


def moved_names(module: str, moved: Mapping[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` serving names that moved out of `module` ({name: new module}),
    each with a DeprecationWarning naming its new home; imported by name, on first use, so the
    old module does not import the (later-layer) new one.

    Raises (from the returned function):
        AttributeError: `name` is neither in the module nor in `moved`.
    """

    def getattr_(name: str) -> Any:
        if name not in moved:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        deprecated_name(f"{module}.{name}", f"import it from {moved[name]}")
        return getattr(importlib.import_module(moved[name]), name)

    return getattr_


#: Old module paths (0.1's flat layout) → their home in the layered package, kept one release:
#: importing an old path warns and gives the new module itself (`install_old_paths`). A moved
#: package's submodules follow it (`neurosteer.sweep.runner` → `neurosteer.workflows.sweep.runner`).
OLD_PATHS: dict[str, str] = {
    f"neurosteer.{old}": f"neurosteer.{new}"
    for old, new in {
        "ablation": "methods.ablation",
        "analysis": "evaluation.comparison",
        "attribution": "methods.selection",
        "baking": "methods.baking",
        "baselines": "methods.baselines",
        "chat": "workflows.chat",
        "chat_session": "workflows.chat_session",
        "circuit": "methods.circuit",
        "context": "prompts.context",
        "contrast": "methods.contrast",
        "demo": "workflows.organism.demo",
        "demo_report": "workflows.organism.demo_report",
        "discovery": "methods.discovery",
        "faithfulness": "evaluation.faithfulness",
        "fingerprint": "model.fingerprint",
        "generation": "evaluation.generation",
        "gguf": "model.gguf",
        "gguf.bake": "export.gguf",
        "gguf.quants": "export.gguf_quants",
        "intervention": "interventions.protocol",
        "layout": "model.layout",
        "loading": "model.loading",
        "mean_ablation": "methods.mean_ablation",
        "model_fetch": "model.fetch",
        "optimization": "workflows.optimization",
        "organism": "workflows.organism",
        "probe": "evaluation.probe",
        "prompt_files": "prompts.files",
        "recording": "methods.recording",
        "relp": "methods.relp",
        "relp_pass": "methods.relp_pass",
        "report": "workflows.report",
        "run_identity": "workflows.run_identity",
        "runtime": "model.runtime",
        "steering": "methods.steering",
        "stop_tokens": "model.stop_tokens",
        "streaming": "export.streaming",
        "sweep": "workflows.sweep",
        "targets": "prompts.targets",
        "template_vars": "prompts.template_vars",
        "text_check": "prompts.text_check",
    }.items()
}


def new_path(old: str) -> str | None:
    """The module an old dotted path now names (the longest old prefix wins), or None."""
    for prefix in sorted(OLD_PATHS, key=len, reverse=True):
        if old == prefix or old.startswith(prefix + "."):
            return OLD_PATHS[prefix] + old[len(prefix) :]
    return None


class _OldPathLoader(importlib.abc.Loader):
    """Loads an old path as its new module: `sys.modules[old]` becomes that very object."""

    def __init__(self, new: str) -> None:
        self.new = new

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None  # a placeholder; exec_module puts the real module in its place

    def exec_module(self, module: types.ModuleType) -> None:
        deprecated_name(f"the module {module.__name__}", f"import {self.new}")
        sys.modules[module.__name__] = importlib.import_module(self.new)


class _OldPathFinder(importlib.abc.MetaPathFinder):
    """Finds the old module paths of `OLD_PATHS` (first on `sys.meta_path`, so a moved
    package's old submodule path is never loaded a second time from the new folder)."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        new = new_path(fullname)
        if new is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _OldPathLoader(new))


def install_old_paths() -> None:
    """Put the old-path finder first on `sys.meta_path` (once; `neurosteer/__init__` calls it)."""
    if not any(isinstance(f, _OldPathFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _OldPathFinder())
