"""What the freeze audit costs on a large base:
`KERAS_BACKEND=jax python benchmarks/audit_cost.py [--model ResNet152]`.

Builds a `keras.applications` model (no weights) with every layer frozen and times, in
one process: taking a fingerprint with no reference values (`fl.fingerprint(model,
reference=None)`, the digests alone), checking it (`verify()`, what `FreezeAudit` does
after every epoch), and, for scale, one `predict` of a batch of 8 images. The first
fingerprint and check include tracing; the figures are the best of three after it.
"""

import argparse
import os
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import frostline as fl  # noqa: E402


def _best(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ResNet152", help="a keras.applications constructor")
    parser.add_argument("--image-size", type=int, default=224)
    args = parser.parse_args()
    model = getattr(keras.applications, args.model)(weights=None, input_shape=(args.image_size, args.image_size, 3))
    fl.apply(model, fl.Plan().freeze("*"))
    params = sum(int(np.prod(v.shape)) for v in model.weights)
    start = time.perf_counter()
    fp = fl.fingerprint(model, reference=None)
    fp.verify()
    first = time.perf_counter() - start
    take = _best(lambda: fl.fingerprint(model, reference=None))
    check = _best(fp.verify)
    x = np.zeros((8, args.image_size, args.image_size, 3), "float32")
    model.predict_on_batch(x)
    predict = _best(lambda: model.predict_on_batch(x))
    print(f"{keras.backend.backend()} {args.model}: {len(model.weights)} variables, {params:,} parameters · "
          f"first fingerprint and check {first:.2f} s · fingerprint {take:.3f} s · check {check:.3f} s · "
          f"predict of 8 images {predict:.3f} s")


if __name__ == "__main__":
    main()
