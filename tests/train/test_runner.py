"""`fl.FineTune`: phases run in order with one optimizer, epochs numbered across them."""

import csv

import keras
import numpy as np
import pytest

import frostline as fl
from model_zoo import nested
from parity.helpers import arrays, values

X, Y = arrays(32)


def test_phases_move_the_frost_line_and_number_epochs_across_phases(capsys):
    model = nested()
    snapshots = {}

    class Snap(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            snapshots[epoch] = values(self.model)

    run = fl.FineTune(model, [
        fl.Phase("head", epochs=2, plan=fl.Plan().freeze("base"), learning_rate=1e-2),
        fl.Phase("top", epochs=2, plan=fl.Plan().unfreeze("block5"), learning_rate=1e-3),
    ], loss="mse")
    start = values(model)
    history = run.fit(X, Y, batch_size=8, callbacks=[Snap()], verbose=1)
    assert history.epoch == [0, 1, 2, 3]
    assert history.phases == [
        {"name": "head", "start_epoch": 0, "epochs": 2},
        {"name": "top", "start_epoch": 2, "epochs": 2},
    ]
    assert len(history.history["loss"]) == 4
    moved_head = {k for k in start if not np.array_equal(start[k], snapshots[1][k])}
    assert moved_head == {"head/kernel", "head/bias"}
    moved_top = {k for k in start if not np.array_equal(snapshots[1][k], snapshots[3][k])}
    assert moved_top == {"head/kernel", "head/bias", "base/block5/conv1/kernel", "base/block5/conv1/bias",
                         "base/block5/conv2/kernel", "base/block5/conv2/bias"}
    assert float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)) == pytest.approx(1e-3)
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 16  # one optimizer throughout
    out = capsys.readouterr().out
    assert "phase 1/2 'head'" in out and "frozen: base" in out
    assert "phase 2/2 'top'" in out and "partly frozen: base" in out


def test_user_callbacks_see_one_run_numbered_across_phases(tmp_path):
    model = nested()
    log = tmp_path / "log.csv"
    run = fl.FineTune(model, [
        fl.Phase("a", epochs=2, plan=fl.Plan().freeze("base")),
        fl.Phase("b", epochs=1, plan=fl.Plan().unfreeze("base")),
    ], loss="mse")
    run.fit(X, Y, batch_size=8, verbose=0, callbacks=[keras.callbacks.CSVLogger(str(log))])
    rows = list(csv.DictReader(log.read_text().splitlines()))
    assert [r["epoch"] for r in rows] == ["0", "1", "2"]


def test_phase_early_stopping_ends_the_phase_not_the_run():
    model = nested()
    run = fl.FineTune(model, [
        fl.Phase("a", epochs=50, learning_rate=1e-9,
                 early_stopping={"monitor": "loss", "patience": 0, "min_delta": 1.0}),
        fl.Phase("b", epochs=1),
    ], loss="mse")
    history = run.fit(X, Y, batch_size=8, verbose=0)
    assert history.phases[0]["epochs"] < 50
    assert history.phases[1] == {"name": "b", "start_epoch": history.phases[0]["epochs"], "epochs": 1}


def test_user_early_stopping_ends_the_run():
    model = nested()
    run = fl.FineTune(model, [fl.Phase("a", epochs=30, learning_rate=1e-9), fl.Phase("b", epochs=5)], loss="mse")
    stop = keras.callbacks.EarlyStopping(monitor="loss", patience=0, min_delta=1.0)
    history = run.fit(X, Y, batch_size=8, verbose=0, callbacks=[stop])
    assert [p["name"] for p in history.phases] == ["a"]


def test_schedule_counts_from_the_phase_start():
    model = nested()
    schedule = keras.optimizers.schedules.ExponentialDecay(1e-2, decay_steps=1, decay_rate=0.5)
    rates = []

    class Rate(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            rates.append(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))

    run = fl.FineTune(model, [fl.Phase("a", epochs=1, learning_rate=1e-3), fl.Phase("b", epochs=1, learning_rate=schedule)], loss="mse")
    run.fit(X, Y, batch_size=8, verbose=0, callbacks=[Rate()])
    assert rates[0] == pytest.approx(1e-3)
    assert rates[1] == pytest.approx(1e-2 * 0.5 ** 4)  # 4 steps into phase b, not 8


def test_fine_tune_refuses_duplicate_phase_names_and_an_epochs_argument():
    with pytest.raises(ValueError, match=r"distinct phase names.*\['a'\]"):
        fl.FineTune(nested(), [fl.Phase("a", epochs=1), fl.Phase("a", epochs=1)], loss="mse")
    run = fl.FineTune(nested(), [fl.Phase("a", epochs=1)], loss="mse")
    with pytest.raises(TypeError, match="sets 'epochs' from the phases"):
        run.fit(X, Y, epochs=3)


def test_fine_tune_trains_from_a_py_dataset():
    class Data(keras.utils.PyDataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return X[i * 8:(i + 1) * 8], Y[i * 8:(i + 1) * 8]

    history = fl.FineTune(nested(), [fl.Phase("a", epochs=1), fl.Phase("b", epochs=1, plan=fl.Plan().freeze("base"))], loss="mse").fit(Data(), verbose=0)
    assert history.epoch == [0, 1]


def test_model_checkpoint_saves_every_epoch_of_a_run_fed_by_a_generator(tmp_path):
    def batches():
        while True:  # Keras needs a generator that does not run out, with steps_per_epoch
            for i in range(4):
                yield X[i * 8:(i + 1) * 8], Y[i * 8:(i + 1) * 8]

    model = nested()
    saver = keras.callbacks.ModelCheckpoint(str(tmp_path / "e{epoch}.keras"))
    history = fl.FineTune(model, [fl.Phase("a", epochs=1, plan=fl.Plan().freeze("base")), fl.Phase("b", epochs=1)], loss="mse").fit(
        batches(), steps_per_epoch=4, shuffle=False, verbose=0, callbacks=[saver]
    )
    assert history.epoch == [0, 1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e1.keras", "e2.keras"]
    first = keras.saving.load_model(tmp_path / "e1.keras")
    assert not first.get_layer("base").get_layer("stem").trainable  # saved during phase a
