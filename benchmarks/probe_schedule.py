"""The probe's schedule against the demo's fixed one:
`KERAS_BACKEND=jax python benchmarks/probe_schedule.py [--seeds 4] [--app-seeds 2] [--plots DIR]`.

The demo's task (docs/demo.md): a base pretrained on the digits 0-4, transferred to the
digits 5-9 with 10 labelled images per class, tested on all the other images of 5-9. Per
seed, from the same pretrained base, the same labelled 50 and the same initial head:

- fixed: the demo's two phases, the head 40 epochs at 1e-2 on the frozen base in
  inference mode, then the top block unfrozen 30 epochs at 1e-3;
- probe: `fl.probe` on 7 of the labelled images per class, scored on the other 3 (the
  test images choose nothing), then `schedules.from_probe(result, head_epochs=40,
  finetune_epochs=30, head_learning_rate=1e-2, finetune_learning_rate=1e-3)` trained on
  all 50: the same epochs and rates, only where the frozen part ends differs.

Then the same with a `keras.applications.MobileNetV2` (alpha 0.35, 32x32 RGB, no weights)
as the base, pretrained here on the digits 0-4 scaled up to 32x32 (`--app-pretrain-epochs`
epochs, its BatchNormalization statistics then recomputed on those images, as
MobileNetV2's momentum of 0.999 leaves them near their initial values after a few
hundred steps); its fixed top block is `block_16` and `Conv_1`.

With `--whole`, also the demo's phases with the whole base unfrozen in the second (where
the probe would matter least). Prints each seed's accuracies and cut, then mean ± std per
method. The demo's functions
are imported from `frostline.app.demo`, so its fixed schedule here is the demo's.
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import frostline as fl  # noqa: E402
from frostline.app.demo import (  # noqa: E402
    _accuracy, _base, _classifier, _digits, _recompute_batch_norm, _Reusable, _split, _Task)
from frostline.train.callbacks import Reseed  # noqa: E402

HEAD = {"epochs": 40, "learning_rate": 1e-2}
FINETUNE = {"epochs": 30, "learning_rate": 1e-3}
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _probe_split(y_few: np.ndarray, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices into the labelled few: `per_class` of each class to train the probes, the rest to score them."""
    train = np.concatenate([np.flatnonzero(y_few == c)[:per_class] for c in range(5)])
    return train, np.setdiff1d(np.arange(len(y_few)), train)


def _fixed(top_block: list[str]) -> list[fl.Phase]:
    return [fl.Phase("head", epochs=HEAD["epochs"], plan=fl.Plan().freeze("base").inference("base"),
                     learning_rate=HEAD["learning_rate"]),
            fl.Phase("top block", epochs=FINETUNE["epochs"], plan=fl.Plan().unfreeze(top_block),
                     learning_rate=FINETUNE["learning_rate"])]


def _train(build, phases, x, y, seed: int) -> keras.Model:
    model = build()
    fl.FineTune(model, phases, optimizer="adam", loss=LOSS, seed=seed).fit(x, y, batch_size=16, verbose=0)
    return model


def _compare(build, top_block: list[str], x_few, y_few, x_test, y_test, seed: int, transfer_seed: int,
             probe_per_class: int, whole: bool = False) -> dict:
    """Fixed schedule and probe schedule from `build()` (the pretrained base with a new head)."""
    fixed = _accuracy(_train(build, _fixed(top_block), x_few, y_few, transfer_seed), x_test, y_test)
    extra = {}
    if whole:
        extra["whole"] = _accuracy(_train(build, _fixed(["base"]), x_few, y_few, transfer_seed), x_test, y_test)
    train, held_out = _probe_split(y_few, probe_per_class)
    started = time.perf_counter()
    result = fl.probe(build(), x_few[train], y_few[train], validation_data=(x_few[held_out], y_few[held_out]),
                      seed=seed)
    probe_seconds = time.perf_counter() - started
    phases = fl.schedules.from_probe(result, head_epochs=HEAD["epochs"], finetune_epochs=FINETUNE["epochs"],
                                     head_learning_rate=HEAD["learning_rate"],
                                     finetune_learning_rate=FINETUNE["learning_rate"])
    probed = _accuracy(_train(build, phases, x_few, y_few, transfer_seed), x_test, y_test)
    return {"seed": seed, "fixed": fixed, "probe": probed, "best": result.best["cut"], "result": result,
            "phases": phases, "probe_seconds": probe_seconds, **extra}


def _demo_task(seeds: range, probe_per_class: int, whole: bool) -> list[dict]:
    x, y = _digits()
    source = y < 5
    task = _Task(x[source], y[source], x[~source], y[~source] - 5, 10, lambda n: n, LOSS,
                 _Reusable("pretrain", 3e-3, LOSS), None)
    runs = []
    for seed in seeds:
        pretrain_seed, transfer_seed, _ = (int(s) for s in np.random.SeedSequence(seed).generate_state(3))
        few, test = _split(task, seed)
        pretrain = task.pretrain.restart(pretrain_seed)  # as the demo's _run_seed pretrains
        pretrain.fit(task.x_src, task.y_src, batch_size=64, epochs=30, verbose=0, shuffle=True,
                     callbacks=[Reseed(pretrain_seed)])
        weights = pretrain.get_layer("base").get_weights()

        def build():
            keras.utils.set_random_seed(transfer_seed)
            base = _base()
            base.set_weights(weights)
            return _classifier(base, "transfer")

        runs.append(_compare(build, ["base/block3_*"], task.x_tgt[few], task.y_tgt[few], task.x_tgt[test],
                             task.y_tgt[test], seed, transfer_seed, probe_per_class, whole))
        _say(runs[-1])
    return runs


