"""The selector grammar: parse a selector once, match it against a LayerTree.

| form                      | matches                                                  |
|---------------------------|----------------------------------------------------------|
| `block5_conv1`            | layers with that name at any depth; `*`, `?`, `[...]`    |
| `base/block5_*`           | full paths; `*` stays in one segment, `**` crosses them  |
| `re:<regex>`              | full paths, `re.fullmatch`                               |
| `type:BatchNormalization` | layers whose class, or any base class, has that name     |
| `base[:-5]`, `[2:4]`      | a container's direct layers by Python slice              |
| `var:base/**/bias`        | variables by path (layer path + `/` + variable name)     |

A trailing `[...]` is a slice when it holds a colon (`base[3:4]`); without one it is a
glob character class (`conv[12]`).
"""

from __future__ import annotations

import abc
import difflib
import re
from collections.abc import Iterable
from fnmatch import fnmatchcase

import keras

from frostline.errors import PlanError, did_you_mean, shorten
from frostline.model.tree import LayerNode, LayerTree
from frostline.plan.patterns import MAX_SELECTOR_CHARS, check_glob, compile_glob, compile_regex

__all__ = ["Selector", "VariableSelector", "parse_selector"]

_SLICE_BOUND = re.compile(r"-?\d*")
# Slice bounds fit a 64-bit index; more digits are a typo or an attack.
_MAX_SLICE_DIGITS = 18
_MAX_NESTED_SLICES = 8


class Selector(abc.ABC):
    """A parsed selector. `str(selector)` is the text it was parsed from."""

    def __init__(self, text: str):
        self.text = text

    @abc.abstractmethod
    def match(self, tree: LayerTree) -> list[LayerNode]:
        """The layers this selector names in `tree` (not yet expanded into containers).

        Raises:
            PlanError: if the selector cannot apply to this model (an unknown type, a
                slice of something that is not a container).
        """

    def suggestion(self, tree: LayerTree) -> str:
        """A hint for a selector that matched nothing: the closest existing paths."""
        all_paths = [p for n in tree.layers for p in n.paths]
        close = difflib.get_close_matches(self.text, all_paths, n=3, cutoff=0.5)
        return _closest_paths_hint(close[0] if close else self.text, close)

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Selector) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)


class NameSelector(Selector):
    """Layers whose name matches a glob, at any depth."""

    def __init__(self, text: str):
        super().__init__(text)
        check_glob(text, text)

    def match(self, tree: LayerTree) -> list[LayerNode]:
        # The last path segment differs from the name for repeated names (`dense~2`).
        return [
            n for n in tree.layers
            if fnmatchcase(n.name, self.text)
            or any(fnmatchcase(p.rsplit("/", 1)[-1], self.text) for p in n.paths)
        ]

    def suggestion(self, tree: LayerTree) -> str:
        names = difflib.get_close_matches(self.text, {n.name for n in tree.layers}, n=3, cutoff=0.5)
        close = [n.path for name in names for n in tree.layers if n.name == name][:3]
        return _closest_paths_hint(names[0] if names else self.text, close)


def _closest_paths_hint(best: str, close: list[str]) -> str:
    if not close:
        return " No layer path is close; `frostline inspect` lists them all."
    return f" Did you mean {best!r}? Closest paths: " + ", ".join(repr(p) for p in close) + "."


class PathSelector(Selector):
    """Layers whose full path matches a glob; `*` stays in a segment, `**` does not."""

    def __init__(self, text: str):
        super().__init__(text)
        check_glob(text, text)
        self.matches = compile_glob(text)

    def match(self, tree: LayerTree) -> list[LayerNode]:
        return [n for n in tree.layers if any(self.matches(p) for p in n.paths)]


class RegexSelector(Selector):
    """Layers whose full path matches a regular expression (`re.fullmatch`)."""

    def __init__(self, text: str):
        super().__init__(text)
        self.regex = compile_regex(text[len("re:") :], text)

    def match(self, tree: LayerTree) -> list[LayerNode]:
        return [n for n in tree.layers if any(self.regex.fullmatch(p) for p in n.paths)]


