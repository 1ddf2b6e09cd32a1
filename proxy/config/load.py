"""YAML -> Config with `file:line: path: message` errors, every one of them.

The document is composed into nodes (not constructed) so each value keeps the line
it came from; duplicate keys, which PyYAML silently overwrites, are errors here.
Mapping keys are read as their source text, so `on:` or `no:` stay strings.
"""

from __future__ import annotations

from typing import Any

import yaml

from proxy.config.schema import Config
from proxy.config.validate import validate

Lines = dict[str, int]
# libyaml composes ~10x faster than the pure-Python loader (0.6 vs 7 ms for canary.yaml);
# the nodes and their line marks are the same.
_COMPOSER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


MAX_NODES = 100_000  # aliases can expand a small file exponentially ("billion laughs")


class _TooComplex(Exception):
    """The document is cyclic or expands to more than MAX_NODES values."""


class _Composer:
    """Walks composed nodes into plain Python values, recording path -> line."""

    def __init__(self) -> None:
        self.lines: Lines = {"": 1}
        self.errors: list[tuple[int, str, str]] = []  # (line, path, message)
        self._scalars = yaml.SafeLoader("")
        self._open: set[int] = set()  # collections being walked: a repeat is a cycle
        self._budget = MAX_NODES

    def close(self) -> None:
        """Break the loader's cycles (its state is a bound method; it caches every node it
        constructed) so the ~10k nodes and marks of a large file go by refcount, not by a
        full cyclic collection that stalls the event loop for 100+ ms."""
        self._scalars.dispose()
        self._scalars.constructed_objects.clear()
        self._scalars.recursive_objects.clear()
        self._scalars.__dict__.clear()

    def value(self, node: yaml.Node, path: str) -> Any:
        self._budget -= 1
        if self._budget < 0:
            raise _TooComplex(f"more than {MAX_NODES} values (alias expansion?)")
        if not isinstance(node, yaml.MappingNode | yaml.SequenceNode):
            return self._scalars.construct_object(node, deep=True)
        if id(node) in self._open:
            raise _TooComplex("an alias refers to a node that contains it")
        self._open.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                return self._mapping(node, path)
            return [self._item(child, f"{path}[{i}]") for i, child in enumerate(node.value)]
        finally:
            self._open.discard(id(node))

    def _item(self, node: yaml.Node, path: str) -> Any:
        self.lines.setdefault(path, node.start_mark.line + 1)
        return self.value(node, path)

    def _mapping(self, node: yaml.MappingNode, path: str) -> dict[str, Any]:
        own = sum(1 for k, _ in node.value if k.tag != "tag:yaml.org,2002:merge")
        self._scalars.flatten_mapping(node)  # `<<: *anchor` pairs now come first
        merged = len(node.value) - own
        out: dict[str, Any] = {}
        explicit: set[str] = set()
        for i, (key_node, value_node) in enumerate(node.value):
            key = self._key(key_node)
            child = f"{path}.{key}" if path else key
            line = key_node.start_mark.line + 1
            if i >= merged and key in explicit:  # merged keys may be overridden, not repeated
                first = self.lines.get(child, line)
                self.errors.append((line, child, f'duplicate key "{key}" (first at line {first})'))
                continue
            if i >= merged:
                explicit.add(key)
                self.lines[child] = line
            out[key] = self.value(value_node, child)
        return out

    def _key(self, node: yaml.Node) -> str:
        if isinstance(node, yaml.ScalarNode):
            return str(node.value)
        return str(self.value(node, "?"))


def _line_of(lines: Lines, path: str) -> int:
    """The line of `path`, else of its nearest ancestor (a missing key: its mapping)."""
    while path:
        if path in lines:
            return lines[path]
        cut = max(path.rfind("."), path.rfind("["))
        path = path[:cut] if cut > 0 else ""
    return lines.get("", 1)


def _mark_line(exc: yaml.YAMLError) -> int:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    return mark.line + 1 if mark is not None else 1


def _fmt(filename: str, line: int, path: str, message: str) -> str:
    return f"{filename}:{line}: {path}: {message}" if path else f"{filename}:{line}: {message}"


def _compose(text: str) -> yaml.Node | None:
    """The document's node tree; the loader is disposed so it leaves no cycle behind."""
    loader = _COMPOSER(text)
    try:
        return loader.get_single_node()
    finally:
        loader.dispose()


def load_text(text: str, filename: str) -> tuple[Config | None, list[str]]:
    """Parse and validate YAML text; errors are `filename:line: path: message`."""
    try:
        node = _compose(text)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc)
        return None, [_fmt(filename, _mark_line(exc), "", f"invalid YAML: {problem}")]
    walker = _Composer()
    try:
        data = walker.value(node, "") if node is not None else None
    except yaml.YAMLError as exc:  # e.g. a scalar PyYAML cannot construct
        return None, [_fmt(filename, _mark_line(exc), "", f"invalid YAML: {exc}")]
    except _TooComplex as exc:
        return None, [_fmt(filename, 1, "", f"invalid YAML: {exc}")]
    finally:
        walker.close()
    del node  # the node tree goes now, by refcount
    config, errors = validate(data, walker.lines)
    found = walker.errors + [(_line_of(walker.lines, p), p, m) for p, m in errors]
    if found:
        found.sort(key=lambda e: e[0])  # stable: same-line errors keep their order
        return None, [_fmt(filename, line, p, m) for line, p, m in found]
    return config, []


def load_file(path: str) -> tuple[Config | None, list[str]]:
    """Read and validate a config file; an unreadable file is one error."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return None, [f"{path}: cannot read: {reason}"]
    return load_text(text, path)


def summary(path: str, config: Config) -> str:
    """One line: `config.yaml: OK — 2 upstreams, 3 routes, 1 canary`."""
    parts = [
        _plural(len(config.upstreams), "upstream"),
        _plural(len(config.routes), "route"),
        _plural(len(config.canaries), "canary", "canaries"),
    ]
    return f"{path}: OK — {', '.join(parts)}"


def _plural(n: int, one: str, many: str = "") -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"
