"""The progress line of `frostline train`, on a real two-phase FineTune run in process."""

import io

import keras
import numpy as np

import frostline as fl
from frostline.app.progress import RunProgress, TerminalProgress, duration, progress_callbacks


class Terminal(io.StringIO):
    def isatty(self):
        return True


def _run(stream, progress_class, *, early_stopping=None):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="body"), keras.layers.Dense(1, name="head")])
    run = fl.FineTune(model, [
        fl.Phase("head", epochs=3, plan=fl.Plan().freeze("body"), learning_rate=1e-2, early_stopping=early_stopping),
        fl.Phase("all", epochs=2, plan=fl.Plan().unfreeze("body"), learning_rate=1e-3),
    ], loss="mse")
    x = np.random.default_rng(0).random((16, 4), dtype="float32")
    history = run.fit(x, x[:, :1], batch_size=4, verbose=0, phase_lines=False,
                      callbacks=[progress_class(run, stream=stream)])
    return history, stream.getvalue()


def test_progress_in_a_log_is_one_plain_line_per_epoch_of_the_run():
    history, text = _run(io.StringIO(), RunProgress)
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert [line.split(" · ")[:2] for line in lines] == [
        ["phase 1/2 'head'", "epoch 1/5"], ["phase 1/2 'head'", "epoch 2/5"], ["phase 1/2 'head'", "epoch 3/5"],
        ["phase 2/2 'all'", "epoch 4/5"], ["phase 2/2 'all'", "epoch 5/5"]]
    assert lines[3].split(" · ")[2] == f"loss {history.history['loss'][3]:.4g}"
    assert all(line.split(" · ")[-1].startswith("ETA ") for line in lines)


def test_progress_counts_the_epochs_a_phase_that_stopped_early_left_out():
    # min_delta=10: no epoch improves, so the head phase stops after its second epoch.
    _, text = _run(io.StringIO(), RunProgress, early_stopping={"monitor": "loss", "patience": 1, "min_delta": 10})
    assert [line.split(" · ")[1] for line in text.splitlines()] == ["epoch 1/5", "epoch 2/5", "epoch 3/4", "epoch 4/4"]


def test_progress_on_a_terminal_redraws_the_line_and_keeps_each_epoch_s():
    _, text = _run(Terminal(), TerminalProgress)
    assert "\r" in text and "\x1b" not in text
    kept = [part.rsplit("\r", 1)[-1] for part in text.split("\n") if part]
    assert [line.split(" · ")[1] for line in kept] == [f"epoch {e}/5" for e in range(1, 6)]


def test_progress_callbacks_follow_quiet_and_the_kind_of_output():
    run = fl.FineTune(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]), [fl.Phase("p", epochs=1)])
    assert progress_callbacks(run, 0) == []
    assert type(progress_callbacks(run, "auto", stream=io.StringIO())[0]) is RunProgress
    assert type(progress_callbacks(run, "auto", stream=Terminal())[0]) is TerminalProgress
    assert (duration(42), duration(61.6), duration(3725)) == ("0:42", "1:02", "1:02:05")
