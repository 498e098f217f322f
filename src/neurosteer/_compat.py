"""Old public spellings kept for one release, each with a `DeprecationWarning` naming the new one.

The one-interface change (0.1 → 0.2) renamed keywords: `multiplier` and `alpha` became
`strength`, `circuit` became `intervention`. `renamed_keywords` maps the old keyword onto the
new one at call time, so scripts written against the last release keep working and are told
what to write instead. Remove these in the release after next.
"""

from __future__ import annotations

import functools
import importlib
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
