"""Dataclass configs from plain dicts (YAML presets, ``--set`` overrides, JSON in checkpoints).

Unknown keys and values of the wrong type are a :class:`~training.errors.ConfigError` naming the field and listing
the valid ones; lists become tuples where the field is a tuple; nested dataclass fields accept dicts. Kept apart
from the method registry so datasets, methods and the engine can all use it without importing each other.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from training.errors import ConfigError


def config_from_dict(cls: type, values: dict[str, Any]) -> Any:
    """Build dataclass ``cls`` from ``values``, rejecting unknown keys and converting lists to tuples.

    Nested dataclass fields accept dicts. Errors name the field and list the valid ones.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls} is not a dataclass")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{cls.__name__} has no field(s) {unknown}; valid fields: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        kwargs[key] = _coerce(hints[key], _onto_default(fields[key], value), f"{cls.__name__}.{key}")
    return cls(**kwargs)


def _onto_default(field: dataclasses.Field, value: Any) -> Any:
    """A dict for a nested dataclass field with a default instance overrides that default's fields (a subclass may
    change a nested default, e.g. IIC's ``input.sobel``), rather than starting from the nested class's defaults."""
    if not isinstance(value, dict) or field.default_factory is dataclasses.MISSING:
        return value
    default = field.default_factory()
    if not dataclasses.is_dataclass(default):
        return value
    return {**dataclasses.asdict(default), **value}


def config_to_dict(config: Any) -> dict[str, Any]:
    """JSON/YAML-friendly dict of a config dataclass (tuples become lists)."""
    return dataclasses.asdict(config)


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return config_from_dict(hint, value)
    if origin is tuple and isinstance(value, list | tuple):
        return tuple(value)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} does not fit {hint}")
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if hint in (int, float, str, bool) and not isinstance(value, hint):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")
    if hint is int and isinstance(value, bool):
        raise ConfigError(f"{where}: expected int, got {value!r}")
    return value
