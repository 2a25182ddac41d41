"""The candidate cuts of a model for `fl.probe`: where its graph can be cut in two, and what
each cut freezes.

The model's Functional graph is traced on fresh inputs, nested models walked into, so that
every layer call of the flattened graph is seen with its output. A cut is a layer's output;
freezing at it freezes every layer with weights that the output is computed from.

A *block boundary* is a tensor that every path from the inputs to the outputs passes
through (besides side inputs such as a padding mask that no layer with weights computed):
the output of a top-level layer, of a residual block after its `Add`, of a transformer
block. `cuts="auto"` takes the block boundaries and keeps one per block: consecutive
boundaries with no layer with weights between them are one (a ReLU after its
BatchNormalization), and so are those of layers whose names share their numbered parts
(`block_3_expand_BN`, `block_3_project_BN`: block 3; `conv2_block1_out`).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import keras

from frostline import _keras
from frostline.errors import FrostlineValueError, PlanError
from frostline.model.tree import LayerNode, LayerTree, variable_size
from frostline.plan.selectors import parse_selectors

__all__ = ["Cut", "GraphCuts", "freeze_selectors", "trace_cuts"]

MAX_AUTO_CUTS = 24


@dataclasses.dataclass
class _Call:
    """One layer call (or keras.ops operation) of the flattened graph."""

    op: Any
    inputs: list  # KerasTensors read
    outputs: list  # KerasTensors written
    index: int
    positional: list = dataclasses.field(default_factory=list)  # those read as positional arguments


@dataclasses.dataclass(frozen=True)
class Cut:
    """A place to cut the model: the output of one layer.

    Attributes:
        path: The layer's path (a selector naming it).
        layer: The layer.
        tensor: Its output in the traced graph.
        frozen: The nodes holding the weights of the layers the output is computed from
            (sublayers included).
        frozen_params: How many parameters they hold.
    """

    path: str
    layer: Any
    tensor: Any
    frozen: tuple[LayerNode, ...]
    frozen_params: int


@dataclasses.dataclass
class GraphCuts:
    """The traced graph of a model: its fresh inputs, outputs, and the cuts asked for."""

    tree: LayerTree
    inputs: Any
    outputs: list
    calls: list[_Call]
    cuts: list[Cut]
    total_params: int
    base: tuple[LayerNode, ...]


def _walk(model: keras.Model, calls: list[_Call], containers: dict[int, Any]) -> Any:
    """Traces `model`'s graph on fresh inputs into `calls`; returns (inputs, outputs)."""
    graph = _keras.functional_graph(model)
    if graph is None and isinstance(model, keras.Sequential):
        raise FrostlineValueError(
            f"Expected a built model. Received Sequential {model.name!r}, which is not built: start it with "
            "keras.Input(shape), or call it on a batch first.")
    if graph is None:
        raise FrostlineValueError(
            f"Expected a Functional or Sequential model whose graph can be cut. Received "
            f"{type(model).__name__} {model.name!r}, a subclassed model with no graph to cut: probe "
            "the Functional model it is built from, e.g. `keras.Model(inputs, outputs)`.")

    def run(op):
        inner = _keras.functional_graph(op) if isinstance(op, keras.Model) else None
        if inner is not None:
            def call_nested(*args, **kwargs):
                kwargs.pop("training", None)
                kwargs.pop("mask", None)
                if not args and "inputs" in kwargs:
                    args = (kwargs.pop("inputs"),)
                if not args or kwargs:
                    raise FrostlineValueError(
                        f"The nested model {op.name!r} is called with keyword arguments "
                        f"({', '.join(kwargs) or 'none'}), which the probe cannot follow.")
                start = len(calls)
                outputs = _keras.run_through_graph(inner, args[0] if len(args) == 1 else list(args), run)
                fed = [t for t in keras.tree.flatten(args) if isinstance(t, keras.KerasTensor)]
                containers[id(op)] = (op, keras.tree.flatten(outputs), fed, (start, len(calls)))
                return outputs
            return call_nested

        def call(*args, **kwargs):
            kwargs.pop("training", None)
            outputs = op(*args, **kwargs)
            read = [t for t in keras.tree.flatten((args, kwargs)) if isinstance(t, keras.KerasTensor)]
            positional = [t for t in keras.tree.flatten(args) if isinstance(t, keras.KerasTensor)]
            calls.append(_Call(op, read, keras.tree.flatten(outputs), len(calls), positional))
            return outputs
        return call

    inputs = keras.tree.map_structure(
        lambda t: keras.Input(batch_shape=t.shape, dtype=t.dtype, sparse=t.sparse, name=t.name),
        _keras.input_structure(graph))
    return inputs, keras.tree.flatten(_keras.run_through_graph(graph, inputs, run))


