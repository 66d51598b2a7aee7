"""Validated settings objects: build a dataclass from a dict (JSON file, ``--set`` options).

Every settings class (``TrainConfig``, ``SynthConfig``) is a dataclass with documented defaults;
``from_dict`` rejects unknown names and values of the wrong type with a message that says how to
fix them, before anything runs. A field that is itself a settings dataclass (``TrainConfig.model``,
an ``Architecture``) is given by its own settings, flat beside the others: the class's
``__init__`` takes them so.
"""

from __future__ import annotations

import json
import types
import typing
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

from celltally.errors import InputError

T = TypeVar("T")


def settings_hints(cls: type) -> dict[str, Any]:
    """The type of every setting of ``cls`` by name: its fields, a settings-dataclass field
    replaced by that class's own settings."""
    hints = typing.get_type_hints(cls)
    flat: dict[str, Any] = {}
    for name in (f.name for f in fields(cls)):
        hint = hints[name]
        flat |= settings_hints(hint) if is_dataclass(hint) else {name: hint}
    return flat


def from_dict(cls: type[T], values: dict[str, Any]) -> T:
    """Build ``cls`` from ``values``, checking names and types against its annotations."""
    hints = settings_hints(cls)
    if unknown := set(values) - set(hints):
        raise ValueError(f"unknown settings {sorted(unknown)}; valid: {sorted(hints)}")
    return cls(**{name: _coerce(name, value, hints[name]) for name, value in values.items()})


def parse_assignments(cls: type, assignments: list[str]) -> dict[str, Any]:
    """Read ``NAME=VALUE`` options; values are JSON (numbers, lists, null) or bare words."""
    names = set(settings_hints(cls))
    values: dict[str, Any] = {}
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        if not sep or key not in names:
            raise ValueError(
                f"--set {assignment!r}: expected NAME=VALUE with NAME one of {sorted(names)}"
            )
        try:
            values[key] = json.loads(text)
        except json.JSONDecodeError:  # a bare word, e.g. optimizer=sgd
            values[key] = text
    return values


def read_settings_file(path: Path | None) -> dict[str, Any]:
    """The JSON object in ``path`` (``{}`` for no file)."""
    if path is None:
        return {}
    if not path.is_file():
        raise InputError(path, "no such settings file")
    try:
        values = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise InputError(path, f"not valid JSON ({error})") from None
    if not isinstance(values, dict):
        raise InputError(path, "expected a JSON object of NAME: VALUE settings")
    return values


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """``value`` as the annotated type (ints pass as floats, lists as tuples) or a ValueError."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(name, value, option)
            except ValueError:
                pass
        raise ValueError(f"setting {name} must be {_describe(hint)}, got {value!r}")
    if origin is tuple:
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise ValueError(f"setting {name} must be {_describe(hint)}, got {value!r}")
        return tuple(_coerce(name, v, a) for v, a in zip(value, args, strict=True))
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ValueError(f"setting {name} must be {_describe(hint)}, got {value!r}")
    return value


def _describe(hint: Any) -> str:
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple:
        return f"a list of {len(args)} ({', '.join(a.__name__ for a in args)})"
    if args:
        return " or ".join("null" if a is type(None) else _describe(a) for a in args)
    return f"of type {hint.__name__}"
