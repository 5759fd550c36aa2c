"""Load YAML into plain objects while remembering the file and line of every value.

Errors about a spec must point at `file:line`, so the loader walks PyYAML's node tree itself.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml


@dataclass(frozen=True)
class Where:
    """Where a value came from: a file and a 1-based line (0 when unknown, e.g. --set)."""

    file: str
    line: int = 0

    def __str__(self) -> str:
        return f"{self.file}:{self.line}" if self.line else self.file


class YamlSyntaxError(Exception):
    def __init__(self, where: Where, column: int, message: str):
        super().__init__(f"{where}:{column}: yaml: {message}")
        self.where = where


def load(text: str, filename: str) -> tuple[object, dict[tuple, Where]]:
    """Parse `text`; return (data, {path tuple: Where}). Duplicate keys are syntax errors."""
    loader = yaml.SafeLoader(text)
    try:
        try:
            root = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line, col = (mark.line + 1, mark.column + 1) if mark else (0, 0)
            raise YamlSyntaxError(Where(filename, line), col, exc.problem or str(exc)) from None
        positions: dict[tuple, Where] = {}
        data = _walk(loader, root, (), filename, positions) if root is not None else {}
        return data, positions
    finally:
        loader.dispose()


def load_file(path: str | Path) -> tuple[object, dict[tuple, Where]]:
    path = Path(path)
    return load(path.read_text(encoding="utf-8"), str(path))


def _walk(loader, node, path, filename, positions):
    positions[path] = Where(filename, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)
        result = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)) or key is None:
                raise YamlSyntaxError(Where(filename, key_node.start_mark.line + 1),
                                      key_node.start_mark.column + 1, "keys must be plain scalars")
            if key in result:
                raise YamlSyntaxError(Where(filename, key_node.start_mark.line + 1),
                                      key_node.start_mark.column + 1, f"duplicate key {key!r}")
            result[key] = _walk(loader, value_node, path + (key,), filename, positions)
            # Point at the key, not its value: that is where a reader looks for the field.
            positions[path + (key,)] = Where(filename, key_node.start_mark.line + 1)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_walk(loader, item, path + (i,), filename, positions)
                for i, item in enumerate(node.value)]
    return loader.construct_object(node, deep=True)
