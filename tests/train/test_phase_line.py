"""The phase line says how many epochs a phase has left, also after a resume."""

import contextlib
import io

import keras
import numpy as np

import frostline as fl
from frostline.train.phase import PhaseInfo, phase_line


def _info(**fields):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, name="head")])
    return PhaseInfo(**{"index": 0, "count": 2, "report": fl.report(model), "start_epoch": 0,
                        "cache_description": "off", **fields})


def test_phase_line_of_a_new_phase_gives_its_epochs():
    phase = fl.Phase("all", epochs=15)
    assert phase_line(phase, _info()).endswith("learning rate as before · up to 15 epochs")
    assert phase_line(fl.Phase("one", epochs=1), _info()).endswith("· up to 1 epoch")


def test_phase_line_of_a_phase_resumed_part_way_gives_the_epochs_left():
    phase = fl.Phase("all", epochs=15)
    line = phase_line(phase, _info(start_epoch=5, epochs_run=3))
    assert line.endswith("· up to 12 more epochs (3 of 15 run before the interruption)"), line
    line = phase_line(phase, _info(epochs_run=14), devices="data parallel over 4 devices")
    assert line.endswith("· up to 1 more epoch (14 of 15 run before the interruption) · data parallel over 4 devices")


class StopAfterEpoch(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt  # as Ctrl-C: the checkpoint of the epoch before stays


def test_fit_resumed_inside_a_phase_prints_the_epochs_it_has_left(tmp_path):
    def run():
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="body"), keras.layers.Dense(1)])
        return fl.FineTune(model, [fl.Phase("head", epochs=1, plan=fl.Plan().freeze("body")),
                                   fl.Phase("all", epochs=4, plan=fl.Plan().unfreeze("body"))],
                           loss="mse", checkpoint_dir=tmp_path, seed=0)

    x = np.random.default_rng(0).random((8, 4), dtype="float32")
    try:
        run().fit(x, x[:, :1], verbose=0, phase_lines=False, callbacks=[StopAfterEpoch(2)])
    except KeyboardInterrupt:
        pass
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        run().fit(x, x[:, :1], verbose=0, phase_lines=True, resume=True)
    lines = [line for line in printed.getvalue().splitlines() if line.startswith("phase ")]
    assert len(lines) == 1 and lines[0].startswith("phase 2/2 'all'"), printed.getvalue()
    assert lines[0].endswith("· up to 3 more epochs (1 of 4 run before the interruption)"), lines[0]