class VariableSelector(Selector):
    """Single variables whose path (the layer's path, `/`, the variable's name, as in
    `"base/block1_conv/kernel"`) matches a glob; `*` stays in a segment, `**` does not.

    `match` gives the layers that own matched variables; rules use `match_variables`.
    """

    def __init__(self, text: str):
        super().__init__(text)
        self.pattern = text[len("var:"):].strip()
        if not self.pattern:
            raise PlanError(
                f"Expected a variable path or glob after 'var:', e.g. 'var:base/**/bias'. Received: {shorten(text)}"
            )
        check_glob(self.pattern, text)
        self.matches = compile_glob(self.pattern)

    def match_variables(self, tree: LayerTree) -> list[tuple[LayerNode, keras.Variable]]:
        """`(layer, variable)` for every variable of the tree whose path matches."""
        return [
            (node, v)
            for node in tree.layers
            for v in node.variables
            if any(self.matches(f"{p}/{v.name}") for p in node.paths)
        ]

    def match(self, tree: LayerTree) -> list[LayerNode]:
        owners = {id(node) for node, _ in self.match_variables(tree)}
        return [n for n in tree.layers if id(n) in owners]

    def suggestion(self, tree: LayerTree) -> str:
        paths = [f"{p}/{v.name}" for n in tree.layers for v in n.variables for p in n.paths]
        close = difflib.get_close_matches(self.pattern, paths, n=3, cutoff=0.5)
        if not close:
            return (" No variable path is close. A variable's path is its layer's path, '/', and its "
                    "name, e.g. 'var:base/block1_conv/kernel'.")
        return f" Did you mean 'var:{close[0]}'? Closest variable paths: " + ", ".join(repr(p) for p in close) + "."


def _known_layer_types(tree: LayerTree) -> set[str]:
    names = {
        cls.__name__
        for node in tree
        for cls in type(node.layer).__mro__
        if cls is not object
    }
    for module in (keras.layers, keras.models, keras):
        names.update(
            name for name, obj in vars(module).items()
            if isinstance(obj, type) and issubclass(obj, keras.layers.Layer)
        )
    return names


class TypeSelector(Selector):
    """Layers whose class, or any of its base classes, has the given name."""

    def __init__(self, text: str):
        super().__init__(text)
        self.type_name = text[len("type:") :].strip()
        if not self.type_name.isidentifier():
            raise PlanError(
                f"Expected a class name after 'type:', e.g. 'type:BatchNormalization'. "
                f"Received: {shorten(text)}"
            )

    def match(self, tree: LayerTree) -> list[LayerNode]:
        known = _known_layer_types(tree)
        if self.type_name not in known:
            raise PlanError(
                f"Unknown layer type {self.type_name!r} in selector {shorten(self.text)}: no "
                "Keras layer class and no class in the model has that name."
                + (
                    did_you_mean(self.type_name, {n.class_name for n in tree.layers})
                    or did_you_mean(self.type_name, known)
                )
            )
        return [
            n for n in tree.layers
            if any(cls.__name__ == self.type_name for cls in type(n.layer).__mro__)
        ]

    def suggestion(self, tree: LayerTree) -> str:
        present = sorted({n.class_name for n in tree.layers})
        return " Layer types in the model: " + ", ".join(present) + "."


class SliceSelector(Selector):
    """A container's direct layers by Python slice; a bare `[a:b]` is the top level."""

    def __init__(self, text: str, prefix: Selector | None, index: slice):
        super().__init__(text)
        self.prefix = prefix
        self.index = index

    def match(self, tree: LayerTree) -> list[LayerNode]:
        containers = [tree.root] if self.prefix is None else self.prefix.match(tree)
        selected: list[LayerNode] = []
        for node in containers:
            if not node.is_container:
                raise PlanError(
                    f"Selector {shorten(self.text)} slices {node.path!r}, a {node.class_name} "
                    "that holds no layers. Expected a model or a layer with sublayers, "
                    "e.g. 'base[:-5]' for `base.layers[:-5]`."
                )
            selected.extend(c for c in node.children[self.index] if c not in selected)
        return selected

    def suggestion(self, tree: LayerTree) -> str:
        if self.prefix is not None and not self.prefix.match(tree):
            return f" Its container {shorten(self.prefix.text)} matched no layer." + self.prefix.suggestion(tree)
        return " The slice is empty for every container it names."


def _split_slice(text: str) -> tuple[str, str] | None:
    """`(prefix, body)` when `text` ends in a slice (`[...]` holding one or two colons and
    otherwise only integers and spaces), else None: `conv[12]` is a character class."""
    if not text.endswith("]"):
        return None
    start = text.rfind("[")
    body = text[start + 1 : -1]
    parts = [p.strip() for p in body.split(":")]
    if start == -1 or len(parts) not in (2, 3) or not all(_SLICE_BOUND.fullmatch(p) for p in parts):
        return None
    return text[:start], body


