"""Bounded YAML reading for plans and configurations.

`yaml.safe_load` is safe from code execution but not from hostile sizes: nested aliases
make a few hundred bytes stand for billions of values, and its constructors raise raw
`ValueError`s or `AttributeError`s for bad dates and over-long integers. `load_yaml`
refuses aliases (or bounds what they expand to), duplicate keys and deep nesting, and
turns every failure into one error type with the line and column of the culprit.
"""

from __future__ import annotations

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from frostline.errors import FrostlineError, shorten

__all__ = ["MAX_YAML_BYTES", "MAX_YAML_DEPTH", "MAX_YAML_NODES", "decode_yaml", "load_yaml"]

MAX_YAML_BYTES = 64 * 2**20
"""The largest YAML text read, in bytes (UTF-8); frostline never writes one near it."""
MAX_YAML_DEPTH = 64
"""The deepest nesting of lists and mappings accepted."""
MAX_YAML_NODES = 100_000
"""With aliases allowed, the most values (scalars, lists, mappings) they may expand to."""


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses anchors and aliases (unless allowed, then bounds their
    expansion), duplicate keys, nesting deeper than MAX_YAML_DEPTH, and constructor
    failures other than YAMLError."""

    allow_aliases = False
    _depth = 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        if not self.allow_aliases and (isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None)):
            kind = f"alias *{event.anchor}" if isinstance(event, yaml.AliasEvent) else f"anchor &{event.anchor}"
            raise ComposerError(None, None, f"found the {kind}; anchors and aliases are refused here "
                                "(write the values out instead)", event.start_mark)
        if self._depth >= MAX_YAML_DEPTH:
            raise ComposerError(None, None, f"found lists or mappings nested more than {MAX_YAML_DEPTH} deep",
                                event.start_mark)
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if isinstance(node, MappingNode) and not isinstance(event, yaml.AliasEvent):
            _check_duplicate_keys(node)
        return node

    def compose_document(self):
        node = super().compose_document()
        if self.allow_aliases and node is not None:
            _check_expansion(node)
        return node

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep=deep)
        except yaml.YAMLError:
            raise
        except (ValueError, TypeError, AttributeError, OverflowError) as e:
            if node.tag.endswith(":timestamp"):
                problem = f"expected a date such as 2024-01-31 or a time such as 2024-01-31 12:00:00; received {shorten(node.value)}"
            else:
                problem = f"cannot read {shorten(node.value)} as {node.tag.rsplit(':', 1)[-1]} ({shorten(str(e), 120, quote=False)})"
            raise ConstructorError(None, None, problem, node.start_mark) from None


class _AliasLoader(_BoundedLoader):
    allow_aliases = True


def _check_duplicate_keys(node: MappingNode) -> None:
    seen: set[tuple[str, str]] = set()
    for key, _ in node.value:
        if not isinstance(key, ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
            continue
        if (key.tag, key.value) in seen:
            raise ConstructorError(None, None, f"found the key {shorten(key.value)} twice in one mapping; "
                                   "expected each key once", key.start_mark)
        seen.add((key.tag, key.value))


def _check_expansion(root) -> None:
    """Refuses a node graph whose aliases expand past MAX_YAML_NODES values or
    MAX_YAML_DEPTH levels, or that refers to itself. Iterative: chains of aliases can
    be deeper than Python's stack."""
    size: dict[int, tuple[int, int]] = {}  # id -> (expanded values, expanded depth)
    stack: list[tuple[object, bool]] = [(root, False)]
    open_ids: set[int] = set()
    while stack:
        node, done = stack.pop()
        children = [] if isinstance(node, ScalarNode) else (
            node.value if isinstance(node, SequenceNode) else [n for pair in node.value for n in pair])
        if done:
            open_ids.discard(id(node))
            total = 1 + sum(size[id(c)][0] for c in children)
            depth = 1 + max((size[id(c)][1] for c in children), default=0)
            if total > MAX_YAML_NODES or depth > MAX_YAML_DEPTH:
                raise ComposerError(None, None, f"found aliases that expand to more than {MAX_YAML_NODES:,} values "
                                    f"or {MAX_YAML_DEPTH} levels", node.start_mark)
            size[id(node)] = (total, depth)
            continue
        if id(node) in size:
            continue
        if id(node) in open_ids:
            raise ComposerError(None, None, "found an alias that refers to a value containing it", node.start_mark)
        open_ids.add(id(node))
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in size)


def decode_yaml(data: bytes, *, error: type[FrostlineError], what: str) -> str:
    """UTF-8 bytes as text, refusing more than MAX_YAML_BYTES or invalid UTF-8 with `error`."""
    if len(data) > MAX_YAML_BYTES:
        raise error(f"{what}: expected YAML of at most {MAX_YAML_BYTES:,} bytes. Received more.")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{what}: expected UTF-8 text. Received the bytes {shorten(e.object[e.start:e.start + 8])} "
                    f"at byte {e.start}, which are not UTF-8.") from None


def load_yaml(text: str | bytes, *, error: type[FrostlineError], what: str, aliases: bool = False):
    """Parses one YAML document with the safe schema, within bounds.

    Args:
        text: YAML text, or UTF-8 bytes.
        error: The frostline error to raise, e.g. `PlanError`.
        what: The start of each message, e.g. `"Plan"`; `""` for none (and no final
            period, as the CLI's configuration errors are worded).
        aliases: If False (default), anchors (`&a`) and aliases (`*a`) are refused; if
            True they are accepted while what they expand to stays within
            MAX_YAML_NODES values and MAX_YAML_DEPTH levels.

    Returns:
        The plain data (dicts, lists, strings, numbers, booleans, None; dates and
        timestamps where the YAML holds them).

    Raises:
        error: for malformed YAML, invalid UTF-8, text over MAX_YAML_BYTES, a key twice
            in one mapping, nesting over MAX_YAML_DEPTH, a refused or oversized alias,
            or a value its tag cannot hold (`!!timestamp x`, a 5,000-digit integer).
    """
    if isinstance(text, bytes):
        text = decode_yaml(text, error=error, what=what)
    elif len(text) > MAX_YAML_BYTES:
        raise error(f"{what}: expected YAML of at most {MAX_YAML_BYTES:,} bytes. Received {len(text):,} characters.")
    loader = None
    try:
        loader = (_AliasLoader if aliases else _BoundedLoader)(text)  # checks the characters
        return loader.get_single_data()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise error(f"{what}: malformed YAML{where}: {problem}." if what else f"malformed YAML{where}: {problem}") from None
    except RecursionError:
        raise error(f"{what + ': ' if what else ''}malformed YAML: nested too deeply to read.") from None
    finally:
        if loader is not None:
            loader.dispose()
