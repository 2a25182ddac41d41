"""The `frostline train` job: a configuration in, a trained model and its report out."""

from __future__ import annotations

import contextlib
import csv
import difflib
import importlib.util
import inspect
import math
import os
import re
import zipfile
from typing import Any

import keras
import numpy as np
import yaml

from frostline.app.config import TrainConfig
from frostline.app.folder_data import fit_ready
from frostline.app.outputs import write_report
from frostline.app.preflight import check_against_model, check_config, check_data, image_size
from frostline.app.plots import plot_frost_lines, plot_history
from frostline.app.progress import progress_callbacks
from frostline.apply.apply import scoped
from frostline.cache.policy import FitInputs, reason_not_to_cache
from frostline.errors import ConfigError, FrostlineTypeError, FrostlineValueError, NotCacheable, PlanError
from frostline.train.checkpoint import read_latest
from frostline.train.checks import check_cache
from frostline.train.distribute import data_parallel
from frostline.train.phase import Phase
from frostline.train.runner import FineTune

__all__ = ["build_model", "image_folder_format", "load_data", "run_training", "validate_plans"]


def _build_base(config: TrainConfig) -> keras.Model:
    spec = config.base
    if spec.keras is not None:
        try:
            loaded = keras.saving.load_model(spec.keras, compile=False)
        except Exception as e:  # any failure to load: one clear line
            raise ConfigError(f"base.keras: {spec.keras!r} is not a readable Keras model: {e}") from None
        # Named "base" so that plans can say base/...; the layers are the loaded ones.
        inputs, outputs = loaded.inputs, loaded.outputs
        return keras.Model(
            inputs[0] if len(inputs) == 1 else inputs, outputs[0] if len(outputs) == 1 else outputs, name="base"
        )
    names = [n for n in dir(keras.applications) if n[0].isupper()]
    if spec.application not in names:
        close = difflib.get_close_matches(spec.application, names, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"base.application: unknown keras.applications model {spec.application!r}.{hint}")
    factory = getattr(keras.applications, spec.application)
    kwargs: dict[str, Any] = {
        "include_top": False,
        "weights": None if spec.weights == "none" else spec.weights,
        "input_shape": tuple(spec.input_shape),
    }
    if "name" in inspect.signature(factory).parameters:
        kwargs["name"] = "base"
    try:
        return factory(**kwargs)
    except Exception as e:  # e.g. imagenet weights with no network
        raise ConfigError(f"base: building {spec.application} failed: {e}") from None


def build_model(config: TrainConfig) -> keras.Model:
    """The base under a new head, as the configuration describes it. The base is the
    layer named `base`; the head's layers are `pool`, `dropout`, `hidden1`... and `head`."""
    base = _build_base(config)
    head = config.head
    layers: list[keras.layers.Layer] = [keras.Input(tuple(base.input_shape[1:])), base]
    pooling = {"avg": keras.layers.GlobalAveragePooling2D, "max": keras.layers.GlobalMaxPooling2D,
               "flatten": keras.layers.Flatten}.get(head.pooling)
    if pooling is not None:
        layers.append(pooling(name="pool"))
    for i, units in enumerate(head.units, start=1):
        layers.append(keras.layers.Dense(units, activation=head.activation, name=f"hidden{i}"))
    if head.dropout:
        layers.append(keras.layers.Dropout(head.dropout, name="dropout"))
    layers.append(keras.layers.Dense(head.classes, activation=head.output_activation, name="head"))
    try:
        return keras.Sequential(layers, name="model")
    except ValueError as e:
        raise ConfigError(
            f"head: does not fit the base, whose output has shape {tuple(base.output.shape)}: "
            + " ".join(str(e).split())
        ) from None


def image_folder_format() -> str | None:
    """The `format` of `keras.utils.image_dataset_from_directory` this machine can read an
    image folder with: "tf" with TensorFlow, else "grain" with grain, else None."""
    return "tf" if importlib.util.find_spec("tensorflow") else "grain" if importlib.util.find_spec("grain") else None


def _open_npz(path: str):
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            npy = f.read(6) == b"\x93NUMPY"
        hint = " It is a single .npy array: save x_train and y_train together with np.savez." if npy else ""
        raise ConfigError(f"data.npz: expected a .npz archive (np.savez(path, x_train=..., y_train=...)); received "
                          f"{path!r}, which is not one.{hint}")
    return np.load(path, allow_pickle=False)


def _array(arrays, key: str) -> np.ndarray:
    try:
        return arrays[key]
    except ValueError:  # object arrays need pickle, which a data file must not run
        raise ConfigError(f"data.npz: expected numeric arrays; {key!r} is an array of Python objects (dtype=object), "
                          "e.g. images of different sizes. Stack them into one array of one shape, such as "
                          "np.stack(images).astype('float32').") from None


