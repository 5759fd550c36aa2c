"""The first check of every task config: a YAML mapping against a frozen dataclass's fields.

Unknown keys (listing the known ones), missing required keys, and values whose type does not
match the field's annotation; each task's config module then checks its own value rules.
"""
from __future__ import annotations

from dataclasses import fields
from typing import Any, Callable, TypeVar

Problem = tuple[str, str]           # (field path, message)
Config = TypeVar("Config")

TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,), "str | None": (str, type(None)), "int": (int,), "int | None": (int, type(None)),
    "float": (int, float), "float | None": (int, float, type(None)), "bool": (bool,), "bool | str": (bool, str),
    "dict": (dict,), "tuple": (list, tuple), "tuple | None": (list, tuple, type(None)),
}


def field_problems(config: Any, cls: type, required: dict[str, str] | None = None,
                   prefix: str = "") -> list[Problem]:
    """Problems of `config` as keyword arguments of dataclass `cls`; `required` maps a key that
    must be present to why. Paths are prefixed with `prefix` (e.g. "model.")."""
    if not isinstance(config, dict):
        return [(prefix.rstrip("."), "must be a mapping")]
    known = {f.name: f for f in fields(cls)}
    problems = [(prefix + key, f"unknown key; known: {', '.join(sorted(known))}") for key in config
                if key not in known]
    problems += [(prefix + key, f"is required: {why}") for key, why in (required or {}).items() if key not in config]
    for name, value in config.items():
        if name not in known:
            continue
        kinds = TYPES[str(known[name].type)]
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            problems.append((prefix + name, f"must be {known[name].type}, got {type(value).__name__} {value!r}"))
    return problems


def parse(cls: type[Config], config: Any, type_problems: Callable[[Any], list[Problem]],
          value_problems: Callable[[Config], list[Problem]]) -> tuple[Config | None, list[Problem]]:
    """The typed config and every problem found (None when there are any): types first, then
    the values of the built dataclass, whose tuple fields take YAML's lists as tuples."""
    problems = type_problems(config)
    if problems:
        return None, problems
    tuples = {f.name for f in fields(cls) if str(f.type).startswith("tuple")}
    cfg = cls(**{k: tuple(v) if k in tuples and isinstance(v, list) else v for k, v in config.items()})
    problems = value_problems(cfg)
    return (None if problems else cfg), problems
