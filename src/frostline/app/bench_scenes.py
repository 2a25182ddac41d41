"""The scenes of `frostline bench cache` beyond arrays: plain Keras `fit` against a
frostline phase on the pipelines users run.

Every scene builds the same MobileNetV2 model twice from one set of initial weights, runs
plain Keras `fit` on one and a frostline phase with the cache on the other, on the same
data, and returns both times with the frostline phase's cache line:
  - `pydataset`: a `keras.utils.PyDataset` feeding a frozen base;
  - `image_folder`: `keras.utils.image_dataset_from_directory` over a folder of PNG files
    (a `tf.data.Dataset` where TensorFlow is installed, a grain dataset on JAX without
    it), shuffled every epoch as Keras does by default, feeding a frozen base;
  - `views`: `RandomFlip` and `RandomTranslation` in front of a frozen base, arrays,
    frostline with `Phase(cache_views=2)`;
  - `top_block`: MobileNetV2's `block_16` unfrozen, the rest of the base frozen and every
    BatchNormalization in inference mode (plain Keras: the Keras guide's
    `base(x, training=False)`).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from collections.abc import Callable

import keras
import numpy as np

from frostline.app.bench_args import TARGETS
from frostline.app.train_job import image_folder_format
from frostline.plan.plan import Plan
from frostline.train.phase import Phase, PhaseInfo
from frostline.train.runner import FineTune

__all__ = ["Batches", "SceneResult", "Sizes", "bench_model", "run_scene", "write_image_folder"]

# The speed-up each scene is to reach (plain / frostline).


def bench_model(image_size: int, classes: int, *, augment: bool = False, inference_base: bool = False,
                name: str = "bench") -> keras.Model:
    """MobileNetV2 (no weights) under global pooling and a dense head; with `augment`,
    random flips and shifts in front; with `inference_base`, the base called with
    `training=False` (a functional model)."""
    base = keras.applications.MobileNetV2(weights=None, include_top=False, input_shape=(image_size, image_size, 3))
    front = [keras.layers.RandomFlip("horizontal", name="flip"),
             keras.layers.RandomTranslation(0.1, 0.1, name="shift")] if augment else []
    inputs = keras.Input((image_size, image_size, 3))
    x = inputs
    for layer in front:
        x = layer(x)
    x = base(x, training=False) if inference_base else base(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, keras.layers.Dense(classes, name="head")(x), name=name)


class RecordingFineTune(FineTune):
    """A FineTune that notes each phase's cache size, in bytes, and cache line."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sizes: list[int] = []
        self.lines: list[str] = []

    def on_phase_begin(self, phase: Phase, info: PhaseInfo) -> None:
        self.sizes.append(info.cache_bytes)
        self.lines.append(f"cache: {info.cache_description}")
        super().on_phase_begin(phase, info)


