"""What `frostline train` checks before it trains: the Keras names a configuration uses,
the data against the head and the base, and that every phase has something to train:
all that `config.load_config` cannot check without Keras.

Each check raises a ConfigError naming the place in the YAML, what was expected, what
was received and what to change; none of them writes anything. `check_config` needs no
model and reads no data (it lists an image folder); `check_data` looks at the arrays;
`check_against_model` compares the data with the built model.
"""

from __future__ import annotations

import os
from typing import Any

import keras
import numpy as np

from frostline.app.config import TrainConfig
from frostline.errors import ConfigError, PlanError, did_you_mean, shorten

__all__ = ["IMAGE_EXTENSIONS", "check_against_model", "check_config", "check_data", "image_size", "logged_metrics"]

IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")
"""The files `keras.utils.image_dataset_from_directory` reads as images."""

_NOT_NAMES = {"get", "serialize", "deserialize", "legacy", "schedules", "Loss", "Metric", "Optimizer", "Reduction"}
# Names that Keras's compile accepts for metrics without keras.metrics knowing them.
_COMPILE_METRICS = ("accuracy", "acc", "crossentropy", "ce")


def _public(module: Any) -> list[str]:
    return [n for n in dir(module) if not n.startswith("_") and n not in _NOT_NAMES]


def _resolve(where: str, name: str, get: Any, known: list[str], what: str, example: str, *,
             extra: tuple[str, ...] = ()) -> None:
    if name in extra:
        return
    try:
        get(name)
    except (ValueError, TypeError):
        raise ConfigError(f"{where}: expected a Keras {what} name, e.g. {example!r}. Received {name!r}, which Keras "
                          f"does not know.{did_you_mean(name, [*known, *extra])}") from None


def logged_metrics(config: TrainConfig) -> list[str]:
    """The names `fit` logs for the configuration: `loss`, each metric as written, and
    their `val_` versions when there is validation data."""
    names = ["loss", *config.metrics]
    data = config.data
    validation = data.validation_split > 0
    if data.npz is not None and not validation:
        with np.load(data.npz) as arrays:
            validation = "x_val" in arrays.files and "y_val" in arrays.files
    return names + ([f"val_{n}" for n in names] if validation else [])


def _check_monitors(config: TrainConfig) -> None:
    logged = None
    for i, phase in enumerate(config.phases):
        if phase.early_stopping is None:
            continue
        logged = logged or logged_metrics(config)
        monitor = phase.early_stopping.get("monitor", "val_loss")
        if monitor not in logged:
            given = "" if "monitor" in phase.early_stopping else " (EarlyStopping's default)"
            hint = did_you_mean(str(monitor), logged) or (
                " There is no validation data: add x_val and y_val to the .npz, or set data.validation_split."
                if str(monitor).startswith("val_") else "")
            raise ConfigError(f"phases[{i}].early_stopping.monitor: expected a metric the run logs, one of "
                              f"{', '.join(logged)}. Received {monitor!r}{given}.{hint}")


def _check_phases(config: TrainConfig) -> None:
    """Each phase's plan parses, and its `early_stopping` holds arguments of EarlyStopping."""
    for i, phase in enumerate(config.phases):
        try:
            phase.to_plan()
        except PlanError as e:
            raise ConfigError(f"phases[{i}].plan: {e}") from None
        if phase.early_stopping is not None:
            try:
                keras.callbacks.EarlyStopping(**phase.early_stopping)
            except TypeError as e:
                raise ConfigError(f"phases[{i}].early_stopping: not an argument of keras.callbacks.EarlyStopping: "
                                  f"{e}") from None


def _check_names(config: TrainConfig) -> None:
    _resolve("loss", config.loss, keras.losses.get, _public(keras.losses), "loss", "sparse_categorical_crossentropy")
    metrics = _public(keras.metrics)
    for i, metric in enumerate(config.metrics):
        _resolve(f"metrics[{i}]", metric, keras.metrics.get, metrics, "metric", "accuracy", extra=_COMPILE_METRICS)
    activations = [n for n in _public(keras.activations) if n.islower()]
    for key in ("activation", "output_activation"):
        _resolve(f"head.{key}", getattr(config.head, key), keras.activations.get, activations, "activation", "relu")
    optimizer = config.optimizer
    name = optimizer if isinstance(optimizer, str) else optimizer.get("class_name")
    known = [n.lower() for n in _public(keras.optimizers) if n[0].isupper()]
    if isinstance(name, str) and name.lower() not in known:
        raise ConfigError(f"optimizer: expected a Keras optimizer name, e.g. 'adam' or 'sgd'. Received {name!r}, "
                          f"which Keras does not know.{did_you_mean(name.lower(), known)}")


def _class_folders(folder: str) -> dict[str, int]:
    """Each class subfolder of an image folder with the number of images in it, as
    image_dataset_from_directory sees them (sorted by name, images at any depth)."""
    counts = {}
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.is_dir():
            counts[entry.name] = sum(f.lower().endswith(IMAGE_EXTENSIONS)
                                     for _, _, files in os.walk(entry.path) for f in files)
    return counts


