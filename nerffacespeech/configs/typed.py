"""The first check of every task config: a YAML mapping against a frozen dataclass's fields.

Unknown keys (the close one, else every known one), missing required keys, and values whose type does not
match the field's annotation; each task's config module then checks its own value rules. A user
sees every problem at once: values are checked on a stand-in config whose ill-typed fields are
left at their defaults, and each field is reported once, by the first round that finds it wrong.
"""
from __future__ import annotations

from dataclasses import MISSING, fields
from typing import Any, Callable, TypeVar

from launcher.fields import suggest

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
    problems = [(prefix + key, unknown_key(key, known)) for key in config if key not in known]
    problems += [(prefix + key, f"is required: {why}") for key, why in (required or {}).items() if key not in config]
    for name, value in config.items():
        if name not in known:
            continue
        kinds = TYPES[str(known[name].type)]
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            problems.append((prefix + name, f"must be {known[name].type}, got {type(value).__name__} {value!r}"))
    return problems


def unknown_key(key: Any, known) -> str:
    """The message for a key the config does not have: the close one, else every known key."""
    close = suggest(str(key), known)
    return f"unknown key{close}" if close else f"unknown key; known: {', '.join(sorted(known))}"


def parse(cls: type[Config], config: Any, type_problems: Callable[[Any], list[Problem]],
          value_problems: Callable[[Config], list[Problem]],
          nested: dict[str, type] | None = None) -> tuple[Config | None, list[Problem]]:
    """The typed config and every problem found (None when there are any)."""
    cfg, problems = read(cls, config, type_problems, value_problems, nested)
    return (None if problems else cfg), problems


def read(cls: type[Config], config: Any, type_problems: Callable[[Any], list[Problem]],
         value_problems: Callable[[Config], list[Problem]],
         nested: dict[str, type] | None = None) -> tuple[Config | None, list[Problem]]:
    """Every type and value problem of `config`, and the stand-in the values were checked on,
    for checks that follow (None when `config` is not a mapping). Only `parse` hands a config
    to a task. `nested` names the fields that are dataclasses of their own."""
    problems = type_problems(config)
    if not isinstance(config, dict):
        return None, problems
    cfg = stand_in(cls, config, problems, nested=nested or {})
    return cfg, problems + beyond(problems, value_problems(cfg))


def stand_in(cls: type[Config], config: Any, problems: list[Problem], prefix: str = "",
             nested: dict[str, type] | None = None) -> Config:
    """`config` as a `cls` without the fields that have a problem: those are left at their
    defaults (None where required, which value rules do not read). Tuple fields take YAML's
    lists as tuples."""
    data = config if isinstance(config, dict) else {}
    nested = nested or {}
    values: dict[str, Any] = {}
    for f in fields(cls):
        path = prefix + f.name
        if f.name in nested:
            values[f.name] = stand_in(nested[f.name], data.get(f.name), problems, path + ".")
        elif f.name in data and not touches(problems, path):
            value = data[f.name]
            values[f.name] = tuple(value) if isinstance(value, list) and str(f.type).startswith("tuple") else value
        elif f.default is MISSING and f.default_factory is MISSING:
            values[f.name] = None
    return cls(**values)


def beyond(problems: list[Problem], more: list[Problem]) -> list[Problem]:
    """The problems of `more` on fields that `problems` has none about: one report a field."""
    return [p for p in more if not touches(problems, p[0])]


def sound(problems: list[Problem], *paths: str) -> bool:
    """Whether none of `paths` has a problem: a check that reads them can judge the user's values."""
    return not any(touches(problems, path) for path in paths)


def touches(problems: list[Problem], path: str) -> bool:
    """Whether a problem is at `path`, above it or below it ("model" and "model.z_dim" touch)."""
    return any(f == path or f.startswith(path + ".") or path.startswith(f + ".") for f, _ in problems)