def _ancestors(calls: list[_Call], tensor: Any, producer: dict[int, _Call]) -> list[_Call]:
    seen: set[int] = set()
    found: list[_Call] = []
    stack = [tensor]
    while stack:
        call = producer.get(id(stack.pop()))
        if call is None or call.index in seen:
            continue
        seen.add(call.index)
        found.append(call)
        stack.extend(call.inputs)
    return sorted(found, key=lambda c: c.index)


def _normalizes(op: Any) -> bool:
    """A normalization layer, which belongs to the block of the layer it follows."""
    return isinstance(op, (keras.layers.BatchNormalization, keras.layers.LayerNormalization,
                           keras.layers.GroupNormalization, keras.layers.UnitNormalization))


def _weights(op: Any) -> list:
    return list(op.weights) if isinstance(op, keras.layers.Layer) else []


def _boundaries(calls: list[_Call], inputs: list, outputs: list, *, final: bool = False) -> list[_Call]:
    """The calls whose single output every path from the inputs to the outputs crosses (with
    `final`, an output too)."""
    needed = {id(t) for t in outputs}
    for call in reversed(calls):  # keep only what the outputs are computed from
        if any(id(t) in needed for t in call.outputs):
            needed.update(id(t) for t in call.inputs)
    weighted: set[int] = set()  # tensors computed by a layer with weights, directly or not
    last_use: dict[int, int] = {}
    for call in calls:
        for t in call.inputs:
            last_use[id(t)] = call.index
        if _weights(call.op) or any(id(t) in weighted for t in call.inputs):
            weighted.update(id(t) for t in call.outputs)
    # Data a layer with weights reads as its input (not a mask passed by keyword), and what
    # it is computed from without weights: a second input, token segments. A padding mask
    # that reaches the layers only as a keyword argument is a side input.
    data = {id(t) for t in outputs}
    for call in reversed(calls):
        if _weights(call.op) or any(id(t) in data for t in call.outputs):
            data.update(id(t) for t in call.positional)
    tracked = weighted | data
    end = len(calls)
    for t in outputs:
        last_use[id(t)] = end
    live = {id(t) for t in inputs if id(t) in tracked and id(t) in needed}  # a second input read later
    found = []
    for call in calls:
        live = {t for t in live if last_use.get(t, -1) > call.index}
        produced = [id(t) for t in call.outputs if id(t) in needed and id(t) in tracked]
        live.update(t for t in produced if last_use.get(t, -1) > call.index)
        if (len(call.outputs) == 1 and isinstance(call.op, keras.layers.Layer) and produced
                and id(call.outputs[0]) in weighted and live == set(produced)
                and (final or id(call.outputs[0]) not in {id(t) for t in outputs})):
            found.append(call)
    return found


def _in_base(boundaries: list[_Call], calls: list[_Call], containers: dict[int, Any], tree: LayerTree,
             outputs: list, producer: dict[int, _Call]) -> list[_Call]:
    """With a nested pretrained base: the block boundaries of the base's own graph (from what
    it is fed to those of its outputs the model reads), and the model's boundaries computed
    from the base alone (a pooling after it); none inside the new head."""
    node = _base(tree, containers, [])[0]
    _, base_outputs, fed, (start, stop) = containers[id(node.layer)]
    read = {c.index for t in outputs for c in _ancestors(calls, t, producer)}
    used = [t for t in base_outputs if id(t) in {id(t) for t in outputs}
            or any(c.index in read and any(t is i for i in c.inputs) for c in calls[stop:])]
    inside = {id(d.layer) for d in node.descendants()}
    found = {b.index: b for b in _boundaries(calls[start:stop], fed, used or base_outputs, final=True)}
    for b in boundaries:
        if all(id(c.op) in inside for c in _ancestors(calls, b.outputs[0], producer) if _weights(c.op)):
            found[b.index] = b
    return [found[i] for i in sorted(found)]


