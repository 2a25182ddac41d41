"""The frost-line split: the frozen, deterministic front of a model, cut off for caching.

While a base is frozen and runs in inference mode, every epoch of `fit` computes the
same activations again. `frost_split` finds the largest part of the graph whose outputs
cannot change during training — frozen layers in inference mode, and weightless
deterministic layers (pooling, flatten, reshape, activations, merges) fed only by them —
and cuts the model there. The trainable remainder is a new Functional model that takes
the cut tensors as inputs and shares its layers, and so its weights, with the original.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import keras

from frostline import _keras
from frostline.errors import NotCacheable
from frostline.model.modes import draws_random_numbers, is_forced_inference, layer_mode

__all__ = ["FrostSplit", "anything_frozen", "deterministic_when_frozen", "frost_split"]

NOTHING_FROZEN = "nothing frozen and deterministic comes before the first trainable or random layer."


@dataclasses.dataclass(frozen=True)
class FrostSplit:
    """A model cut at its frost line.

    Attributes:
        frozen: Model from the original inputs to the cut tensors (random layers in
            it, with `views`, run in inference mode: a validation pass).
        remainder: Model from the cut tensors to the original outputs; its layers are
            the original model's layers.
        cut: Description of the cut tensors: `(name, shape)` each.
        random_layers: With `views`, the names of the random layers in the frozen
            part (augmentation in front of the frozen base).
        augmenting: With `views`, the frozen part with its random layers always in
            training mode (and the rest as in `frozen`): each `predict` gives a new
            view. None without random layers.
    """

    frozen: keras.Model
    remainder: keras.Model
    cut: tuple[tuple[str, tuple], ...]
    random_layers: tuple[str, ...] = ()
    augmenting: keras.Model | None = None


class _AlwaysTraining(keras.layers.Layer):
    """Calls a random layer with `training=True` whatever the model is called with (its
    own `call` takes no `training`, so a Functional model cannot override it)."""

    def __init__(self, layer: keras.layers.Layer):
        super().__init__(name=f"{layer.name}_views", dtype=layer.dtype_policy)
        self.layer = layer

    def call(self, *args, **kwargs):
        return self.layer(*args, training=True, **kwargs)

    def compute_output_spec(self, *args, **kwargs):
        return self.layer.compute_output_spec(*args, **kwargs)


@dataclasses.dataclass
class _Trace:
    """What tracing the graph found: the ids of the tensors fixed during training (with
    `views`, fixed up to the random layers' draws), the random layers let into the
    front, and those the front stopped at."""

    frozen_ids: set
    views: bool = False
    random: list = dataclasses.field(default_factory=list)
    stopped_at_random: list = dataclasses.field(default_factory=list)

    def random_may_enter(self, op: Any) -> bool:
        """A weightless layer that draws random numbers in training mode."""
        return (isinstance(op, keras.layers.Layer) and not op.trainable_weights and draws_random_numbers(op)
                and layer_mode(op) == "training")


def deterministic_when_frozen(op: Any, *, inside: tuple = ()) -> bool:
    """Whether an operation's output depends only on its inputs during `fit`.

    Args:
        op: A layer, or an operation of a Functional graph (`keras.ops.add`, ...).
        inside: The containers the layer is called through. Defaults to none.

    Returns:
        False for a layer with trainable weights, or one whose mode is `"training"`
        (the rule of the report's mode column: a trainable BatchNormalization, a layer that
        draws random numbers, a layer of the user's own that takes `training`, or a
        container with one of those inside); True otherwise.
    """
    if not isinstance(op, keras.layers.Layer):
        return True  # keras.ops in a Functional graph: add, concatenate, ...
    return not any(v.trainable for v in op.trainable_weights) and layer_mode(op, inside=inside) != "training"


def anything_frozen(model: keras.Model) -> bool:
    """Whether the model has a frozen variable or a layer forced into inference mode: a
    quick test that a frost line may exist, without walking the graph.

    Args:
        model: A Keras model.

    Returns:
        True when `frost_split` might find something to cut.
    """
    # Cheap on purpose: a walk of the graph costs seconds on a large model.
    layers = _keras.all_layers(model)
    if any(is_forced_inference(layer) for layer in layers):
        return True
    capable = {id(v) for layer in layers for v in _keras.own_variables(layer)[0]}
    return len({id(v) for v in model.trainable_weights}) < len(capable)


def _relies_on_its_inference_mode(container: keras.layers.Layer, inside: tuple) -> bool:
    """Whether a layer inside `container` runs in inference mode only because the
    container (or one around it) is forced into it."""
    if not any(is_forced_inference(c) for c in (container, *inside)):
        return False
    return any(not is_forced_inference(layer) and layer_mode(layer) == "training"
               for layer in _keras.all_layers(container)[1:])


def _tracing_fn(trace: _Trace, inside: tuple = ()) -> Callable:
    """The `operation_fn` that runs each operation on symbolic tensors and adds the ids
    of its outputs to `trace.frozen_ids` when its inputs are all frozen and it is
    deterministic (with `trace.views`, or a weightless random layer); nested Functional
    models are walked into. `inside` holds the containers walked into.

    A container that frostline forces into inference mode passes `training=False` to
    every layer inside; the remainder calls those layers outside it, and Keras's
    Functional call gives them its own `training`. So such a container is walked into
    only when every layer inside it that would depend on `training` is forced too;
    otherwise it stays one operation, called whole."""

    def run(op):
        inner = _keras.functional_graph(op) if isinstance(op, keras.Model) else None
        if inner is not None and _relies_on_its_inference_mode(op, inside):
            inner = None
        if inner is not None:
            def call_nested(*args, **kwargs):
                kwargs.pop("training", None)
                kwargs.pop("mask", None)
                if not args and "inputs" in kwargs:  # `backbone(inputs=...)`, as keras-hub's Gemma3 task does
                    args = (kwargs.pop("inputs"),)
                if not args or kwargs:
                    called = ", ".join(f"{k}=..." for k in kwargs) or "no arguments"
                    raise NotCacheable(f"the nested model {op.name!r} is called with keyword arguments ({called}), "
                                       "which the frost line cannot follow.")
                inputs = args[0] if len(args) == 1 else list(args)
                return _keras.run_through_graph(inner, inputs, _tracing_fn(trace, (op, *inside)))
            return call_nested

        def call(*args, **kwargs):
            kwargs.pop("training", None)
            kwargs.pop("mask", None)
            flat = [t for t in keras.tree.flatten((args, kwargs)) if isinstance(t, keras.KerasTensor)]
            outputs = op(*args, **kwargs)
            if all(id(t) in trace.frozen_ids for t in flat):
                if deterministic_when_frozen(op, inside=inside):
                    trace.frozen_ids.update(id(t) for t in keras.tree.flatten(outputs))
                elif trace.random_may_enter(op) and not any(is_forced_inference(c) for c in inside):
                    if trace.views:
                        trace.random.append(op)
                        trace.frozen_ids.update(id(t) for t in keras.tree.flatten(outputs))
                    else:
                        trace.stopped_at_random.append(op.name)
            return outputs
        return call

    return run


def _cut_tensors(graph: keras.Model, outputs: Any, frozen_ids: set[int]) -> list:
    """The frozen tensors that a non-frozen operation reads, and frozen model outputs."""
    cut: list = []

    def add(tensor) -> None:
        if id(tensor) in frozen_ids and all(tensor is not c for c in cut):
            cut.append(tensor)

    for node in _keras.graph_nodes(graph):
        if node.is_input or not node.operation or all(id(t) in frozen_ids for t in node.outputs):
            continue
        for tensor in node.input_tensors:
            add(tensor)
    for tensor in keras.tree.flatten(outputs):
        add(tensor)
    return cut


def frost_split(model: keras.Model, *, views: bool = False) -> FrostSplit:
    """Cuts `model` at its frost line, as its flags and modes are now.

    Args:
        model: A Functional or Sequential model (nested models included).
        views: Let weightless random layers (augmentation) fed only by the inputs and
            the frozen part into the frozen part, to compute augmented views of the
            data once (`Phase(cache_views=K)`). Defaults to False.

    Returns:
        A `FrostSplit`. Its frozen part takes the model's own inputs (same names and
        structure: a dict stays a dict).

    Raises:
        NotCacheable: for a subclassed model, a nested model called with keyword
            arguments other than `inputs`, `training` and `mask`, when nothing frozen
            and deterministic with weights comes before the first trainable layer (the
            message names random layers it stopped at), or when everything is.

    Example:

    >>> import keras, frostline as fl
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, name="body"),
    ...                           keras.layers.Dense(1, name="head")])
    >>> _ = fl.apply(model, fl.Plan().freeze("body"))
    >>> fl.frost_split(model).cut[0][1]
    (None, 4)
    """
    graph = _keras.functional_graph(model)
    if graph is None:
        raise NotCacheable(f"{type(model).__name__} {model.name!r} is a subclassed model whose graph cannot be seen.")
    # Fresh inputs, traced through the graph: the tensors fixed during training are those
    # computed from them by frozen, deterministic operations only.
    # They keep the model's input names and structure (a dict stays a dict), so that the
    # frozen part takes the model's own inputs.
    model_inputs = keras.tree.map_structure(
        lambda t: keras.Input(batch_shape=t.shape, dtype=t.dtype, sparse=t.sparse, name=t.name),
        _keras.input_structure(graph))
    inputs = keras.tree.flatten(model_inputs)
    trace = _Trace({id(t) for t in inputs}, views=views)
    outputs = _keras.run_through_graph(graph, model_inputs, _tracing_fn(trace))
    cut = _cut_tensors(keras.Model(model_inputs, outputs), outputs, trace.frozen_ids)
    frozen = None
    if not all(any(t is i for i in inputs) for t in cut):
        frozen = keras.Model(model_inputs, cut[0] if len(cut) == 1 else cut, name=f"{model.name}_frozen")
    if frozen is None or not frozen.weights:  # nothing worth caching: rescaling, reshapes
        if trace.stopped_at_random:
            names = ", ".join(dict.fromkeys(trace.stopped_at_random))
            raise NotCacheable(f"random layers ({names}) come before the frozen part: Phase(cache_views=K) "
                               "caches K augmented views of every sample.")
        raise NotCacheable(NOTHING_FROZEN)
    if all(id(t) in trace.frozen_ids for t in keras.tree.flatten(outputs)):
        raise NotCacheable("everything is frozen and deterministic: the phase has nothing to train.")
    cut_tensors = cut[0] if len(cut) == 1 else cut
    remainder = keras.Model(cut_tensors, outputs, name=f"{model.name}_remainder")
    random_layers = tuple(dict.fromkeys(op.name for op in trace.random))
    augmenting = _augmenting(frozen, trace.random) if trace.random else None
    return FrostSplit(frozen, remainder, tuple((t.name, tuple(t.shape)) for t in cut), random_layers, augmenting)


def _augmenting(frozen: keras.Model, random: list) -> keras.Model:
    """`frozen` with each of its `random` layers called through `_AlwaysTraining`."""
    wrappers = {id(op): _AlwaysTraining(op) for op in random}

    def run(op):
        def call(*args, **kwargs):
            kwargs.pop("training", None)
            return (wrappers[id(op)] if id(op) in wrappers else op)(*args, **kwargs)
        return call

    model_inputs = keras.tree.map_structure(
        lambda t: keras.Input(batch_shape=t.shape, dtype=t.dtype, sparse=t.sparse, name=t.name),
        _keras.input_structure(frozen))
    outputs = _keras.run_through_graph(frozen, model_inputs, run)
    return keras.Model(model_inputs, outputs, name=f"{frozen.name}_views")