def _check_image_folder(config: TrainConfig) -> None:
    folder, classes = config.data.images, config.head.classes
    counts = _class_folders(folder)
    if not sum(counts.values()):
        found = f"{len(counts)} subfolders with no images" if counts else "no subfolders"
        raise ConfigError(f"data.images: expected one subfolder per class, each holding its images "
                          f"({', '.join(IMAGE_EXTENSIONS)}). Received {folder!r} with {found}.")
    names = ", ".join(counts)
    if len(counts) < 2:
        raise ConfigError(f"data.images: expected at least two classes, one subfolder each. Received one: {names}. "
                          "Add a subfolder of images for every other class.")
    if len(counts) != classes:
        raise ConfigError(f"data.images: {folder!r} has {len(counts)} class subfolders ({shorten(names, 120, quote=False)}), "
                          f"but head.classes is {classes}. Set head.classes: {len(counts)}, or remove the extra folders.")


def check_config(config: TrainConfig) -> None:
    """Checks, after `load_config`, what needs Keras but no model: each phase's plan (its
    rules and selectors parse) and `early_stopping` arguments, the loss, metric,
    activation and optimizer names, each EarlyStopping `monitor` against the metrics the
    run logs, and an image folder's classes against `head.classes`.

    Raises:
        ConfigError: for the first problem, with a did-you-mean where a name is close.
    """
    _check_phases(config)
    _check_names(config)
    _check_monitors(config)
    if config.data.images is not None:
        _check_image_folder(config)


def _sparse_labels(y: np.ndarray) -> bool:
    return y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1)


def _check_labels(name: str, y: np.ndarray, config: TrainConfig) -> None:
    classes = config.head.classes
    if not _sparse_labels(y):
        if y.shape[-1] != classes:
            raise ConfigError(f"data.npz: {name} has one-hot labels of width {y.shape[-1]}, but head.classes is "
                              f"{classes}. Set head.classes: {y.shape[-1]}.")
        return
    if y.size == 0:
        return
    if not np.issubdtype(y.dtype, np.number) or np.any(y != np.round(y)):
        raise ConfigError(f"data.npz: expected {name} to hold class numbers 0 to {classes - 1}. "
                          f"Received an array of {y.dtype} that are not all whole numbers.")
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= classes:
        raise ConfigError(f"data.npz: {name} holds labels {low} to {high}, but head.classes is {classes} (labels 0 to "
                          f"{classes - 1}). Set head.classes: {high + 1}, or renumber the labels.")
    if name == "y_train" and len(np.unique(y)) < 2:
        raise ConfigError(f"data.npz: expected at least two classes in y_train. Received only the label {low}.")


def check_data(config: TrainConfig, x: Any, y: Any, validation: Any) -> None:
    """Checks arrays read from a `.npz` file: as many labels as samples, and labels that
    fit `head.classes` with at least two classes. Datasets pass unchecked.

    Raises:
        ConfigError: for the first problem.
    """
    if not isinstance(x, np.ndarray):
        return
    pairs = [("x_train", x, "y_train", y)] + ([("x_val", validation[0], "y_val", validation[1])] if validation else [])
    for x_name, xs, y_name, ys in pairs:
        if len(xs) != len(ys):
            raise ConfigError(f"data.npz: expected one label per sample. Received {x_name} with {len(xs)} samples and "
                              f"{y_name} with {len(ys)} labels.")
        if "sparse" in config.loss or not _sparse_labels(ys):
            _check_labels(y_name, ys, config)


def check_against_model(config: TrainConfig, model: keras.Model, x: Any, validation: Any) -> None:
    """Checks that the base can take the samples: a `.npz` file's sample shape, or the
    size and channels an image folder is read with.

    Raises:
        ConfigError: for the first mismatch.
    """
    takes = tuple(model.input_shape[1:])
    if config.data.npz is not None:
        arrays = [("x_train", x)] + ([("x_val", validation[0])] if validation else [])
        for name, xs in arrays:
            shape = tuple(xs.shape[1:])
            if len(shape) != len(takes) or any(t is not None and t != s for s, t in zip(shape, takes)):
                raise ConfigError(f"data.npz: the base takes samples of shape {_shape(takes)}; {name} has samples of "
                                  f"shape {_shape(shape)}. Resize the arrays, or use a base of that input shape.")
        return
    height, width = image_size(config, model)
    channels = {"grayscale": 1, "rgb": 3, "rgba": 4}[config.data.color_mode]
    if len(takes) != 3:
        raise ConfigError(f"data.images: an image folder needs a base that takes images (height, width, channels); "
                          f"this base takes samples of shape {_shape(takes)}.")
    if takes[2] is not None and takes[2] != channels:
        mode = {1: "grayscale", 3: "rgb", 4: "rgba"}.get(takes[2])
        hint = f" Set data.color_mode: {mode}." if mode else ""
        raise ConfigError(f"data.images: the base takes images with {takes[2]} channel{'s' if takes[2] != 1 else ''} (input shape {_shape(takes)}); "
                          f"the folder is read with {channels} (color_mode {config.data.color_mode}).{hint}")
    if (takes[0] is not None and takes[0] != height) or (takes[1] is not None and takes[1] != width):
        raise ConfigError(f"data.image_size: the base takes images of {takes[0]}x{takes[1]}; received [{height}, "
                          f"{width}]. Set data.image_size: [{takes[0]}, {takes[1]}], or leave it out.")


def image_size(config: TrainConfig, model: keras.Model) -> tuple[int, int]:
    """The `[height, width]` an image folder is read at: `data.image_size`, else the
    base's input size, else 256x256."""
    if config.data.image_size is not None:
        return tuple(config.data.image_size)
    shape = tuple(model.input_shape[1:3])
    return tuple(s if s is not None else 256 for s in shape) if len(shape) == 2 else (256, 256)


def _shape(shape: tuple) -> str:
    return "(" + ", ".join("None" if s is None else str(s) for s in shape) + ")"
