"""`fl.probe`: a linear probe at every candidate cut of a model, from one pass of the data.

Where should the frost line be? Freezing the layers up to a cut keeps what they learned;
how well a linear head does on their output (pooled over spatial or sequence axes) tells
how much of it the new task can use. One multi-output model computes every cut's pooled
activations in one pass of the training data and one of the validation data, in
inference mode, with the model's own preprocessor where it has one; then one Keras model
holding a linear head per cut trains them side by side on the stored features. The model
is not changed: no flag, weight or compile state.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
import zlib
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from frostline.cache.passes import DataPasses
from frostline.cache.preprocess import batch_transform
from frostline.cache.store import is_arrays, samples, sliced, to_numpy
from frostline.errors import FrostlineTypeError, FrostlineValueError, shorten
from frostline.train.probe_checks import check_arguments, check_data, labels, validation_parts
from frostline.train.probe_cuts import GraphCuts, freeze_selectors, trace_cuts
from frostline.train.probe_result import ProbeResult

__all__ = ["probe"]


class _GlobalMean(keras.layers.Layer):
    """The mean over every axis but the batch and the channels: spatial axes of images,
    the sequence axis of tokens. Rank-2 features pass as they are."""

    def call(self, x):
        x = keras.ops.cast(x, "float32")
        rank = len(x.shape)
        if rank <= 2:
            return x
        first = keras.config.image_data_format() == "channels_first" and rank >= 4
        return keras.ops.mean(x, axis=tuple(range(2, rank)) if first else tuple(range(1, rank - 1)))

    def compute_output_shape(self, shape):
        if len(shape) <= 2:
            return shape
        first = keras.config.image_data_format() == "channels_first" and len(shape) >= 4
        return (shape[0], shape[1] if first else shape[-1])


class _Features:
    """Pooled features of one pass, one array per cut: in memory up to `memory_limit`
    bytes, then in files of `folder` read back memory-mapped."""

    def __init__(self, cuts: int, memory_limit: int, folder: str):
        self.parts: list[list[np.ndarray]] = [[] for _ in range(cuts)]
        self.labels: list[np.ndarray] = []
        self.nbytes = 0
        self.memory_limit = memory_limit
        self.folder = folder
        self.files: list[Any] | None = None
        self.rows = 0

    def add(self, outputs: list[np.ndarray], y: np.ndarray) -> None:
        self.labels.append(y)
        self.rows += len(y)
        self.nbytes += sum(o.nbytes for o in outputs)
        if self.files is None and self.nbytes > self.memory_limit:
            self.files = [open(os.path.join(self.folder, f"cut{i}-{id(self)}.f32"), "wb") for i in range(len(outputs))]
            for f, part in zip(self.files, self.parts):
                for a in part:
                    f.write(np.ascontiguousarray(a, "float32").tobytes())
            self.parts = [[] for _ in outputs]
        for i, o in enumerate(outputs):
            if self.files is None:
                self.parts[i].append(o)
            else:
                self.files[i].write(np.ascontiguousarray(o, "float32").tobytes())

    def arrays(self, widths: list[int]) -> tuple[list[np.ndarray], np.ndarray]:
        labels = np.concatenate(self.labels)
        if self.files is None:
            return [np.concatenate(p) for p in self.parts], labels
        for f in self.files:
            f.close()
        return [np.memmap(f.name, "float32", "r", shape=(self.rows, w)) for f, w in zip(self.files, widths)], labels

    @property
    def on_disk(self) -> bool:
        return self.files is not None


class _Sliced:
    """Arrays in batches, each through the model's preprocessing: raw text and images,
    which Keras's array adapter cannot batch, as a keras-hub task's `fit` takes them."""

    def __init__(self, x: Any, y: Any, batch_size: int, transform: Any):
        self.x, self.y, self.batch_size, self.transform = x, y, batch_size, transform

    def next_pass(self):
        for start in range(0, samples(self.x) or 0, self.batch_size):
            stop = start + self.batch_size
            batch = self.transform(sliced(self.x, start, stop), sliced(self.y, start, stop), None)
            x, y, w = keras.utils.unpack_x_y_sample_weight(batch)
            yield keras.tree.map_structure(to_numpy, (x, y, w))


def _passes(x: Any, y: Any, batch_size: int, transform: Any) -> Any:
    if transform is not None and is_arrays(x) and (y is None or is_arrays(y)):
        return _Sliced(x, y, batch_size, transform)
    return DataPasses(x, y, batch_size=batch_size, transform=transform)


def _shapes(x: Any) -> str:
    return ", ".join(str(tuple(a.shape)) for a in keras.tree.flatten(x) if hasattr(a, "shape"))


def _pass(extractor: keras.Model, passes: Any, sink: _Features, what: str) -> None:
    for x, y, w in passes.next_pass():
        if w is not None:
            raise FrostlineValueError(f"Expected (x, y) batches of {what} data. Received sample weights too: the "
                                      "probe does not weight its scores; leave them out.")
        y = labels(y, what)
        try:
            out = extractor.predict_on_batch(x)
        except (ValueError, TypeError) as e:
            if sink.rows:
                raise
            expected = ", ".join(str(tuple(t.shape)) for t in keras.tree.flatten(extractor.inputs))
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise FrostlineValueError(
                f"The {what} data does not fit the model's inputs: expected batches of shape {expected}, received "
                f"{_shapes(x)} ({shorten(first, 200, quote=False)}). A dataset must be batched, and images "
                "have the base's size and channels.") from None
        out = out if isinstance(out, (list, tuple)) else [out]
        sink.add([np.asarray(o, "float32") for o in out], y)
    if not sink.rows:
        raise FrostlineValueError(f"The {what} data gave no samples.")


def _whole(a: np.ndarray) -> bool:
    return bool(np.all(np.isfinite(a)) and np.all(a == np.round(a)) and a.min() >= 0)


def _task(y: np.ndarray, yv: np.ndarray, units: int) -> tuple[str, np.ndarray, np.ndarray, int]:
    """("classification" | "regression", y, yv, output units)."""
    if y.ndim == 2 and y.shape[1] > 1 and np.isin(y, (0, 1)).all() and np.all(y.sum(axis=1) == 1):
        y, yv = y.argmax(axis=1), (yv.argmax(axis=1) if yv.ndim == 2 else yv)
    squeeze = (lambda a: a.reshape(len(a)) if a.ndim == 2 and a.shape[1] == 1 else a)
    y, yv = squeeze(y), squeeze(yv)
    if y.ndim == 1 and np.issubdtype(y.dtype, np.floating) and units > 1 and _whole(y) and _whole(yv) \
            and max(y.max(), yv.max()) < units:
        y, yv = y.astype("int64"), yv.astype("int64")  # class indices stored as floats, for a classifier's head
    if y.ndim == 1 and (np.issubdtype(y.dtype, np.integer) or y.dtype == bool):
        if y.min() < 0 or yv.min() < 0:
            raise FrostlineValueError(f"Expected class labels from 0. Received labels down to {min(y.min(), yv.min())}.")
        return "classification", y.astype("int32"), yv.astype("int32"), max(int(y.max()) + 1, int(yv.max()) + 1, units)
    y, yv = y.astype("float32").reshape(len(y), -1), yv.astype("float32").reshape(len(yv), -1)
    return "regression", y, yv, y.shape[1]


class _Shuffled(keras.utils.PyDataset):
    """The stored features in batches, in a new order each epoch from one seeded generator."""

    def __init__(self, features: list[np.ndarray], y: np.ndarray, batch_size: int, seed: int):
        super().__init__()
        self.features, self.y, self.batch_size = features, y, batch_size
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(len(y))

    def __len__(self) -> int:
        return -(-len(self.y) // self.batch_size)

    def __getitem__(self, index: int):
        rows = np.sort(self.order[index * self.batch_size:(index + 1) * self.batch_size])
        y = self.y[rows]
        return tuple(f[rows] for f in self.features), tuple(y for _ in self.features)

    def on_epoch_end(self) -> None:
        self.order = self.rng.permutation(len(self.y))


def _heads(features: list[np.ndarray], task: str, units: int, seeds: list[int], learning_rate: float) -> keras.Model:
    inputs, outputs = [], []
    for i, f in enumerate(features):
        inp = keras.Input((f.shape[1],), name=f"cut{i}")
        mean = f.mean(axis=0, dtype="float64")
        variance = np.maximum(f.var(axis=0, dtype="float64"), 1e-6)
        x = keras.layers.Normalization(mean=mean, variance=variance)(inp)
        outputs.append(keras.layers.Dense(units, name=f"head{i}",
                                          kernel_initializer=keras.initializers.GlorotUniform(seeds[i]))(x))
        inputs.append(inp)
    heads = keras.Model(inputs, outputs, name="probe_heads")
    loss = (keras.losses.SparseCategoricalCrossentropy(from_logits=True) if task == "classification"
            else keras.losses.MeanSquaredError())
    heads.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=[loss] * len(features))
    return heads


def _scores(task: str, outputs: list[np.ndarray], yv: np.ndarray) -> list[tuple[float, float]]:
    """(score, loss) per head: accuracy and cross-entropy, or R² and mean squared error."""
    scored = []
    for out in outputs:
        out = np.asarray(out, "float64")
        if task == "classification":
            shifted = out - out.max(axis=1, keepdims=True)
            log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
            scored.append((float(np.mean(out.argmax(axis=1) == yv)), float(-log_p[np.arange(len(yv)), yv].mean())))
        else:
            error = float(np.mean((out - yv) ** 2))
            spread = float(np.mean((yv - yv.mean(axis=0)) ** 2)) or 1.0
            scored.append((1.0 - error / spread, error))
    return scored





def probe(model: keras.Model, x: Any, y: Any = None, *, validation_data: Any, cuts: str | Sequence[str] = "auto",
          epochs: int = 20, batch_size: int = 32, learning_rate: float = 1e-2, seed: int = 0,
          memory_limit: int = 2**30, directory: str | os.PathLike[str] | None = None) -> ProbeResult:
    """Trains a linear probe at each candidate cut of `model` and scores it on held-out data.

    A probe at a cut is a Dense layer on the cut's activations, averaged over their spatial
    or sequence axes and standardized: how well the layers up to the cut serve the new task
    when frozen. Every cut's activations come from one pass of `x` (and one of the
    validation data) through the model in inference mode; the heads then train side by
    side, `epochs` epochs of Adam on the stored features.

    Args:
        model: A Functional or Sequential model (nested models are cut into), e.g. the
            pretrained base with its new head, or a keras-hub task (its preprocessor runs
            first).
        x: Training inputs: arrays, or a dataset of `(x, y)` batches (`tf.data`,
            `PyDataset`, grain, torch `DataLoader`).
        y: Training labels, with arrays: class indices (or one-hot rows) for a classifier
            (whole numbers below the model's output width count as classes, floats too);
            anything else is regression.
        validation_data: `(x_val, y_val)` or a dataset; the probes are scored on it.
        cuts: `"auto"` (the model's block boundaries, at most 24) or a list of selectors;
            each cuts after the last layer it matches, e.g. `["base/block_6_project_BN"]`.
        epochs: Epochs of the heads. Defaults to 20.
        batch_size: For the pass and the heads. Defaults to 32.
        learning_rate: Adam's, for the heads. Defaults to 1e-2.
        seed: Seeds the heads' initial weights and batch order. Defaults to 0.
        memory_limit: Bytes of pooled features kept in memory; above it they go to files
            in `directory`. Defaults to 1 GiB.
        directory: For those files (deleted after). Defaults to a temporary folder.

    Returns:
        A `ProbeResult`: a row per cut with its `cut`, `frozen_params` and `score`
        (validation accuracy, or R² for regression), and `.best`.

    Raises:
        FrostlineValueError: before any training, for no `validation_data`, `cuts=[]`, a
            cut that matches nothing (`PlanError`) or is not on the path from the inputs
            to the outputs, a subclassed model with no graph, or data without labels.

    Example:

    >>> import keras, numpy as np, frostline as fl
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, name="body"),
    ...                           keras.layers.Dense(2, name="head")])
    >>> x = np.random.default_rng(0).random((64, 4), dtype="float32")
    >>> y = (x[:, 0] > 0.5).astype("int32")
    >>> result = fl.probe(model, x, y, validation_data=(x, y), epochs=2)
    >>> [row["cut"] for row in result.rows]
    ['body']
    """
    if validation_data is None:
        raise FrostlineValueError("Expected validation_data=(x_val, y_val) to score the probes on. Received None: "
                                  "hold out part of the training data, e.g. the last 20%.")
    check_arguments(cuts=cuts, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, seed=seed,
                    memory_limit=memory_limit, directory=directory)
    if not isinstance(model, keras.Model):
        raise FrostlineTypeError(f"Expected a keras.Model. Received: {type(model).__name__}")
    x, y = check_data(x, y, "training")
    xv, yv = check_data(*(validation_parts(validation_data) or (validation_data, None)), "validation")
    graph = trace_cuts(model, cuts if isinstance(cuts, str) else list(cuts))
    transform = batch_transform(model)
    train_passes = _passes(x, y, batch_size, transform)
    validation_passes = _passes(xv, yv, batch_size, transform)
    return _run(model, graph, train_passes, validation_passes, epochs=epochs, batch_size=batch_size,
                learning_rate=float(learning_rate), seed=seed, memory_limit=memory_limit, directory=directory)


def _run(model: keras.Model, graph: GraphCuts, train_passes: Any, validation_passes: Any, *,
         epochs: int, batch_size: int, learning_rate: float, seed: int, memory_limit: int,
         directory: Any) -> ProbeResult:
    extractor = keras.Model(graph.inputs, [_GlobalMean()(c.tensor) for c in graph.cuts],
                            name=f"{model.name}_probe")
    widths = [int(t.shape[-1]) for t in extractor.outputs]
    units = int(graph.outputs[0].shape[-1] or 1) if len(graph.outputs) == 1 and graph.outputs[0].shape else 1
    with contextlib.ExitStack() as stack:
        folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="frostline-probe-", dir=directory))
        started = time.perf_counter()
        train, held_out = _Features(len(widths), memory_limit, folder), _Features(len(widths), memory_limit, folder)
        _pass(extractor, train_passes, train, "training")
        _pass(extractor, validation_passes, held_out, "validation")
        features, y = train.arrays(widths)
        val_features, yv = held_out.arrays(widths)
        pass_seconds = time.perf_counter() - started
        task, y, yv, units = _task(y, yv, units)
        if task == "regression":
            mean, std = y.mean(axis=0), y.std(axis=0) + 1e-12
            y, yv = (y - mean) / std, (yv - mean) / std
        seeds = [seed + zlib.crc32(c.path.encode()) % 2**16 for c in graph.cuts]  # a cut's own, whatever else is probed
        heads = _heads(features, task, units, seeds, learning_rate)
        heads.fit(_Shuffled(features, y, batch_size, seed), epochs=epochs, verbose=0, shuffle=False)
        outputs = heads.predict(list(val_features), batch_size=max(batch_size, 256), verbose=0)
        outputs = outputs if isinstance(outputs, list) else [outputs]
        scores = _scores(task, outputs, yv)
        head_seconds = time.perf_counter() - started - pass_seconds
        on_disk = train.on_disk or held_out.on_disk
    base = {id(d) for node in graph.base for d in node.descendants() if d.variables}
    rows = []
    for cut, width, (score, loss) in zip(graph.cuts, widths, scores):
        frozen = {id(n) for n in cut.frozen}
        rows.append({
            "cut": cut.path, "layer": type(cut.layer).__name__, "features": width,
            "frozen_params": cut.frozen_params,
            "frozen_fraction": cut.frozen_params / graph.total_params if graph.total_params else 0.0,
            "score": score, "loss": loss, "freeze": freeze_selectors(cut.frozen, graph.tree),
            "in_base": frozen <= base, "whole_base": base <= frozen,
        })
    return ProbeResult(
        rows=rows, metric="accuracy" if task == "classification" else "r2", model=model.name,
        base=freeze_selectors(graph.base, graph.tree), train_samples=len(y), validation_samples=len(yv),
        epochs=epochs, seconds={"pass": pass_seconds, "heads": head_seconds}, on_disk=on_disk)
