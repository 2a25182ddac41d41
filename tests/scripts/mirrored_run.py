"""Two-phase FineTune runs on TensorFlow: on one device and under MirroredStrategy over 2
logical CPU devices.

    python mirrored_run.py OUT_DIR

Must start a fresh process: TensorFlow fixes its logical devices when it starts. Saves
each run's weights after every phase to OUT_DIR/<run>.npz, the weights of a run
interrupted in phase 2 and resumed from its checkpoint to OUT_DIR/resumed.npz, and
OUT_DIR/result.json (the runs' frozen variables, phase lines and replica counts, and the
error for a model built outside the strategy's scope).
"""

import os

os.environ["KERAS_BACKEND"] = "tensorflow"

import json  # noqa: E402
import sys  # noqa: E402

import tensorflow as tf  # noqa: E402

tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2
)

import frostline as fl  # noqa: E402
import keras  # noqa: E402
from two_phase import build, data, phases, resumed, run  # noqa: E402


def main(out: str) -> None:
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    result = {"replicas": strategy.num_replicas_in_sync, "runs": {}, "errors": {}}
    run("single", out, result, cache=False)
    for name, cache in (("mirrored", False), ("mirrored_cached", "auto")):
        model = run(name, out, result, distribution=strategy, cache=cache, build_scope=strategy.scope)
        result["runs"][name]["devices"] = len(model.weights[0].value.values)
    resumed(out, strategy, build_scope=strategy.scope)
    outside = build()
    x, y, _ = data()
    try:
        fl.FineTune(outside, phases("auto"), loss="sparse_categorical_crossentropy", distribution=strategy).fit(
            x, y, batch_size=16, verbose=0)
    except ValueError as e:
        result["errors"]["outside_scope"] = str(e)
    # Refused before anything changed: not compiled by the runner, no flag set.
    result["errors"]["outside_scope_untouched"] = (
        not outside.compiled and all(l.trainable for l in outside._flatten_layers())
    )
    try:
        fl.data_parallel(2)
    except ValueError as e:
        result["errors"]["data_parallel"] = str(e)
    keras.backend.clear_session()
    with open(os.path.join(out, "result.json"), "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
