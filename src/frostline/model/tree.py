"""LayerTree: every layer of a Keras model once, with its paths and its own variables."""

from __future__ import annotations

from collections.abc import Iterator

import keras
import numpy as np

from frostline import _keras, _state

__all__ = ["LayerNode", "LayerTree"]


def variable_size(variable: keras.Variable) -> int:
    """Number of scalars in a variable."""
    return int(np.prod(variable.shape, dtype=np.int64))


def _direct_layers(layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    # `Model.layers` is what users slice (`base.layers[:-5]`): Functional models include
    # their InputLayer, Sequential models omit the one they create themselves.
    if isinstance(layer, keras.Model):
        return list(layer.layers)
    return _keras.direct_sublayers(layer)


def _own_variables(layer: keras.layers.Layer) -> tuple[list, list]:
    """The layer's own (trainable-capable, state) variables, not its children's."""
    seen: set[int] = set()
    capable, state = [], []
    for target, source in zip((capable, state), _keras.own_variables(layer)):
        for v in source:
            if id(v) not in seen:
                seen.add(id(v))
                target.append(v)
    return capable, state


class LayerNode:
    """One layer of a model, however many containers it is reachable through.

    Attributes:
        layer: The Keras layer.
        path: Canonical path from the model, e.g. `"base/block5_conv1"`; `""` for the
            model itself.
        paths: Every path the layer is reachable by, canonical first. A layer shared
            by several containers has several.
        parent: The container of the canonical path, `None` for the model itself.
        parents: Every container that holds the layer directly.
        children: The container's direct layers in Keras's order (`model.layers`).
        weights: The layer's own variables that can train (not its children's).
        states: The layer's own variables that never train (e.g. BatchNormalization's
            moving mean and variance).
        depth: Number of containers above the canonical path.
    """

    def __init__(self, layer: keras.layers.Layer, path: str, parent: LayerNode | None):
        self.layer = layer
        self.path = path
        self.paths: list[str] = [path]
        self.parent = parent
        self.parents: list[LayerNode] = [] if parent is None else [parent]
        self.children: list[LayerNode] = []
        self.weights, self.states = _own_variables(layer)
        self.depth = 0 if parent is None else parent.depth + 1

    @property
    def name(self) -> str:
        return self.layer.name

    @property
    def class_name(self) -> str:
        return type(self.layer).__name__

    @property
    def is_container(self) -> bool:
        return bool(self.children)

    @property
    def is_shared(self) -> bool:
        return len(self.paths) > 1

    @property
    def variables(self) -> list:
        """Own variables: `weights` then `states`."""
        return self.weights + self.states

    def variable_path(self, variable: keras.Variable) -> str:
        """The layer's canonical path and the variable's name: `"base/conv1/kernel"`."""
        return f"{self.path}/{variable.name}" if self.path else variable.name

    @property
    def containers(self) -> list[keras.layers.Layer]:
        """The containers of the canonical path, innermost first (the model last)."""
        out, node = [], self.parent
        while node is not None:
            out.append(node.layer)
            node = node.parent
        return out

    def descendants(self, *, include_self: bool = True) -> Iterator[LayerNode]:
        """Every layer inside this one (shared layers once), depth first."""
        seen: set[int] = set()
        stack = [self] if include_self else list(reversed(self.children))
        while stack:
            node = stack.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            yield node
            stack.extend(reversed(node.children))

    def __repr__(self) -> str:
        return f"<LayerNode {self.path or self.name!r} {self.class_name}>"


class LayerTree:
    """Every layer of a Keras model once, each with its canonical path.

    Walks Sequential, Functional and subclassed models (sublayers held in attributes
    and lists), models nested in models, and layers shared by several containers.
    Paths join layer names with `/`; a name used twice in one container gets `~2`,
    `~3` appended for its second and third use.

    Args:
        model: A Keras model or layer.

    Example:

    >>> import keras
    >>> base = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="d")],
    ...                         name="base")
    >>> model = keras.Sequential([base, keras.layers.Dense(1, name="head")])
    >>> [node.path for node in LayerTree(model)]
    ['', 'base', 'base/d', 'head']
    """

    def __init__(self, model: keras.layers.Layer):
        self.model = model
        # The multipliers as they are now, so that resolving a plan reads the tree only.
        record = _state.peek(model, _state.ModelState)
        self._lr = {k: m for k, (_, m) in record.lr_multipliers.items()} if record else {}
        self.root = LayerNode(model, "", None)
        self._by_id: dict[int, LayerNode] = {id(model): self.root}
        self._order: list[LayerNode] = [self.root]
        self._walk(self.root, "", frozenset([id(model)]))

    def _walk(self, node: LayerNode, prefix: str, ancestors: frozenset[int]) -> None:
        used: dict[str, int] = {}
        for child in _direct_layers(node.layer):
            if id(child) in ancestors:  # a layer holding its own container: no cycles
                continue
            count = used[child.name] = used.get(child.name, 0) + 1
            segment = child.name if count == 1 else f"{child.name}~{count}"
            path = f"{prefix}/{segment}" if prefix else segment
            known = self._by_id.get(id(child))
            if known is None:
                known = LayerNode(child, path, node)
                self._by_id[id(child)] = known
                self._order.append(known)
            else:
                known.paths.append(path)
                if node not in known.parents:
                    known.parents.append(node)
            if known not in node.children:
                node.children.append(known)
            self._walk(known, path, ancestors | {id(child)})

    def __iter__(self) -> Iterator[LayerNode]:
        """Layers in canonical order (depth first, containers before their layers)."""
        return iter(self._order)

    def __len__(self) -> int:
        return len(self._order)

    def node(self, layer: keras.layers.Layer) -> LayerNode:
        """The node of a layer of this model."""
        return self._by_id[id(layer)]

    @property
    def layers(self) -> list[LayerNode]:
        """Every layer but the model itself."""
        return self._order[1:]

    def variables(self) -> list:
        """Every variable of the model once, in canonical order."""
        return [v for node in self._order for v in node.variables]

    def lr_multiplier(self, variable: keras.Variable) -> float:
        """The learning-rate multiplier frostline gives `variable` in this model (1.0 if
        none), as it was when the tree was made."""
        return self._lr.get(id(variable), 1.0)

    def effective_trainable_ids(self) -> set[int]:
        """Ids of the variables Keras trains now (`model.trainable_weights`)."""
        return {id(v) for v in self.model.trainable_weights}
