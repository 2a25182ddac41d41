"""Two-phase FineTune runs on one device and under DataParallel over 4 CPU devices.

    python data_parallel_run.py OUT_DIR

Must start a fresh process: XLA_FLAGS gives JAX its 4 virtual devices before it starts.
For each run it saves the weights after every phase to OUT_DIR/<run>.npz (keys
"<phase>|<variable path>", plus "initial|<path>"), and OUT_DIR/result.json holds each
phase's frozen variables, the runs' phase lines, how many devices held the weights, and
the errors that bad input raised.
"""

import os

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["KERAS_BACKEND"] = "jax"

import json  # noqa: E402
import sys  # noqa: E402

import frostline as fl  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
from two_phase import build, data, phases, resumed, run  # noqa: E402


def bad_input(out: str, result: dict) -> None:
    x, y, validation = data()
    errors = result["errors"]
    try:
        fl.data_parallel(8)
    except ValueError as e:
        errors["too_many_devices"] = str(e)
    assert len(x) == 64
    for name, batch, xs, ys, extra in (
        ("batch_not_divisible", 10, x, y, {}),
        ("last_batch_not_divisible", 16, x[:62], y[:62], {}),
        # 64 samples divide, but Keras trains on the first 57 (last batch 9) and validates on 7.
        ("validation_split_not_divisible", 16, x, y, {"validation_split": 0.1}),
    ):
        model = build()
        before = [keras.ops.convert_to_numpy(v.value) for v in model.weights]
        checkpoints = os.path.join(out, f"bad-{name}")
        runner = fl.FineTune(model, phases("auto"), loss="sparse_categorical_crossentropy",
                             distribution=fl.data_parallel(4), checkpoint_dir=checkpoints)
        try:
            runner.fit(xs, ys, batch_size=batch, verbose=0, **extra)
        except ValueError as e:
            errors[name] = str(e)
        errors[name + "_wrote"] = os.path.exists(checkpoints)
        errors[name + "_weights_kept"] = all(
            np.array_equal(b, keras.ops.convert_to_numpy(v.value)) for b, v in zip(before, model.weights)
        )
        errors[name + "_trainable_kept"] = all(l.trainable for l in model._flatten_layers())


def main(out: str) -> None:
    import jax

    result = {"jax_devices": len(jax.devices()), "runs": {}, "errors": {}}
    runs = {
        "single": run("single", out, result, cache=False),
        "single_cached": run("single_cached", out, result),
        "parallel": run("parallel", out, result, distribution=fl.data_parallel(4), cache=False),
        "parallel_cached": run("parallel_cached", out, result, distribution=fl.data_parallel(4)),
        "parallel_disk": run("parallel_disk", out, result, distribution=fl.data_parallel("auto"), cache="disk"),
    }
    for name, model in runs.items():
        result["runs"][name]["devices"] = len(model.weights[0].value.sharding.device_set)
    resumed(out, fl.data_parallel(4))
    bad_input(out, result)
    with open(os.path.join(out, "result.json"), "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
