"""Reading YAML files that may come from someone else (specs, ratios files) with limits.

PyYAML's ``safe_load`` builds no objects of its own choosing, but it shares the node of an anchor between all of
its aliases, so a few hundred bytes of nested aliases (a "billion laughs") become a document with billions of
values as soon as anything walks it (validation, dumping into provenance). The reader here composes the document
with a loader that counts, while composing, how many values the document holds once every alias is expanded,
and how deeply it nests; a file past the limits is refused with one line naming the file and the line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from taxcut.errors import TaxcutError, first_line

MAX_BYTES = 2**20  # a spec or ratios file is a few kilobytes; the loss curve of a fit a few more
MAX_VALUES = 200_000  # values in the document with every alias expanded
MAX_DEPTH = 32  # nesting levels


class _Limit(Exception):
    def __init__(self, mark, message: str):
        super().__init__(message)
        self.line = mark.line + 1 if mark is not None else None


class _BoundedLoader(yaml.SafeLoader):
    """A safe loader that refuses deep nesting, self-referring aliases, and aliases that expand past the limit."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0
        self._sizes: dict[int, int] = {}  # id(node) -> its number of values with aliases expanded

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            target = self.anchors.get(event.anchor)
            if target is not None and id(target) not in self._sizes:
                raise _Limit(
                    event.start_mark,
                    f"alias *{event.anchor} refers to a value that contains it; a spec cannot be recursive",
                )
            return super().compose_node(parent, index)  # the anchor's node, shared (or an undefined-alias error)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Limit(
                    self.peek_event().start_mark, f"nested deeper than {MAX_DEPTH} levels; a spec is not that deep"
                )
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        size = 1 + sum(self._sizes[id(child)] for child in _children(node))
        if size > MAX_VALUES:
            raise _Limit(
                node.start_mark,
                f"expands to more than {MAX_VALUES} values once its aliases (*name) are "
                "expanded; write the values out instead of nesting aliases",
            )
        self._sizes[id(node)] = size
        return node


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return node.value
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def load_yaml(path: Path, *, what: str = "spec") -> Any:
    """The parsed content of a YAML file read within the limits above, or a one-line :class:`TaxcutError`."""
    path = Path(path)
    if not path.is_file():
        raise TaxcutError(f"{path}: {what} file not found")
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise TaxcutError(
            f"{path}: {size} bytes; a {what} file is at most {MAX_BYTES // 2**20} MB — is it the right file?"
        )
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise TaxcutError(f"{path}, line {line}: not a text file (YAML must be UTF-8)") from None
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    except _Limit as exc:
        where = f", line {exc.line}" if exc.line is not None else ""
        raise TaxcutError(f"{path}{where}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise TaxcutError(f"{path}: not valid YAML{where}: {_problem(exc)}") from None
    except (ValueError, OverflowError, RecursionError) as exc:  # e.g. an integer of more than 4300 digits
        reason = first_line(exc).split(";")[0]
        raise TaxcutError(
            f"{path}: a value cannot be read ({reason}); write it as plain text or a shorter number"
        ) from None
    finally:
        loader.dispose()


def _problem(exc: yaml.YAMLError) -> str:
    """PyYAML's description of a syntax error (for a duplicate anchor, which anchor)."""
    problem = getattr(exc, "problem", None) or first_line(exc)
    context = getattr(exc, "context", None)
    if isinstance(exc, yaml.composer.ComposerError) and context:
        return f"{context.split(';')[0]} ({problem})"
    return problem


def read_yaml_mapping(path: Path, *, what: str = "spec") -> dict[str, Any]:
    """The top-level mapping of a YAML file (empty for an empty file), or a one-line :class:`TaxcutError`."""
    data = load_yaml(path, what=what)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise TaxcutError(f"{path}: a {what} must be a YAML mapping of fields, got {type(data).__name__}")
    return data
