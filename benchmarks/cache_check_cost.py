"""What the dataset cache's two-pass check costs:
`python benchmarks/cache_check_cost.py [--images 256 --image-size 96 --batch-size 32]`.

On a PyDataset and an image folder (`image_dataset_from_directory`: tf.data with
TensorFlow, grain without) feeding MobileNetV2 (no weights) at 96x96, it times in one
process: one pass that only reads the data; one pass that reads and hashes every sample
(BLAKE2b, as the check does); the whole cache computation (`compute_dataset`: a hashing
pass, then a pass that computes the activations and hashes again); and one epoch of plain
Keras `fit` on the frozen base. The check's cost is the extra pass and the hashing of both
passes: (hashing pass) + (hashing pass - reading pass).
"""

import argparse
import os
import tempfile

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from frostline.app.bench_scenes import Batches, Sizes, bench_model, timed, write_image_folder  # noqa: E402
from frostline.app.train_job import image_folder_format  # noqa: E402
from frostline.cache.compute import compute_dataset  # noqa: E402
from frostline.cache.passes import DataPasses, Digests  # noqa: E402
from frostline.cache.store import MemoryActivations  # noqa: E402


def _read(passes: DataPasses) -> None:
    for _ in passes.next_pass():
        pass


def _hash(passes: DataPasses) -> None:
    seen = Digests()
    for batch in passes.next_pass():
        seen.add(batch)


def measure(label: str, data, sizes: Sizes) -> None:
    model = bench_model(sizes.image_size, 5)
    base = model.layers[1]
    front = keras.Sequential([keras.Input((sizes.image_size, sizes.image_size, 3)), base, model.get_layer("pool")])
    dtype = [np.dtype("float32")]
    passes = DataPasses(data)
    _read(passes)  # warm: file caches, tf.data's first-iteration set-up
    read = min(timed(lambda: _read(passes)) for _ in range(3))
    hashed = min(timed(lambda: _hash(passes)) for _ in range(3))
    make = lambda label_, shapes, count: MemoryActivations(shapes, dtype, count)  # noqa: E731
    front.predict_on_batch(np.zeros((sizes.batch_size, sizes.image_size, sizes.image_size, 3), "float32"))
    compute = timed(lambda: compute_dataset(passes, front, shapes_of=lambda x: [(1280,)], dtype=dtype,
                                               make_store=make, label="train"))
    base.trainable = False
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(data, epochs=1, verbose=0)  # compiles
    epoch = timed(lambda: model.fit(data, epochs=1, verbose=0))
    check = hashed + (hashed - read)
    print(f"{label}: read a pass {read:.3f} s · read and hash a pass {hashed:.3f} s · cache computed "
          f"{compute:.2f} s · one epoch of plain fit {epoch:.2f} s · the check {check:.3f} s "
          f"({check / compute:.1%} of the cache's computation, {check / epoch:.1%} of a plain epoch)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    sizes = Sizes(images=args.images, image_size=args.image_size, batch_size=args.batch_size)
    rng = np.random.default_rng(0)
    x = rng.random((sizes.images, sizes.image_size, sizes.image_size, 3), dtype=np.float32)
    y = rng.integers(0, 5, sizes.images)
    measure("PyDataset", Batches(x, y, sizes.batch_size), sizes)
    fmt = image_folder_format()
    with tempfile.TemporaryDirectory() as folder:
        write_image_folder(folder, sizes)
        data = keras.utils.image_dataset_from_directory(folder, image_size=(sizes.image_size,) * 2,
                                                        batch_size=sizes.batch_size, format=fmt, verbose=False)
        measure(f"image folder ({fmt})", data, sizes)


if __name__ == "__main__":
    main()
