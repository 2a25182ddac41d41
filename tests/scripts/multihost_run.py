"""One process of a two-process (two-"host") data-parallel FineTune run on this machine.

    python multihost_run.py OUT_DIR PROCESS_ID PORT     # one of the two processes
    python multihost_run.py OUT_DIR reference           # the same training in one process

Each process has 2 virtual CPU devices and joins the other through
`keras.distribution.initialize` (JAX's distributed runtime, CPU collectives over gloo):
4 devices in all. Each process trains on its own half of the data with a per-process
batch of 8. The reference runs the same global batches on 4 devices in one process.
Each saves its final weights to OUT_DIR/<process id or "reference">.npz; each of the two
processes also writes the error for NumPy arrays with Keras's auto-sharding left on to
OUT_DIR/<process id>-auto-shard-error.txt, and every run the number of checkpoints it
wrote to OUT_DIR/<who>-checkpoint-writes.txt.
"""

import os
import sys

os.environ["KERAS_BACKEND"] = "jax"
out, who = sys.argv[1], sys.argv[2]
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={4 if who == 'reference' else 2}"

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")

import keras  # noqa: E402

if who != "reference":
    keras.distribution.initialize(job_addresses=f"localhost:{sys.argv[3]}", num_processes=2, process_id=int(who))

import frostline as fl  # noqa: E402
import numpy as np  # noqa: E402


def main() -> None:
    keras.utils.set_random_seed(0)
    base = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu", name="d1"),
                             keras.layers.BatchNormalization(name="bn")], name="base")
    model = keras.Sequential([keras.Input((6,)), base, keras.layers.Dense(3, name="head")], name="net")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 6)).astype("float32"), rng.integers(0, 3, 32)
    halves = [(x[:16], y[:16]), (x[16:], y[16:])]
    if who == "reference":
        # Global batch k is process 0's batch k followed by process 1's.
        order = np.concatenate([np.r_[8 * k:8 * k + 8, 16 + 8 * k:16 + 8 * k + 8] for k in range(2)])
        xs, ys, batch, distribution = x[order], y[order], 16, fl.data_parallel(4)
    else:
        (xs, ys), batch = halves[int(who)], 8
        distribution = fl.data_parallel("auto", auto_shard_dataset=False)
    run = fl.FineTune(model, [
        fl.Phase("head", epochs=3, plan=fl.Plan().freeze("base"), learning_rate=1e-2),
        fl.Phase("top", epochs=2, plan=fl.Plan().unfreeze("d1").inference("bn"), learning_rate=1e-3),
    ], loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), distribution=distribution,
        checkpoint_dir=os.path.join(out, f"checkpoints-{'reference' if who == 'reference' else 'shared'}"))
    if who != "reference":
        # NumPy arrays with Keras's auto-sharding on: refused before training.
        sharding = fl.FineTune(model, run.phases, loss="mse", distribution=fl.data_parallel("auto"))
        try:
            sharding.check(xs, ys, batch_size=batch)
        except ValueError as e:
            with open(os.path.join(out, f"{who}-auto-shard-error.txt"), "w") as f:
                f.write(str(e))
    # Count the checkpoints this process writes (each call still writes).
    import frostline.train.runner

    writes, write = [], frostline.train.runner.write_checkpoint
    frostline.train.runner.write_checkpoint = lambda *a, **k: (writes.append(1), write(*a, **k))[1]
    run.fit(xs, ys, batch_size=batch, verbose=0, shuffle=False, phase_lines=True)
    with open(os.path.join(out, f"{who}-checkpoint-writes.txt"), "w") as f:
        f.write(str(len(writes)))
    np.savez(os.path.join(out, f"{who}.npz"), **{v.path: keras.ops.convert_to_numpy(v.value) for v in model.weights})


if __name__ == "__main__":
    main()
