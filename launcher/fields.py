"""Typed reading of a YAML mapping that reports every problem as `file:line: field: message`.

`Reader` wraps one mapping of the spec; each accessor checks one field's type and range and
records a problem instead of raising, so a user sees all mistakes of a spec at once.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, replace
from typing import Any, Callable

from .yamlsrc import Where


@dataclass(frozen=True)
class Problem:
    where: Where
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.field}: {self.message}{self.where.trail()}"

    def via(self, including: Where) -> "Problem":
        """This problem of an included file, as reached through the `include:` entry at `including`."""
        return replace(self, where=self.where.via(including))


class SpecInvalid(Exception):
    """Raised once validation is over; carries every problem found."""

    def __init__(self, problems: list[Problem]):
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


def dotted(path: tuple) -> str:
    return ".".join(str(p) for p in path) or "<spec>"


_MISSING = object()


class Reader:
    """Reads the fields of one mapping at `path`; unknown keys are reported by `finish()`."""

    def __init__(self, data: Any, path: tuple, positions: dict[tuple, Where],
                 problems: list[Problem], default_where: Where):
        self.path = path
        self.positions = positions
        self.problems = problems
        self.default_where = default_where
        self.seen: set[str] = set()
        if data is None:
            data = {}
        if not isinstance(data, dict):
            self.report(path, f"must be a mapping, got {type(data).__name__}")
            data = {}
        self.data = data

    # -- reporting -------------------------------------------------------------------------
    def where(self, path: tuple) -> Where:
        while path and path not in self.positions:
            path = path[:-1]
        return self.positions.get(path, self.default_where)

    def report(self, path: tuple, message: str) -> None:
        self.problems.append(Problem(self.where(path), dotted(path), message))

    # -- accessors -------------------------------------------------------------------------
    def raw(self, key: str, default: Any = _MISSING) -> Any:
        self.seen.add(key)
        if key in self.data and self.data[key] is not None:
            return self.data[key]
        if default is _MISSING:
            self.report(self.path + (key,), "is required")
            return None
        return default

    def typed(self, key: str, kinds: tuple, label: str, default: Any = _MISSING) -> Any:
        value = self.raw(key, default)
        if value is None or value is default:
            return value
        if isinstance(value, bool) and bool not in kinds:
            self.report(self.path + (key,), f"must be {label}, got a boolean ({value})")
            return default if default is not _MISSING else None
        if not isinstance(value, kinds):
            self.report(self.path + (key,), f"must be {label}, got {_describe(value)}")
            return default if default is not _MISSING else None
        return value

    def string(self, key: str, default: Any = _MISSING, pattern: re.Pattern | None = None,
               pattern_help: str = "") -> Any:
        value = self.typed(key, (str,), "a string", default)
        if isinstance(value, str) and pattern is not None and not pattern.match(value):
            self.report(self.path + (key,), f"{value!r} is not allowed: {pattern_help}")
            return default if default is not _MISSING else None
        return value

    def integer(self, key: str, default: Any = _MISSING, minimum: int | None = None,
                maximum: int | None = None) -> Any:
        value = self.typed(key, (int,), "an integer", default)
        if isinstance(value, int) and not isinstance(value, bool):
            if minimum is not None and value < minimum:
                self.report(self.path + (key,), f"must be at least {minimum}, got {value}")
            elif maximum is not None and value > maximum:
                self.report(self.path + (key,), f"must be at most {maximum}, got {value}")
        return value

    def number(self, key: str, default: Any = _MISSING, minimum: float | None = None) -> Any:
        value = self.typed(key, (int, float), "a number", default)
        if isinstance(value, (int, float)) and minimum is not None and value < minimum:
            self.report(self.path + (key,), f"must be at least {minimum}, got {value}")
        return value

    def boolean(self, key: str, default: Any = _MISSING) -> Any:
        return self.typed(key, (bool,), "true or false", default)

    def choice(self, key: str, choices: tuple[str, ...], default: Any = _MISSING) -> Any:
        value = self.typed(key, (str,), "a string", default)
        if isinstance(value, str) and value not in choices:
            self.report(self.path + (key,),
                        f"must be one of {', '.join(choices)}, got {value!r}{suggest(value, choices)}")
            return default if default is not _MISSING else None
        return value

    def mapping(self, key: str) -> "Reader":
        self.seen.add(key)
        return Reader(self.data.get(key), self.path + (key,), self.positions, self.problems,
                      self.default_where)

    def string_list(self, key: str, pattern: re.Pattern | None = None,
                    pattern_help: str = "") -> list[str]:
        value = self.raw(key, [])
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            self.report(self.path + (key,), f"must be a list of strings, got {_describe(value)}")
            return []
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, str):
                self.report(self.path + (key, i), f"must be a string, got {_describe(item)}")
            elif pattern is not None and not pattern.match(item):
                self.report(self.path + (key, i), f"{item!r} is not allowed: {pattern_help}")
            else:
                out.append(item)
        return out

    def parsed(self, key: str, parse: Callable[[Any], Any], default: Any = _MISSING) -> Any:
        """A field whose text `parse` turns into a value, raising ValueError with the reason."""
        value = self.raw(key, default)
        if value is None or value is default:
            return value
        try:
            return parse(value)
        except ValueError as exc:
            self.report(self.path + (key,), str(exc))
            return default if default is not _MISSING else None

    def finish(self) -> None:
        """Report keys nobody asked for, with a 'did you mean' where one is close."""
        for key in self.data:
            if key not in self.seen:
                self.report(self.path + (key,), f"unknown key{suggest(str(key), self.seen)}")


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"


def suggest(word: str, options) -> str:
    close = difflib.get_close_matches(word, sorted(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