def timed(fn: Callable[[], object]) -> float:
    """Seconds `fn()` takes."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@dataclasses.dataclass(frozen=True)
class Sizes:
    """The size of a scene: images, their side in pixels, epochs, batch size, seed."""

    images: int = 256
    image_size: int = 96
    epochs: int = 6
    batch_size: int = 32
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class SceneResult:
    """One scene's times (seconds) and the frostline phase's cache line.

    Attributes:
        name: The scene.
        plain: Plain Keras `fit`, in seconds (None when the scene could not run).
        frostline: The frostline phase, in seconds.
        target: The speed-up the scene is to reach.
        phase_line: The frostline phase's cache line.
        note: Why the scene did not run, or what it ran on.
    """

    name: str
    plain: float | None
    frostline: float | None
    target: float
    phase_line: str = ""
    note: str = ""

    @property
    def speedup(self) -> float | None:
        """plain / frostline."""
        return None if self.plain is None or not self.frostline else self.plain / self.frostline

    @property
    def met(self) -> bool | None:
        """Whether the speed-up reached the target (None when the scene did not run)."""
        return None if self.speedup is None else self.speedup >= self.target


class Batches(keras.utils.PyDataset):
    """Batches of arrays in a fixed order, as a user's `PyDataset` gives them."""

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int):
        super().__init__()
        self.x, self.y, self.batch_size = x, y, batch_size

    def __len__(self) -> int:
        return -(-len(self.x) // self.batch_size)

    def __getitem__(self, index: int):
        part = slice(index * self.batch_size, (index + 1) * self.batch_size)
        return self.x[part], self.y[part]


def _loss() -> keras.losses.Loss:
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _data(sizes: Sizes) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(sizes.seed)
    x = rng.random((sizes.images, sizes.image_size, sizes.image_size, 3), dtype=np.float32)
    return x, rng.integers(0, 5, sizes.images)


def _pair(sizes: Sizes, name: str, build: Callable[[], keras.Model], plain_setup: Callable[[keras.Model], None],
          plan: Callable[[keras.Model], Plan], fit_plain: Callable[[keras.Model], None],
          fit_frostline: Callable[[FineTune], None], build_plain: Callable[[], keras.Model] | None = None,
          **phase: object) -> SceneResult:
    """Times plain `fit` (of `build_plain()`, by default `build()`) and a frostline phase
    on two models with the same initial weights."""
    keras.utils.set_random_seed(sizes.seed)
    first = (build_plain or build)()
    weights = first.get_weights()
    plain_setup(first)
    first.compile(optimizer=keras.optimizers.Adam(1e-3), loss=_loss())
    t_plain = timed(lambda: fit_plain(first))
    keras.utils.set_random_seed(sizes.seed)
    second = build()
    second.set_weights(weights)
    run = RecordingFineTune(second, [Phase(name, epochs=sizes.epochs, plan=plan(second), **phase)],
                            optimizer=keras.optimizers.Adam(1e-3), loss=_loss())
    t_ours = timed(lambda: fit_frostline(run))
    return SceneResult(name, t_plain, t_ours, TARGETS[name], run.lines[0])


def _base_name(model: keras.Model) -> str:
    return next(l.name for l in model.layers if isinstance(l, keras.Model))


def _freeze_base(model: keras.Model) -> None:
    model.get_layer(_base_name(model)).trainable = False


def pydataset_scene(sizes: Sizes) -> SceneResult:
    """A `PyDataset` feeding a frozen base."""
    x, y = _data(sizes)
    data = Batches(x, y, sizes.batch_size)
    return _pair(sizes, "pydataset", lambda: bench_model(sizes.image_size, 5), _freeze_base,
                 lambda m: Plan().freeze(_base_name(m)),
                 lambda m: m.fit(data, epochs=sizes.epochs, verbose=0), lambda run: run.fit(data, verbose=0))


def write_image_folder(folder: str, sizes: Sizes) -> None:
    """Writes `sizes.images` random PNG images into `folder`, a subfolder per class
    (`class_0` to `class_4`)."""
    x, y = _data(sizes)
    for i, (image, label) in enumerate(zip(x, y)):
        os.makedirs(os.path.join(folder, f"class_{label}"), exist_ok=True)
        keras.utils.save_img(os.path.join(folder, f"class_{label}", f"{i:05d}.png"), (image * 255).astype("uint8"))


def image_folder_scene(sizes: Sizes) -> SceneResult:
    """`image_dataset_from_directory` over a folder of PNG files feeding a frozen base."""
    with tempfile.TemporaryDirectory(prefix="frostline-bench-") as folder:
        write_image_folder(folder, sizes)

        fmt = image_folder_format()  # as `frostline train` reads a folder
        if fmt is None:
            return SceneResult("image_folder", None, None, TARGETS["image_folder"],
                               note="skipped: image_dataset_from_directory needs TensorFlow or grain")

        def read():
            return keras.utils.image_dataset_from_directory(
                folder, image_size=(sizes.image_size, sizes.image_size), batch_size=sizes.batch_size,
                seed=sizes.seed, format=fmt, verbose=False)

        data = read()
        kind = type(data).__module__.split(".")[0]
        result = _pair(sizes, "image_folder", lambda: bench_model(sizes.image_size, 5), _freeze_base,
                       lambda m: Plan().freeze(_base_name(m)),
                       lambda m: m.fit(read(), epochs=sizes.epochs, verbose=0),
                       lambda run: run.fit(read(), verbose=0))
    return dataclasses.replace(result, note=f"a {kind} dataset ({type(data).__name__})")


def views_scene(sizes: Sizes) -> SceneResult:
    """Random flips and shifts in front of a frozen base; frostline with
    `cache_views=2`."""
    x, y = _data(sizes)
    return _pair(sizes, "views", lambda: bench_model(sizes.image_size, 5, augment=True), _freeze_base,
                 lambda m: Plan().freeze(_base_name(m)),
                 lambda m: m.fit(x, y, batch_size=sizes.batch_size, epochs=sizes.epochs, verbose=0),
                 lambda run: run.fit(x, y, batch_size=sizes.batch_size, verbose=0), cache_views=2)


def _top_block_only(model: keras.Model) -> None:
    base = model.get_layer(_base_name(model))
    for layer in base.layers:
        layer.trainable = layer.name.startswith("block_16")


def top_block_scene(sizes: Sizes) -> SceneResult:
    """`block_16` of the base unfrozen, the rest frozen, BatchNormalization in inference
    mode."""
    x, y = _data(sizes)
    return _pair(sizes, "top_block", lambda: bench_model(sizes.image_size, 5), _top_block_only,
                 lambda m: Plan().freeze(_base_name(m)).inference(_base_name(m))
                 .unfreeze(f"{_base_name(m)}/block_16_*"),
                 lambda m: m.fit(x, y, batch_size=sizes.batch_size, epochs=sizes.epochs, verbose=0, shuffle=False),
                 lambda run: run.fit(x, y, batch_size=sizes.batch_size, verbose=0, shuffle=False),
                 build_plain=lambda: bench_model(sizes.image_size, 5, inference_base=True))


def run_scene(name: str, sizes: Sizes) -> SceneResult:
    """Runs one scene other than `arrays` (which `bench.cache_benchmark` runs)."""
    scenes = {"pydataset": pydataset_scene, "image_folder": image_folder_scene, "views": views_scene,
              "top_block": top_block_scene}
    return scenes[name](sizes)
