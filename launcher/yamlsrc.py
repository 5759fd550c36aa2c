"""Load YAML into plain objects while remembering the file and line of every value.

Errors about a spec must point at `file:line`, so the loader walks PyYAML's node tree itself.
Specs are read as untrusted text, and everything that could hurt is refused at its line before
it costs time or memory: text that is not UTF-8 or larger than MAX_BYTES, values nested deeper
than MAX_DEPTH, aliases that repeat more than MAX_ALIAS_VALUES values (an 'alias bomb' of nine
lines expands to 10**9 strings), aliases inside their own anchor, and every tag but the plain
types a run records in JSON (str, int, float, bool, null, lists, mappings): no Python objects,
no dates or bytes, and no tag is ever dropped.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import yaml

MAX_BYTES = 128 * 1024          # specs are a few kB; PyYAML parses about 0.25 MB a second
MAX_DEPTH = 100
MAX_ALIAS_VALUES = 10_000       # values that all the aliases of one file may repeat together
_STANDARD = "tag:yaml.org,2002:"
SCALAR_TAGS = frozenset(_STANDARD + name for name in ("str", "int", "float", "bool", "null"))
NODE_TAGS = {yaml.SequenceNode: _STANDARD + "seq", yaml.MappingNode: _STANDARD + "map"}


@dataclass(frozen=True)
class Where:
    """Where a value came from: a file and a 1-based line (0 when unknown, e.g. --set), and the
    `include:` entries that brought that file in, innermost first."""

    file: str
    line: int = 0
    included_from: tuple["Where", ...] = ()

    def __str__(self) -> str:
        return f"{self.file}:{self.line}" if self.line else self.file

    def via(self, including: "Where") -> "Where":
        """This place as reached through the `include:` entry at `including`."""
        return replace(self, included_from=self.included_from + (including,))

    def trail(self) -> str:
        """' (included from b.yaml:1, from a.yaml:2)', or '' for a place in the spec itself."""
        if not self.included_from:
            return ""
        return " (included from " + ", from ".join(str(w) for w in self.included_from) + ")"


class YamlSyntaxError(Exception):
    def __init__(self, where: Where, column: int, message: str):
        super().__init__(f"{where}:{column}: yaml: {message}")
        self.where = where
        self.message = message


class _SpecLoader(yaml.SafeLoader):
    """SafeLoader that measures the document while composing it: how deep values nest, and how
    many values each alias repeats (a node's size counts its aliased parts in full). It refuses
    at the value or alias that crosses a limit, before anything is expanded."""

    def __init__(self, text: str):
        super().__init__(text)
        self._sizes: dict[int, int] = {}        # id(node) -> values in it, aliases expanded
        self._depth = 0
        self._repeated = 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            node = super().compose_node(parent, index)
            self._count_alias(node, event)
            return node
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise yaml.composer.ComposerError(None, None, f"values nest more than {MAX_DEPTH} levels deep",
                                              event.start_mark)
        node = super().compose_node(parent, index)
        self._depth -= 1
        self._sizes[id(node)] = 1 + sum(self._sizes[id(child)] for child in _children(node))
        return node

    def _count_alias(self, node, event) -> None:
        size = self._sizes.get(id(node))
        if size is None:                        # its anchor's value is still being composed
            raise yaml.composer.ComposerError(
                None, None, f"alias *{event.anchor} is used inside its own anchor &{event.anchor} "
                "(a value cannot contain itself)", event.start_mark)
        self._repeated += size
        if self._repeated > MAX_ALIAS_VALUES:
            raise yaml.composer.ComposerError(
                None, None, f"aliases repeat more than {MAX_ALIAS_VALUES} values in this file "
                "(an alias bomb?): write the values out instead", event.start_mark)


def _children(node) -> list:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return node.value
    return []


def load(text: str, filename: str) -> tuple[object, dict[tuple, Where]]:
    """Parse `text`; return (data, {path tuple: Where}). Duplicate keys are syntax errors."""
    try:
        loader = _SpecLoader(text)              # refuses unprintable characters right away
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        raise YamlSyntaxError(Where(filename, line), exc.position - text.rfind("\n", 0, exc.position),
                              f"character 0x{exc.character:02x} is not allowed in YAML") from None
    try:
        root = loader.get_single_node()
        positions: dict[tuple, Where] = {}
        data = _walk(loader, root, (), filename, positions) if root is not None else {}
        return data, positions
    except yaml.MarkedYAMLError as exc:        # composing, or a merge key (<<) of a non-mapping
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        raise YamlSyntaxError(Where(filename, line), col, exc.problem or str(exc)) from None
    finally:
        loader.dispose()


def load_file(path: str | Path) -> tuple[object, dict[tuple, Where]]:
    """`load` a file that must be UTF-8 and at most MAX_BYTES long."""
    path = Path(path)
    with path.open("rb") as f:
        data = f.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise YamlSyntaxError(Where(str(path), 1), 1, f"larger than {MAX_BYTES // 1024} KiB: not a job spec")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise YamlSyntaxError(Where(str(path), line), exc.start - data.rfind(b"\n", 0, exc.start),
                              f"not UTF-8: byte 0x{data[exc.start]:02x} at offset {exc.start}; "
                              "save the file as UTF-8") from None
    return load(text, str(path))


def _walk(loader, node, path, filename, positions):
    positions[path] = Where(filename, node.start_mark.line + 1)
    _check_tag(node, filename)
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)
        result = {}
        for key_node, value_node in node.value:
            key = _key(loader, key_node, filename)
            if key in result:
                raise _refusal(key_node, filename, f"duplicate key {key!r}")
            result[key] = _walk(loader, value_node, path + (key,), filename, positions)
            # Point at the key, not its value: that is where a reader looks for the field.
            positions[path + (key,)] = Where(filename, key_node.start_mark.line + 1)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_walk(loader, item, path + (i,), filename, positions)
                for i, item in enumerate(node.value)]
    return _scalar(loader, node, filename)


def _key(loader, node, filename):
    """A mapping key: a string, number or boolean written as a plain scalar."""
    _check_tag(node, filename)
    key = _scalar(loader, node, filename) if isinstance(node, yaml.ScalarNode) else None
    if key is None:
        raise _refusal(node, filename, "keys must be plain scalars")
    return key


def _scalar(loader, node, filename):
    """The value of a scalar whose tag `_check_tag` allowed. Text that its tag cannot read is
    refused: an explicit `!!bool maybe` or `!!int abc`, or an integer past Python's 4300 digits."""
    try:
        return loader.construct_object(node, deep=True)
    except (ValueError, KeyError):
        text = node.value if len(node.value) <= 40 else node.value[:40] + "..."
        raise _refusal(node, filename, f"cannot read {text!r} as {_short(node.tag)}") from None


def _check_tag(node, filename) -> None:
    allowed = SCALAR_TAGS if isinstance(node, yaml.ScalarNode) else {NODE_TAGS[type(node)]}
    if node.tag not in allowed:
        raise _refusal(node, filename, f"tag {_short(node.tag)} is not allowed: spec values are strings, "
                       "numbers, true/false, null, lists and mappings (quote a value to keep it as text)")


def _short(tag: str) -> str:
    """A tag as written: '!!int' for YAML's own, others as they are ('!secret')."""
    return tag.replace(_STANDARD, "!!", 1) if tag.startswith(_STANDARD) else tag


def _refusal(node, filename, message: str) -> YamlSyntaxError:
    return YamlSyntaxError(Where(filename, node.start_mark.line + 1), node.start_mark.column + 1, message)