def load_data(config: TrainConfig, model: keras.Model | None = None) -> tuple[Any, Any, Any]:
    """`(x, y, validation_data)` for `fit`, from a `.npz` file or an image folder (read
    at `data.image_size`, else at the input size of `model`'s first layer if given, else
    256x256)."""
    data = config.data
    if data.npz is not None:
        with _open_npz(data.npz) as arrays:
            missing = [k for k in ("x_train", "y_train") if k not in arrays.files]
            if missing:
                raise ConfigError(
                    f"data.npz: missing array {missing[0]!r}; expected x_train, y_train and optionally "
                    f"x_val, y_val. Found: {arrays.files}"
                )
            x, y = _array(arrays, "x_train"), _array(arrays, "y_train")
            has_validation = "x_val" in arrays.files and "y_val" in arrays.files
            validation = (_array(arrays, "x_val"), _array(arrays, "y_val")) if has_validation else None
        if validation is None and data.validation_split:
            cut = int(round(len(x) * (1 - data.validation_split)))
            x, y, validation = x[:cut], y[:cut], (x[cut:], y[cut:])
        return x, y, validation
    fmt = image_folder_format()
    if fmt is None:
        raise ConfigError("data.images: reading an image folder needs TensorFlow or grain: pip install grain")
    if model is not None:
        size = image_size(config, model)
    else:
        size = tuple(data.image_size or tuple(config.base.input_shape or (256, 256))[:2])
    kwargs = dict(image_size=size, batch_size=data.batch_size, seed=config.seed or 0, format=fmt, verbose=False,
                  color_mode=data.color_mode)
    if data.validation_split:
        train, validation = keras.utils.image_dataset_from_directory(
            data.images, validation_split=data.validation_split, subset="both", **kwargs
        )
        return train, None, validation
    return keras.utils.image_dataset_from_directory(data.images, **kwargs), None, None


def validate_plans(model: keras.Model, config: TrainConfig) -> list[Phase]:
    """The phases, with every plan resolved against the model in order, in a scope that
    leaves the model as it was. A selector that matches nothing is a ConfigError naming
    `phases[i].plan.rules[j]`, and so is a plan that leaves the phase nothing to train."""
    phases = []
    with contextlib.ExitStack() as stack:
        for i, spec in enumerate(config.phases):
            plan = spec.to_plan()
            try:
                stack.enter_context(scoped(model, plan))
            except PlanError as e:
                m = re.match(r"Rule (\d+) ", str(e))
                where = f"phases[{i}].plan" + (f".rules[{int(m.group(1)) - 1}]" if m else "")
                raise ConfigError(f"{where}: {e}") from None
            if not model.trainable_weights:
                raise ConfigError(
                    f"phases[{i}].plan: phase {spec.name!r} would train nothing: after its plan (on top of the "
                    f"phases before it) every layer is frozen. Unfreeze at least the head, e.g. "
                    f"rules: [{{freeze: base}}], or remove the phase.")
            try:
                phases.append(Phase(spec.name, epochs=spec.epochs, plan=plan, learning_rate=spec.learning_rate,
                                    early_stopping=spec.early_stopping, cache=spec.cache,
                                    cache_views=spec.cache_views))
            except (FrostlineValueError, FrostlineTypeError) as e:  # what the schema let through
                raise ConfigError(f"phases[{i}]: {e}") from None
    return phases


def _check_caches(run: FineTune, config: TrainConfig, x: Any, y: Any, validation: Any) -> None:
    """Each phase's cache settings against the data and the model, named by their place:
    `cache: memory` or `disk` where the cache cannot apply (as far as that is known before
    the phase's activations are computed), `cache_views` with nothing random in front of
    the frozen part."""
    x, validation, fit_kwargs = fit_ready(x, validation, batch_size=config.data.batch_size)
    inputs = FitInputs(x, y, validation, _fit_batch_size(config), fit_kwargs)
    with contextlib.ExitStack() as stack:
        for i, phase in enumerate(run.phases):
            try:
                # frostline's own image-folder datasets map nothing at random
                check_cache([phase], run.model, x, fit_kwargs, same_every_pass=config.data.images is not None)
            except NotCacheable as e:
                raise ConfigError(f"phases[{i}].cache: {e}") from None
            except FrostlineValueError as e:
                raise ConfigError(f"phases[{i}].cache_views: {e}") from None
            stack.enter_context(scoped(run.model, phase.plan))
            if phase.cache in ("memory", "disk"):
                reason = reason_not_to_cache(run.model, inputs, epochs=phase.epochs, processes=run.distributed.processes)
                if reason is not None:
                    raise ConfigError(f"phases[{i}].cache: phase {phase.name!r} asks for cache: {phase.cache}, which "
                                      f"cannot apply: {reason} Use cache: auto, which trains without it then.")


