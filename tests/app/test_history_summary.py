"""Final and best metrics per phase, best by the rule of Keras's EarlyStopping(mode="auto")."""

import math

import keras

from frostline.app.history_summary import metric_modes, phase_summaries


def _model(**compile_args):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    if compile_args:
        model.compile(optimizer="adam", **compile_args)
    return model


def test_metric_modes_follow_early_stopping_also_before_the_model_was_fitted():
    model = _model(loss="sparse_categorical_crossentropy",
                   metrics=["accuracy", "sparse_categorical_crossentropy", "sparse_top_k_categorical_accuracy"])
    names = ["loss", "val_loss", "accuracy", "val_accuracy", "val_sparse_categorical_crossentropy",
             "sparse_top_k_categorical_accuracy", "learning_rate"]
    assert metric_modes(model, names) == {
        "loss": "min", "val_loss": "min", "accuracy": "max", "val_accuracy": "max",
        "val_sparse_categorical_crossentropy": "min", "sparse_top_k_categorical_accuracy": "max",
        "learning_rate": None}
    one_hot = _model(loss="categorical_crossentropy", metrics=["accuracy", "mean_squared_error"])
    assert metric_modes(one_hot, ["accuracy", "mean_squared_error"]) == {"accuracy": "max", "mean_squared_error": "min"}
    # Not compiled: only a loss is known to be lower-is-better.
    assert metric_modes(_model(), ["loss", "accuracy"]) == {"loss": "min", "accuracy": None}
    assert metric_modes(None, ["val_loss"]) == {"val_loss": "min"}


def test_phase_summaries_give_final_best_and_the_first_best_epoch_of_each_phase():
    history = keras.callbacks.History()
    history.epoch = [0, 1, 2, 3, 4]
    history.history = {"loss": [0.9, 0.7, 0.7, 0.8, 0.6], "accuracy": [0.5, 0.6, 0.6, 0.4, 0.5],
                       "val_accuracy": [math.nan, math.nan, math.nan, 0.3, 0.2]}
    history.phases = [{"name": "head", "start_epoch": 0, "epochs": 3}, {"name": "top", "start_epoch": 3, "epochs": 2}]
    head, top = phase_summaries(history, {"loss": "min", "accuracy": "max", "val_accuracy": "max"})
    assert (head.name, head.first_epoch, head.last_epoch, top.first_epoch, top.last_epoch) == ("head", 1, 3, 4, 5)
    by_name = {m.name: m for m in head.metrics}
    assert (by_name["loss"].final, by_name["loss"].best, by_name["loss"].best_epoch) == (0.7, 0.7, 2)
    assert (by_name["accuracy"].best, by_name["accuracy"].best_epoch, by_name["accuracy"].mode) == (0.6, 2, "max")
    assert by_name["val_accuracy"].best is None and math.isnan(by_name["val_accuracy"].final)
    top_by_name = {m.name: m for m in top.metrics}
    assert (top_by_name["val_accuracy"].best, top_by_name["val_accuracy"].best_epoch) == (0.3, 4)
    assert (top_by_name["loss"].final, top_by_name["loss"].best_epoch) == (0.6, 5)
