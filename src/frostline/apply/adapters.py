"""LoRA adapters: added by `Plan.lora` rules, saved and loaded by layer path, merged.

Keras's own `enable_lora` adds the adapters. frostline adds what Keras leaves out: a plan
rule that says where they go, undo when a plan fails halfway, files keyed by layer path
(a model whose layers are listed in another order still gets each adapter where it
belongs), and merging them into the kernels with the adapters taken out.
"""

from __future__ import annotations

import os
import zipfile

import keras
import numpy as np

from frostline import _keras
from frostline.apply.sync import sync
from frostline.errors import FrostlineValueError, MissingFileError, did_you_mean
from frostline.model.adapters import adapter_variables, base_variable, lora_rank
from frostline.model.tree import LayerTree
from frostline.plan.resolve import Resolution

__all__ = ["add_adapters", "load_adapters", "merge_adapters", "save_adapters"]


def add_adapters(resolution: Resolution) -> list[keras.layers.Layer]:
    """Gives each layer the resolution adapts its adapters; on any error takes back the
    ones it added. Returns the layers adapted."""
    done = []
    try:
        for node, rank, alpha in resolution.adapters:
            node.layer.enable_lora(rank, lora_alpha=alpha)
            done.append(node.layer)
    except BaseException:
        remove_adapters(done)
        raise
    return done


def remove_adapters(layers: list[keras.layers.Layer]) -> None:
    """Takes adapters out of layers again; their kernels' flags go back to trainable, as
    before `enable_lora` froze them."""
    for layer in layers:
        base = base_variable(layer)
        _keras.remove_lora(layer)
        if base is not None:
            base.trainable = True


def _adapted(model: keras.layers.Layer) -> dict[str, list[keras.Variable]]:
    tree = LayerTree(model)
    return {node.path: adapter_variables(node.layer) for node in tree.layers if lora_rank(node.layer)}


def save_adapters(model: keras.layers.Layer, path: str | os.PathLike[str]) -> str:
    """Writes every LoRA adapter of the model to an `.npz` file, keyed by variable path.

    Keys are `"<layer path>/<variable name>"` (e.g. `"backbone/transformer_layer_0/
    self_attention/query/lora_kernel_a"`), with each layer's rank and alpha stored too,
    so that `load_adapters` puts each adapter into the layer of the same path.

    Args:
        model: A model with LoRA adapters.
        path: The file to write (`.npz` is added if missing).

    Returns:
        The path written.

    Raises:
        FrostlineValueError: for a model without adapters.
    """
    adapted = _adapted(model)
    if not adapted:
        raise FrostlineValueError(
            f"Model {model.name!r} has no LoRA adapters to save. Add them with fl.apply(model, "
            "fl.Plan().lora(selector, rank)) or layer.enable_lora(rank)."
        )
    tree = LayerTree(model)
    arrays: dict[str, np.ndarray] = {}
    for node in tree.layers:
        if node.path in adapted:
            arrays[f"{node.path}/__rank__"] = np.asarray(node.layer.lora_rank)
            arrays[f"{node.path}/__alpha__"] = np.asarray(float(node.layer.lora_alpha))
            for v in adapted[node.path]:
                arrays[node.variable_path(v)] = keras.ops.convert_to_numpy(v)
    path = os.fspath(path)
    if not path.endswith(".npz"):
        path += ".npz"
    temporary = path + ".tmp"
    with open(temporary, "wb") as f:
        np.savez(f, **arrays)
    os.replace(temporary, path)  # never a half-written file under the name
    return path


def _read_adapter_file(path: str) -> dict[str, np.ndarray]:
    if not os.path.isfile(path):
        raise MissingFileError(f"No such adapter file: {path!r}")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise FrostlineValueError(f"{path!r} is not an adapter file written by fl.save_adapters: {e}") from None


