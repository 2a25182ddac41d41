"""A FineTune run for the kill-and-resume test.

    python resume_run.py OUT_DIR {full|kill|resume} [seed|default]

`full` runs to the end; `kill` SIGKILLs its own process in the middle of phase 2;
`resume` continues from the checkpoint. `seed` (the default) runs with `seed=11`;
`default` with no seed and `shuffle=True`, as a user who sets nothing does. Each finished run saves the final weights to
OUT_DIR/<mode>.npz.
"""

import os
import signal
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")

import frostline as fl  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402



def main(out, mode, settings="seed"):


    def model():
        keras.utils.set_random_seed(3)
        base = keras.Sequential(
            [keras.Input((8,)), keras.layers.Dense(16, activation="relu", name="d1"),
             keras.layers.BatchNormalization(name="bn"), keras.layers.Dense(16, activation="relu", name="d2")],
            name="base",
        )
        return keras.Sequential([keras.Input((8,)), base, keras.layers.Dropout(0.3, name="drop"),
                                 keras.layers.Dense(3, name="head")], name="m")


    class KillMidPhase2(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if self.epoch == 4 and batch == 2:  # phase 2 runs epochs 3, 4, 5
                os.kill(os.getpid(), signal.SIGKILL)

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch


    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype("float32")
    y = rng.integers(0, 3, size=64)
    net = model()
    run = fl.FineTune(
        net,
        [
            fl.Phase("head", epochs=3, plan=fl.Plan().freeze("base"), learning_rate=1e-2),
            fl.Phase("top", epochs=3, plan=fl.Plan().unfreeze("d2"),
                     learning_rate=keras.optimizers.schedules.ExponentialDecay(1e-2, 4, 0.5)),
        ],
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        checkpoint_dir=os.path.join(out, "ckpt-" + ("full" if mode == "full" else "killed")),
        seed=11 if settings == "seed" else None,
    )
    callbacks = [KillMidPhase2()] if mode == "kill" else []
    history = run.fit(x, y, batch_size=8, verbose=0, callbacks=callbacks, resume=(mode == "resume"))
    np.savez(os.path.join(out, f"{mode}.npz"), *[keras.ops.convert_to_numpy(v.value) for v in net.variables])
    print("epochs", history.epoch, "phases", history.phases)


if __name__ == "__main__":
    main(*sys.argv[1:])
