"""Typed settings of the CLI's commands: each command reads its options as one frozen
dataclass (`DiscoverSettings`, `SweepSettings`, ...) instead of a mapping of names.

A settings class lists one field per click parameter, named as click names it (the option's
long name with '-' as '_', or its explicit destination), or a field holding a group of
options several commands share (`ModelSettings`, ...: a dataclass too, defined next to the
decorator that declares its options; `template_option`'s group is the library's `Rendering`).
`settings_command` turns click's parsed values into the settings object before the command
runs: a field whose text needs more parsing than click does (a comma-separated list) names its
parser with `parsed`, and every value is checked against the field's annotation, so a
settings class that disagrees with its options fails on the first run (and in the tests), not
later inside the library.

Names: `*Settings` is a command's typed options; `*Config` is a library object a command
builds from them (`SweepConfig`, `OptimizeConfig`).
"""

from __future__ import annotations

import dataclasses
import functools
import types
from collections.abc import Callable, Mapping
from typing import Any, Literal, TypeVar, Union, cast, get_args, get_origin, get_type_hints

S = TypeVar("S")

#: The metadata key under which `parsed` stores a field's parser.
_PARSE = "parse"


def parsed(parse: Callable[[Any], object]) -> Any:
    """A settings field whose click value (usually text) `parse` turns into the field's
    type; `parse` raises the command's usual one-line error (`InputError`, or click's
    `BadParameter`) on a bad value."""
    return dataclasses.field(metadata={_PARSE: parse})


def option_names(cls: type[Any], namespace: Mapping[str, Any] | None = None) -> list[str]:
    """The click parameter names a settings class reads, its groups' included, in order.

    `namespace`: the globals `cls`'s annotations are read in (see `_hints`)."""
    hints = _hints(cls, namespace)
    names: list[str] = []
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        names += option_names(hint) if _is_group(hint) else [f.name]
    return names


def build_settings(
    cls: type[S], values: Mapping[str, object], namespace: Mapping[str, Any] | None = None
) -> S:
    """The settings object of click's parsed `values` (parameter name → value); `namespace`:
    the globals `cls`'s annotations are read in (see `_hints`).

    Raises:
        KeyError: a field with no value (a settings class out of step with its options).
        TypeError: a value that does not match its field's annotation (the same).
        InputError, click.BadParameter: from a field's parser, on a bad value.
    """
    hints = _hints(cls, namespace)
    kwargs: dict[str, object] = {}
    for f in dataclasses.fields(cast(Any, cls)):
        hint = hints[f.name]
        if _is_group(hint):
            kwargs[f.name] = build_settings(hint, values)
            continue
        value = values[f.name]
        parse = f.metadata.get(_PARSE)
        if parse is not None:
            value = parse(value)
        if not _matches(value, hint):
            raise TypeError(
                f"{cls.__name__}.{f.name} is annotated {hint}, but its option gave {value!r}"
            )
        kwargs[f.name] = value
    return cls(**kwargs)


def settings_command(cls: type[S]) -> Callable[[Callable[[S], None]], Callable[..., None]]:
    """Decorator under the click options: the command receives one `cls` object built from
    its parsed options (see `build_settings`) instead of keyword arguments.

    Raises (when the command runs):
        TypeError: the options click parsed are not the fields of `cls`.
    """

    def decorate(fn: Callable[[S], None]) -> Callable[..., None]:
        # the command's module as it runs (under runpy, not the module its classes name)
        namespace: Mapping[str, Any] | None = getattr(fn, "__globals__", None)
        expected = set(option_names(cls, namespace))

        @functools.wraps(fn)
        def command(**values: object) -> None:
            if set(values) != expected:
                raise TypeError(
                    f"{cls.__name__} does not match the options: missing "
                    f"{sorted(expected - set(values))}, unknown {sorted(set(values) - expected)}"
                )
            fn(build_settings(cls, values, namespace))

        return command

    return decorate


def _hints(cls: type[Any], namespace: Mapping[str, Any] | None) -> dict[str, Any]:
    """`cls`'s field annotations as types, read in `namespace` where given, else in the
    module `cls` names: a command module run as a script (`runpy`, `python -m`) is not the
    module its classes name, so the command passes its own globals."""
    return get_type_hints(cls, globalns=None if namespace is None else dict(namespace))


def _is_group(hint: object) -> bool:
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def _matches(value: object, hint: Any) -> bool:
    """Whether `value` is of the annotated type (the types settings use: classes, unions,
    Literal, tuples, dicts and Any)."""
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any:
        return True
    if hint is None or hint is type(None):
        return value is None
    if origin in (Union, types.UnionType):
        return any(_matches(value, arg) for arg in args)
    if origin is Literal:
        return value in args
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(item, args[0]) for item in value)
        return len(value) == len(args) and all(map(_matches, value, args))
    if origin is dict:
        return isinstance(value, dict) and all(
            _matches(k, args[0]) and _matches(v, args[1]) for k, v in value.items()
        )
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, origin or hint)
