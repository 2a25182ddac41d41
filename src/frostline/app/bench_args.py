"""The options of `frostline bench cache` and `frostline bench memory`, without Keras, so
that `--help` answers at once."""

from __future__ import annotations

import argparse

__all__ = ["SCENES", "TARGETS", "cache_parser", "memory_parser"]

TARGETS = {"arrays": 6.0, "pydataset": 3.5, "image_folder": 3.5, "views": 2.0, "top_block": 2.0}
SCENES = ("arrays", "pydataset", "image_folder", "views", "top_block")

CACHE_DESCRIPTION = """`frostline bench cache`: the activation cache against plain Keras, side by side.

Scenes, each in this one process, on the same data and initial weights (--scenes picks
some):
  arrays: NumPy arrays (--images, --epochs):
    (a) plain Keras `fit` of a model whose MobileNetV2 base is frozen,
    (b) the same as a frostline phase with `cache="auto"`,
    (c) the floor: one `predict` over the base, then the head alone on those features,
    and, with the base unfrozen (where no cache applies), plain `fit` against a frostline
    phase, for frostline's own overhead (`repeats` pairs in alternating order; the median
    of the pairs' ratios);
  pydataset, image_folder, views, top_block (--scene-images, --scene-epochs): plain `fit`
    against a frostline phase on a `keras.utils.PyDataset`; an image folder read by
    `image_dataset_from_directory`; random flips and shifts in front of the frozen base,
    with `cache_views=2`; only the base's top block unfrozen.
Each scene prints plain / frostline and the frostline phase's cache line; a table of the
speed-ups against their targets ends the run, then one machine-readable line.
"""


def _scene_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCENES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(SCENES)}; "
                                         f"received {text!r}")
    return names


def cache_parser() -> argparse.ArgumentParser:
    """The parser of `frostline bench cache`."""
    parser = argparse.ArgumentParser(prog="frostline bench cache", description=CACHE_DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=_scene_list, default=list(SCENES),
                        help=f"comma-separated, from {', '.join(SCENES)} (default: all)")
    parser.add_argument("--images", type=int, default=512, help="images of the arrays scene")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=10, help="epochs of the arrays scene")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--unfrozen-epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=4,
                        help="pairs of unfrozen runs (plain, frostline) for the overhead ratio")
    parser.add_argument("--scene-images", type=int, default=256, help="images of the other scenes")
    parser.add_argument("--scene-epochs", type=int, default=6, help="epochs of the other scenes")
    parser.add_argument("--tolerance", type=float, default=1e-3,
                        help="largest relative difference allowed between the trained heads")
    return parser


def memory_parser() -> argparse.ArgumentParser:
    """The parser of `frostline bench memory`."""
    parser = argparse.ArgumentParser(
        prog="frostline bench memory",
        description="Peak resident memory (RSS) of training with no cache, an in-memory cache and a streaming "
                    "disk cache, and of the disk cache with four times the samples; then the two disk caches with "
                    "the data read from a keras.utils.PyDataset; each in a fresh process. The frozen part widens "
                    "each sample, so the activations are many times the cache's memory limit.")
    parser.add_argument("--samples", type=int, default=20000)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--width", type=int, default=4096, help="the frozen layer's output width")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--memory-limit-mb", type=float, default=32.0, help="FineTune(cache_memory_limit=...)")
    return parser