def _planned_loads(model, stored: dict[str, np.ndarray], path: str) -> list[tuple]:
    """`(layer, rank, alpha, {variable name: value})` for every layer in the file, checked
    against the model before anything changes."""
    tree = LayerTree(model)
    by_path = {p: node for node in tree.layers for p in node.paths}
    layer_paths = sorted({key.rsplit("/", 1)[0] for key in stored if key.endswith("/__rank__")})
    planned = []
    for layer_path in layer_paths:
        node = by_path.get(layer_path)
        if node is None:
            raise FrostlineValueError(
                f"{path!r} has adapters for layer {layer_path!r}, which the model does not have."
                + did_you_mean(layer_path, list(by_path))
            )
        rank, alpha = int(stored[f"{layer_path}/__rank__"]), float(stored[f"{layer_path}/__alpha__"])
        current = lora_rank(node.layer)
        if current is not None and current != rank:
            raise FrostlineValueError(
                f"{layer_path!r} has LoRA adapters of rank {current}; {path!r} holds rank {rank}."
            )
        values = {key.rsplit("/", 1)[1]: value for key, value in stored.items()
                  if key.rsplit("/", 1)[0] == layer_path and not key.endswith(("__rank__", "__alpha__"))}
        planned.append((node, rank, alpha, values))
    if not planned:
        raise FrostlineValueError(f"{path!r} holds no adapters.")
    return planned


def load_adapters(model: keras.layers.Layer, path: str | os.PathLike[str]) -> list[str]:
    """Loads adapters written by `save_adapters` into the layers of the same paths.

    A layer without adapters gets them (with the stored rank and alpha) first. Every
    layer path, rank and shape is checked before anything changes.

    Args:
        model: A model with the same layer paths as the one saved.
        path: An `.npz` file from `save_adapters`.

    Returns:
        The layer paths loaded.

    Raises:
        MissingFileError: for a file that does not exist.
        FrostlineValueError: for a file that is not an adapter file, a layer path the
            model does not have, or a rank or shape that differs; nothing has changed.
    """
    path = os.fspath(path)
    planned = _planned_loads(model, _read_adapter_file(path), path)
    for node, rank, _, values in planned:
        expected = _adapter_shapes(node.layer, rank)
        got = {name: tuple(v.shape) for name, v in values.items()}
        if got != expected:
            raise FrostlineValueError(
                f"{node.path!r}: the file's adapters have shapes {got}; the layer's are {expected}. "
                "Was it written for another model?"
            )
    added = []
    try:
        for node, rank, alpha, values in planned:
            if lora_rank(node.layer) is None:
                node.layer.enable_lora(rank, lora_alpha=alpha)
                added.append(node.layer)
            for v in adapter_variables(node.layer):
                v.assign(values[v.name])
    except BaseException:
        remove_adapters(added)
        raise
    sync(model)
    return [node.path for node, *_ in planned]


def _adapter_shapes(layer: keras.layers.Layer, rank: int) -> dict[str, tuple]:
    if lora_rank(layer) is not None:
        return {v.name: tuple(v.shape) for v in adapter_variables(layer)}
    base = tuple(base_variable(layer).shape)
    prefix = "lora_embeddings" if isinstance(layer, keras.layers.Embedding) else "lora_kernel"
    return {f"{prefix}_a": base[:-1] + (rank,), f"{prefix}_b": (rank, base[-1])}


def merge_adapters(model: keras.layers.Layer) -> list[str]:
    """Folds every LoRA adapter into its layer's kernel and takes the adapters out.

    Afterwards the model computes what it computed with the adapters, has no adapter
    variables, and its config no longer asks for adapters; each merged kernel stays
    frozen. On a compiled model the optimizer is rebuilt for the new trainable set.

    Args:
        model: A model with LoRA adapters.

    Returns:
        The layer paths merged.
    """
    tree = LayerTree(model)
    merged = []
    for node in tree.layers:
        if lora_rank(node.layer) is None:
            continue
        _keras.merge_lora(node.layer)
        merged.append(node.path)
    sync(model)
    return merged