def _rgb(x: np.ndarray, size: int) -> np.ndarray:
    scale = size // 8
    return np.repeat(np.repeat(np.repeat(x, scale, axis=1), scale, axis=2), 3, axis=-1)


def _app_base(size: int) -> keras.Model:
    mobilenet = keras.applications.MobileNetV2(weights=None, include_top=False, input_shape=(size, size, 3),
                                               alpha=0.35)
    return keras.Model(mobilenet.inputs, keras.layers.GlobalAveragePooling2D(name="gap")(mobilenet.outputs[0]),
                       name="base")


def _app_task(seeds: range, probe_per_class: int, pretrain_epochs: int, whole: bool, size: int = 32) -> list[dict]:
    x, y = _digits()
    x = _rgb(x, size)
    source = y < 5
    x_src, y_src, x_tgt, y_tgt = x[source], y[source], x[~source], y[~source] - 5
    task = _Task(x_src, y_src, x_tgt, y_tgt, 10, lambda n: n, LOSS, None, None)
    runs = []
    for seed in seeds:
        pretrain_seed, transfer_seed, _ = (int(s) for s in np.random.SeedSequence(seed).generate_state(3))
        few, test = _split(task, seed)
        keras.utils.set_random_seed(pretrain_seed)
        pretrain = keras.Sequential([keras.Input((size, size, 3)), _app_base(size), keras.layers.Dense(5)])
        pretrain.compile(optimizer=keras.optimizers.Adam(3e-3), loss=LOSS)
        pretrain.fit(x_src, y_src, batch_size=64, epochs=pretrain_epochs, verbose=0, shuffle=True,
                     callbacks=[Reseed(pretrain_seed)])
        _recompute_batch_norm(pretrain, x_src)
        weights = pretrain.layers[0].get_weights()
        pretrained = _accuracy(pretrain, x_src, y_src)

        def build():
            keras.utils.set_random_seed(transfer_seed)
            base = _app_base(size)
            base.set_weights(weights)
            return keras.Sequential([keras.Input((size, size, 3)), base, keras.layers.Dense(5, name="head")],
                                    name="transfer")

        runs.append(_compare(build, ["base/block_16_*", "base/Conv_1*"], x_tgt[few], y_tgt[few], x_tgt[test],
                             y_tgt[test], seed, transfer_seed, probe_per_class, whole))
        runs[-1]["pretrained"] = pretrained
        _say(runs[-1])
    return runs


def _say(run: dict) -> None:
    extra = f" (pretraining accuracy on 0-4: {run['pretrained']:.3f})" if "pretrained" in run else ""
    whole = f" whole={run['whole']:.3f}" if "whole" in run else ""
    print(f"seed {run['seed']}: fixed={run['fixed']:.3f} probe={run['probe']:.3f}{whole} best_cut={run['best']} "
          f"probe_time={run['probe_seconds']:.1f}s{extra}", flush=True)


def _summary(name: str, runs: list[dict]) -> None:
    def stat(key):
        values = [r[key] for r in runs]
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.fmean(values):.3f} ± {std:.3f}"

    wins = sum(r["probe"] > r["fixed"] for r in runs)
    ties = sum(r["probe"] == r["fixed"] for r in runs)
    first = runs[0]
    print(f"\n{name}, seed {first['seed']}'s probe:\n{first['result']}")
    print("from_probe's phases:\n" + "\n".join(f"  {p}" for p in first["phases"]))
    whole = f" whole={stat('whole')}" if "whole" in first else ""
    print(f"{name}: fixed={stat('fixed')} probe={stat('probe')}{whole} (mean ± std of {len(runs)} seeds; the probe's "
          f"schedule higher on {wins}, equal on {ties})\n", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0, help="the first seed")
    parser.add_argument("--seeds", type=int, default=4, help="seeds of the demo's task")
    parser.add_argument("--app-seeds", type=int, default=2, help="seeds of the MobileNetV2 task (0: skip it)")
    parser.add_argument("--app-pretrain-epochs", type=int, default=15)
    parser.add_argument("--probe-per-class", type=int, default=7, help="of the 10 labelled; the rest score the probes")
    parser.add_argument("--whole", action="store_true",
                        help="also the fixed schedule with the whole base unfrozen in its second phase")
    parser.add_argument("--plots", default=None, help="a folder for the first seed's probe plots")
    args = parser.parse_args()
    started = time.perf_counter()
    print(f"{keras.backend.backend()}: the demo's task, seeds {args.seed}-{args.seed + args.seeds - 1}", flush=True)
    demo = _demo_task(range(args.seed, args.seed + args.seeds), args.probe_per_class, args.whole)
    _summary("demo base", demo)
    app = []
    if args.app_seeds:
        print(f"MobileNetV2 alpha=0.35 at 32x32, seeds {args.seed}-{args.seed + args.app_seeds - 1}", flush=True)
        app = _app_task(range(args.seed, args.seed + args.app_seeds), args.probe_per_class, args.app_pretrain_epochs,
                        args.whole)
        _summary("MobileNetV2", app)
    if args.plots:
        os.makedirs(args.plots, exist_ok=True)
        demo[0]["result"].plot(os.path.join(args.plots, "probe-demo.png"))
        if app:
            app[0]["result"].plot(os.path.join(args.plots, "probe-mobilenetv2.png"))
    print(f"wall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