def _optimizer(config: TrainConfig) -> keras.optimizers.Optimizer:
    try:
        return keras.optimizers.get(config.optimizer)
    except Exception as e:
        raise ConfigError(f"optimizer: {e}") from None


def _distribution(config: TrainConfig):
    if config.distribution is None:
        return None
    try:
        return data_parallel(config.distribution.data_parallel)
    except ValueError as e:
        raise ConfigError(f"distribution.data_parallel: {e}") from None


def _checked_run(config: TrainConfig, model: keras.Model, *, resume: bool, data: tuple | None = None) -> tuple[FineTune, tuple]:
    """The FineTune for the configuration and its `(x, y, validation_data)` (`data` if
    already read), everything checked in the order a user fixes it: a ConfigError before
    anything is written."""
    phases = validate_plans(model, config)
    optimizer = _optimizer(config)
    distribution = _distribution(config)
    x, y, validation = data or load_data(config, model)
    check_data(config, x, y, validation)
    check_against_model(config, model, x, validation)
    checkpoints = os.path.join(config.output, "checkpoints")
    if resume:
        read_latest(checkpoints)  # no checkpoint: say so before writing
    run = FineTune(model, phases, optimizer=optimizer, loss=config.loss, metrics=list(config.metrics),
                   checkpoint_dir=checkpoints, seed=config.seed, distribution=distribution)
    _check_caches(run, config, x, y, validation)
    try:
        run.distributed.check_batches(None, config.data.batch_size, "training data")
        run.check(x, y, validation_data=validation, batch_size=_fit_batch_size(config))
    except ValueError as e:
        where = f" (with distribution.data_parallel: {config.distribution.data_parallel})" if config.distribution else ""
        raise ConfigError(f"data.batch_size: {str(e).rstrip('.')}{where}.") from None
    return run, (x, y, validation)


def _fit_batch_size(config: TrainConfig) -> int | None:
    # An image folder's dataset brings its own batches.
    return config.data.batch_size if config.data.npz is not None else None


def run_training(config: TrainConfig, *, resume: bool = False, verbose: str | int = "auto") -> dict[str, str]:
    """Builds, validates and trains; writes the output folder.

    Returns:
        Names of the files written, keyed by what they are.
    """
    check_config(config)  # names, monitors and an image folder's classes: before the model is built
    data = load_data(config) if config.data.npz is not None else None
    if data is not None:
        check_data(config, *data)  # the labels against head.classes, also before the model
    if config.seed is not None:
        keras.utils.set_random_seed(config.seed)
    model = build_model(config)
    run, (x, y, validation) = _checked_run(config, model, resume=resume, data=data)
    # Everything is valid: only now is anything written.
    out = config.output
    os.makedirs(out, exist_ok=True)
    x, validation, data_settings = fit_ready(x, validation, batch_size=config.data.batch_size)
    history = run.fit(x, y, validation_data=validation, batch_size=_fit_batch_size(config), verbose=0,
                      callbacks=progress_callbacks(run, verbose), resume=resume, phase_lines=True, **data_settings)
    files = {
        "model": os.path.join(out, "model.keras"),
        "config": os.path.join(out, "config.yaml"),
        "history": os.path.join(out, "history.csv"),
        "report": os.path.join(out, "report.md"),
        "history_plot": os.path.join(out, "history.png"),
        "frost_plot": os.path.join(out, "frostline.png"),
    }
    model.save(files["model"])
    with open(files["config"], "w") as f:
        yaml.safe_dump(config.model_dump(mode="json"), f, sort_keys=False)
    _write_history_csv(history, files["history"])
    write_report(model, history, run.reports, files["report"])
    plot_history(history, files["history_plot"], phases=run.phases)
    plot_frost_lines(run.reports, files["frost_plot"])
    return files


def _write_history_csv(history, path: str) -> None:
    phase_of = {}
    for phase in history.phases:
        for e in range(phase["start_epoch"], phase["start_epoch"] + phase["epochs"]):
            phase_of[e] = phase["name"]
    keys = list(history.history)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", "phase", *keys])
        for i, epoch in enumerate(history.epoch):
            values = [history.history[k][i] for k in keys]
            writer.writerow([epoch, phase_of.get(epoch, ""), *("" if isinstance(v, float) and math.isnan(v) else v for v in values)])