def _block_key(path: str) -> str:
    """`base/block_3_expand_BN` -> `base/3`; `base/conv2_block1_out` -> `base/conv2_block1`."""
    folder, _, name = path.rpartition("/")
    parts = name.split("_")
    numbered = [p for p in parts if re.search(r"\d", p)]
    return f"{folder}/{'_'.join(numbered) if numbered else parts[0]}"


def _auto(boundaries: list[_Call], calls: list[_Call], path_of: dict[int, str]) -> list[_Call]:
    """One boundary per block (see the module's docstring), at most `MAX_AUTO_CUTS`."""
    kept: list[_Call] = []
    for call in boundaries:
        if kept:
            previous = kept[-1]
            same_block = _block_key(path_of[id(previous.op)]) == _block_key(path_of[id(call.op)])
            between = calls[previous.index + 1:call.index + 1]
            if same_block or not any(_weights(c.op) and not _normalizes(c.op) for c in between):
                kept[-1] = call
                continue
        kept.append(call)
    if len(kept) > MAX_AUTO_CUTS:  # evenly spaced, the last one kept
        step = len(kept) / MAX_AUTO_CUTS
        kept = [kept[round(len(kept) - 1 - i * step)] for i in reversed(range(MAX_AUTO_CUTS))]
    return kept


def trace_cuts(model: keras.Model, cuts: str | list[str]) -> GraphCuts:
    """Traces `model` and resolves `cuts` ("auto" or a list of selectors) to `Cut`s in graph
    order.

    Raises:
        FrostlineValueError: for a model without a graph, `cuts=[]`, a selector that
            matches nothing (`PlanError`, with the closest paths), a layer whose output
            the model's outputs do not depend on, or a model with no cut.
    """
    if isinstance(cuts, str) and cuts != "auto":
        cuts = [cuts]
    if not isinstance(cuts, str):
        if not isinstance(cuts, (list, tuple)) or not cuts:
            raise FrostlineValueError(
                f"Expected cuts='auto' or a non-empty list of layer selectors, e.g. ['base/block_3_add']. "
                f"Received: cuts={cuts!r}")
        selectors = parse_selectors(list(cuts))
    calls: list[_Call] = []
    containers: dict[int, Any] = {}
    inputs, outputs = _walk(model, calls, containers)
    tree = LayerTree(model)
    path_of = {id(node.layer): node.path for node in tree.layers}
    producer = {id(t): call for call in calls for t in call.outputs}
    if isinstance(cuts, str):
        boundaries = _boundaries(calls, keras.tree.flatten(inputs), outputs)
        if containers:
            boundaries = _in_base(boundaries, calls, containers, tree, outputs, producer)
        chosen = [(call, call.outputs[0]) for call in _auto(boundaries, calls, path_of)]
        if not chosen:
            raise FrostlineValueError(
                f"Model {model.name!r} has no place to cut: no layer with weights comes before its outputs on a "
                "path every input takes. Pass cuts=[...] with the layers to probe after.")
    else:
        chosen = [_resolve(s, tree, calls, containers, outputs, producer) for s in selectors]
        chosen = sorted(dict((id(t), (c, t)) for c, t in chosen).values(), key=lambda ct: ct[0].index)
    total = sum(variable_size(v) for v in tree.variables())
    found = []
    for call, tensor in chosen:
        frozen = _frozen_nodes(_ancestors(calls, tensor, producer), tree)
        variables = {id(v): v for n in frozen for v in n.variables}
        found.append(Cut(path_of.get(id(call.op), str(call.op)), call.op, tensor, frozen,
                         sum(variable_size(v) for v in variables.values())))
    base = _base(tree, containers, found)
    return GraphCuts(tree, inputs, outputs, calls, found, total, base)


