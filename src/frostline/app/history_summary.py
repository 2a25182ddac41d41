"""What a run's history says per phase: each metric's final value, its best and the
epoch of the best, best meaning what Keras's `EarlyStopping(mode="auto")` would take."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import Literal

import keras
import numpy as np

from frostline.train.compiling import compile_config

__all__ = ["MetricSummary", "PhaseSummary", "metric_modes", "phase_summaries"]

Mode = Literal["min", "max"]


@dataclasses.dataclass(frozen=True)
class MetricSummary:
    """One metric over one phase (or over the run).

    Attributes:
        name: The history key, e.g. "val_accuracy".
        final: Its value at the phase's last epoch (NaN if that epoch did not log it).
        mode: "min" or "max": which way is better; None when Keras cannot tell (the
            best is then not given).
        best: The best value, or None.
        best_epoch: The epoch of the best, counted from 1 across the run, or None.
    """

    name: str
    final: float
    mode: Mode | None
    best: float | None
    best_epoch: int | None


@dataclasses.dataclass(frozen=True)
class PhaseSummary:
    """A phase's epochs (from 1, across the run) and its metrics."""

    name: str
    first_epoch: int
    last_epoch: int
    metrics: tuple[MetricSummary, ...]


def _probe(model: keras.Model) -> keras.Model | None:
    """A model that passes predictions through, compiled with `model`'s loss and metrics,
    whose compiled metrics are built: what `EarlyStopping` looks up a metric's direction
    in. (The trained model's own may never have been built: a cached phase fits the
    remainder.) None when the model is not compiled or the metrics cannot be rebuilt."""
    config = compile_config(model, ("loss", "metrics", "weighted_metrics"))
    try:
        outputs = model.outputs
    except Exception:  # noqa: BLE001 - a model never called
        return None
    if not config or len(outputs) != 1:
        return None
    shape = tuple(outputs[0].shape[1:])
    inputs = keras.Input(shape)
    probe = keras.Model(inputs, keras.layers.Identity()(inputs))
    probe.compile(**config)
    predictions = np.zeros((1, *shape), "float32")
    # The labels' form is not known here: integer class ids first, then one-hot like the predictions.
    for labels in (np.zeros((1, *shape[:-1]), "int32"), predictions):
        try:
            probe.compute_metrics(None, labels, predictions)
            return probe
        except Exception:  # noqa: BLE001 - a metric that needs the other label form
            probe.compile(**config)
    return None


def metric_modes(model: keras.Model | None, names: Iterable[str]) -> dict[str, Mode | None]:
    """Which way each history key is better, by the rule of Keras's `EarlyStopping` with
    `mode="auto"`: "min" for a loss, the metric's own direction otherwise ("max" for
    accuracy, "min" for mean squared error), None for a key Keras cannot tell (such as
    `learning_rate`).

    Args:
        model: The compiled model the history is of (`history.model`), or None: then
            only losses are known.
        names: History keys, e.g. "loss", "val_accuracy".
    """
    probe = _probe(model) if model is not None else None
    modes: dict[str, Mode | None] = {}
    for name in names:
        stopper = keras.callbacks.EarlyStopping(monitor=name, patience=2**31, mode="auto")
        stopper.set_model(probe if probe is not None else keras.Sequential())
        stopper.on_train_begin()
        try:
            # Two epochs, 0 then 1: the better one is the mode's.
            stopper.on_epoch_end(0, {name: 0.0})
            stopper.on_epoch_end(1, {name: 1.0})
        except ValueError:  # "Keras isn't able to automatically determine ..."
            modes[name] = None
            continue
        modes[name] = "max" if stopper.best_epoch == 1 else "min"
    return modes


def _summary(name: str, values: list[float], epochs: list[int], mode: Mode | None) -> MetricSummary:
    final = values[-1] if values else math.nan
    known = [(v, e) for v, e in zip(values, epochs) if not math.isnan(v)]
    if mode is None or not known:
        return MetricSummary(name, final, mode, None, None)
    # The first of equal values wins, as EarlyStopping keeps its first best.
    best, epoch = (min if mode == "min" else max)(known, key=lambda pair: pair[0])
    return MetricSummary(name, final, mode, best, epoch + 1)


def phase_summaries(history: keras.callbacks.History, modes: Mapping[str, Mode | None] | None = None,
                    ) -> list[PhaseSummary]:
    """Each phase's final and best metrics, in the order the phases ran.

    Args:
        history: The History of `FineTune.fit` (with `history.phases`); a History
            without phases is one phase named "run".
        modes: `metric_modes` of the history's keys. Defaults to None: computed from
            `history.model`.
    """
    logs = history.history
    if modes is None:
        modes = metric_modes(getattr(history, "model", None), logs)
    phases = getattr(history, "phases", None) or [
        {"name": "run", "start_epoch": history.epoch[0] if history.epoch else 0, "epochs": len(history.epoch)}]
    out = []
    for phase in phases:
        start, count = phase["start_epoch"], phase["epochs"]
        rows = [i for i, e in enumerate(history.epoch) if start <= e < start + count]
        epochs = [history.epoch[i] for i in rows]
        metrics = tuple(_summary(k, [float(logs[k][i]) for i in rows], epochs, modes.get(k)) for k in logs)
        out.append(PhaseSummary(phase["name"], start + 1, start + count, metrics))
    return out