def _parse_slice(body: str, text: str) -> slice:
    values = []
    for part in (p.strip() for p in body.split(":")):
        digits = part.lstrip("-")
        if part and not digits:
            raise PlanError(
                f"Received the slice bound '-' in selector {shorten(text)}. Expected an integer after "
                "the minus sign, or nothing, e.g. 'base[-5:]' or 'base[:-1]'."
            )
        if len(digits) > _MAX_SLICE_DIGITS:
            raise PlanError(
                f"Received a slice bound of {len(digits):,} digits in selector {shorten(text)}. Expected an "
                f"integer of at most {_MAX_SLICE_DIGITS} digits, e.g. 'base[-5:]'."
            )
        values.append(int(part) if part else None)
    if len(values) == 3 and values[2] == 0:
        raise PlanError(f"Received a slice step of 0 in '[{body}]'. Expected a non-zero step.")
    return slice(*values)


def parse_selector(text: str | Selector) -> Selector:
    """Parses one selector string.

    Args:
        text: A selector in the grammar above, or an already parsed `Selector`.

    Returns:
        The parsed `Selector`.

    Raises:
        PlanError: if `text` is not a string, is empty, or is malformed.

    Example:

    >>> parse_selector("base/block5_*")
    PathSelector('base/block5_*')
    >>> parse_selector("base[:-5]")
    SliceSelector('base[:-5]')
    >>> parse_selector("var:base/**/bias")
    VariableSelector('var:base/**/bias')
    """
    if isinstance(text, Selector):
        return text
    if not isinstance(text, str):
        raise PlanError(
            "Expected a selector string such as 'base', 'base/block5_*', "
            f"'type:BatchNormalization' or 'base[:-5]'. Received: {shorten(text)} "
            f"(of type {type(text).__name__})"
        )
    text = text.strip()
    if not text:
        raise PlanError("Received an empty selector. Expected a layer name, path or pattern.")
    if len(text) > MAX_SELECTOR_CHARS:
        raise PlanError(
            f"Received a selector of {len(text):,} characters: {shorten(text)}. Expected at most "
            f"{MAX_SELECTOR_CHARS:,}; a shorter glob or a list of selectors says the same."
        )
    return _parse(text, 0)


def _parse(text: str, slices: int) -> Selector:
    if text.startswith("var:"):
        return VariableSelector(text)
    if text.startswith("re:"):
        return RegexSelector(text)
    if text.startswith("type:"):
        return TypeSelector(text)
    split = _split_slice(text)
    if split:
        prefix, body = split
        if slices >= _MAX_NESTED_SLICES:
            raise PlanError(
                f"Received more than {_MAX_NESTED_SLICES} slices in a row in selector {shorten(text)}. "
                "Expected a container and one slice, e.g. 'base[:-5]'."
            )
        index = _parse_slice(body, text)
        return SliceSelector(text, _parse(prefix.strip(), slices + 1) if prefix.strip() else None, index)
    if "/" in text:
        return PathSelector(text)
    return NameSelector(text)


def exact_layer_selector(node: LayerNode, names: list[str]) -> str:
    """A selector that matches exactly this layer (`names`: every layer name of its tree)."""
    if any(c in node.path for c in "*?[]") or ("/" not in node.path and names.count(node.name) > 1):
        return "re:" + re.escape(node.path)
    return node.path


def exact_variable_selector(path: str) -> str:
    """A `var:` selector that matches exactly the variable with this path."""
    return "var:" + "".join(f"[{c}]" if c in "*?[]" else c for c in path)


def parse_selectors(selectors: str | Selector | Iterable[str | Selector]) -> tuple[Selector, ...]:
    """Parses one selector or a list of them into a tuple."""
    if isinstance(selectors, (str, Selector)):
        selectors = [selectors]
    try:
        items = list(selectors)
    except TypeError:
        raise PlanError(
            "Expected a selector string or a list of them. "
            f"Received: {shorten(selectors)} (of type {type(selectors).__name__})"
        ) from None
    if not items:
        raise PlanError("Expected at least one selector. Received an empty list.")
    return tuple(parse_selector(s) for s in items)