def _frozen_nodes(ancestors: list[_Call], tree: LayerTree) -> tuple[LayerNode, ...]:
    nodes: dict[int, LayerNode] = {}
    for call in ancestors:
        if _weights(call.op):  # the layer and the sublayers holding its weights
            for node in tree.node(call.op).descendants():
                if node.variables:
                    nodes.setdefault(id(node), node)
    return tuple(nodes.values())


def _base(tree: LayerTree, containers: dict[int, Any], cuts: list[Cut]) -> tuple[LayerNode, ...]:
    """The pretrained part: the largest nested model the graph runs through, else what the
    deepest cut freezes."""
    nested = [tree.node(op) for op, *_ in containers.values()]
    if nested:
        return (max(nested, key=lambda n: sum(variable_size(v) for d in n.descendants() for v in d.variables)),)
    return cuts[-1].frozen if cuts else ()


def _resolve(selector: Any, tree: LayerTree, calls: list[_Call], containers: dict[int, Any], outputs: list,
             producer: dict[int, _Call]) -> tuple[_Call, Any]:
    nodes = selector.match(tree)
    if not nodes:
        raise PlanError(f"Cut {str(selector)!r} matches no layer." + selector.suggestion(tree))
    ids = {id(n.layer) for n in nodes}
    candidates = [(c, c.outputs) for c in calls if id(c.op) in ids]
    candidates += [(producer.get(id(outs[-1])), outs) for key, (op, outs, *_) in containers.items() if key in ids]
    candidates = [(c, outs) for c, outs in candidates if c is not None]
    if not candidates:
        raise FrostlineValueError(
            f"Cut {str(selector)!r} matches {', '.join(repr(n.path) for n in nodes[:3])}, which the model's graph never "
            "calls: it is not on the path from the inputs to the outputs.")
    call, outs = max(candidates, key=lambda co: co[0].index)
    if len(outs) != 1:
        raise FrostlineValueError(
            f"Cut {str(selector)!r} names a layer with {len(outs)} outputs; expected one. Name one of the "
            "layers inside it instead.")
    needed = _ancestors(calls, outputs[0], producer) if len(outputs) == 1 else [
        c for t in outputs for c in _ancestors(calls, t, producer)]
    if all(c.index != call.index for c in needed) and all(outs[0] is not t for t in outputs):
        raise FrostlineValueError(
            f"Cut {str(selector)!r} is the output of {tree.node(call.op).path!r}, which the model's outputs are not "
            "computed from: it is not on the path from the inputs to the outputs.")
    return call, outs[0]


def freeze_selectors(nodes: tuple[LayerNode, ...] | list[LayerNode], tree: LayerTree) -> list[str]:
    """Few selectors that name exactly the layers with weights in `nodes` (containers whose
    weights are all in it; a slice `base[:k]` for a prefix of a container's layers)."""
    chosen = {id(d) for n in nodes for d in n.descendants() if d.variables}

    def status(node: LayerNode) -> str:
        weighted = [d for d in node.descendants() if d.variables]
        if not weighted:
            return "any"
        inside = [id(d) in chosen for d in weighted]
        return "all" if all(inside) else ("none" if not any(inside) else "part")

    def compress(node: LayerNode) -> list[str]:
        statuses = [status(c) for c in node.children]
        if all(s in ("all", "any") for s in statuses) and node is not tree.root:
            return [node.path]
        whole = [i for i, s in enumerate(statuses) if s == "all"]
        last_all = whole[-1] if whole else -1
        prefix = all(s in ("all", "any") for s in statuses[:last_all + 1])
        out: list[str] = []
        if prefix and len(whole) > 2:  # `base[:k]` rather than a long list
            out.append(f"{node.path}[:{last_all + 1}]")
            rest = range(last_all + 1, len(statuses))
        else:
            rest = range(len(statuses))
        for i in rest:
            child = node.children[i]
            if statuses[i] == "all":
                out.append(child.path)
            elif statuses[i] == "part":
                out.extend(compress(child))
        return out

    return compress(tree.root) if chosen else []
