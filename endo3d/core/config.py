"""Typed configs from plain data (TOML scene files, JSON run records, checkpoints).

Configs are frozen dataclasses with defaults. :func:`from_dict` builds one
from a nested ``dict`` (e.g. parsed TOML), checking every key and type, so a
typo in a scene file is an :class:`InputError` naming the file and the key
instead of a silently ignored setting. :func:`to_dict` is the inverse.
"""

from __future__ import annotations

import dataclasses
import math
import types
from pathlib import Path, PurePath
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from endo3d.core.errors import InputError

T = TypeVar("T")


def positive(config: Any, *names: str, prefix: str = "") -> list[str]:
    """Phrases for the named settings of ``config`` that are not > 0 (for ``problems()`` methods)."""
    return [f"{prefix}{name} must be > 0, got {getattr(config, name)}" for name in names
            if not getattr(config, name) > 0]


def to_dict(config: Any) -> Any:
    """A dataclass (nested) as plain JSON/TOML-able data; tuples become lists."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, (list, tuple)):
        return [to_dict(v) for v in config]
    if isinstance(config, dict):
        return {k: to_dict(v) for k, v in config.items()}
    if isinstance(config, PurePath):
        return str(config)
    return config


def from_dict(cls: type[T], data: dict[str, Any], source: str, where: str = "", base: T | None = None) -> T:
    """Build dataclass ``cls`` from ``data``; missing keys keep their defaults.

    A nested table overrides only the keys it gives, on top of the field's
    default (so ``[camera] model = "fisheye"`` in a colon scene keeps the
    colon camera's field of view); a list (e.g. of lights) replaces the
    default list.

    Args:
        cls: a dataclass type whose fields have type hints.
        data: nested plain data.
        source: the file the data came from (used in error messages).
        where: dotted location inside the file, for error messages.
        base: values to start from instead of ``cls``'s defaults.

    Raises:
        InputError: unknown key, wrong type, or a value outside a ``Literal``.
    """
    if not isinstance(data, dict):
        raise InputError(source, f"{where or 'top level'} must be a table, got {type(data).__name__}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise InputError(source, f"unknown key {_join(where, unknown[0])!r} (known: {', '.join(sorted(fields))})")
    kwargs = {}
    for key, value in data.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            start = getattr(base, key) if base is not None else _default(fields[key])
            kwargs[key] = from_dict(hint, value, source, _join(where, key), start)
        else:
            kwargs[key] = _convert(hint, value, source, _join(where, key))
    return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _convert(hint: Any, value: Any, source: str, where: str) -> Any:
    origin = get_origin(hint)
    args = get_args(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(arg, value, source, where)
            except InputError as e:
                errors.append(e.problem)
        raise InputError(source, errors[0])
    if origin is Literal:
        if value not in args:
            raise InputError(source, f"{where} = {value!r}, expected one of {', '.join(map(repr, args))}")
        return value
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, source, where)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise InputError(source, f"{where} must be a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise InputError(source, f"{where} needs {len(args)} values, got {len(value)}")
            items = [_convert(a, v, source, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value))]
        else:
            item = args[0] if args else Any
            items = [_convert(item, v, source, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(source, f"{where} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise InputError(source, f"{where} must be a finite number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(source, f"{where} must be an integer, got {value!r}")
        return value
    if hint is Path:
        if not isinstance(value, str):
            raise InputError(source, f"{where} must be a path (a string), got {value!r}")
        return Path(value)
    if hint in (str, bool):
        if not isinstance(value, hint):
            raise InputError(source, f"{where} must be a {hint.__name__}, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {hint!r} at {where}")


__all__ = ["from_dict", "to_dict"]
