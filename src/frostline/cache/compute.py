"""Computing the frozen front's activations from a dataset, and augmented views.

A dataset is read as `fit` reads it (`DataPasses`). Without views it is read twice: a
first pass hashes every sample, a second computes the activations and hashes them again,
stopping at the first sample the first pass did not have; the two passes' orders differing
means the data is shuffled, and the cache is then reshuffled at every epoch.

With `K` views, view `v` is pass `v` of the data (a dataset's own random map functions
draw anew) through the frozen part with its random layers in training mode (each
`predict` draws anew); a first pass counts the samples.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from frostline.cache.passes import DataPasses, Digests, RanOut
from frostline.cache.store import per_tensor

__all__ = ["Computed", "Refused", "compute_dataset", "compute_views"]

# `make_store(label, shapes, count)`: a `MemoryActivations` or `DiskActivations`.
MakeStore = Callable[[str, list, int], Any]


class Refused(Exception):
    """Why the data cannot be cached, in one sentence."""


@dataclasses.dataclass(frozen=True)
class Computed:
    """Activations with the labels and sample weights they go with.

    Attributes:
        features: The store (`MemoryActivations` or `DiskActivations`), `views * n` rows.
        y, sample_weight: A row per feature row (structures of arrays), or None.
        batch_sizes: The batches of a pass as the data gave them, in order.
        shuffled: Whether the data came in another order on another pass.
        views: How many views the features hold.
        samples: Samples per view.
    """

    features: Any
    y: Any
    sample_weight: Any
    batch_sizes: list[int]
    shuffled: bool
    views: int
    samples: int


def _outputs(front: keras.Model, x: Any, dtype: list[np.dtype]) -> list[np.ndarray]:
    out = front.predict_on_batch(x)
    out = out if isinstance(out, (list, tuple)) else [out]
    return [np.asarray(o, dtype=d) for o, d in zip(out, per_tensor(dtype, len(out)))]


def _concatenate(parts: list) -> Any:
    if not parts or parts[0] is None:
        return None
    try:
        return keras.tree.map_structure(lambda *a: np.concatenate(a), *parts)
    except ValueError as e:
        raise Refused(f"the labels or sample weights of its batches have different shapes ({e}).") from None


def _first_pass(passes: DataPasses, hashed: bool = True) -> tuple[Digests, Any]:
    """Hashes (or, not `hashed`, counts) every sample of a pass; returns the digests and
    the first batch's inputs."""
    seen, first = Digests(hashed), None
    try:
        for batch in passes.next_pass():
            first = batch[0] if first is None else first
            seen.add(batch)
    except RanOut as e:
        raise Refused(str(e)) from None
    if not len(seen):
        raise Refused(f"the {passes.kind} gave no samples.")
    return seen, first


def _differs(passes: DataPasses) -> str:
    """Why two passes that gave different samples are not cached."""
    if passes.windowed:
        return (f"two windows of steps_per_epoch={passes.steps} batches of the {passes.kind} hold different "
                "samples: steps_per_epoch does not span whole cycles of the data (make it the number of batches "
                "in one cycle), or the data is random (a random map function or augmentation: pass "
                "Phase(cache_views=K) to cache K passes of it).")
    return (f"the {passes.kind} gives different samples on two passes (a random map function or augmentation): "
            "pass Phase(cache_views=K) to cache K passes of it.")


def _write_pass(passes: DataPasses, front: keras.Model, store: Any, *, start: int, count: int,
                dtype: list[np.dtype], expect: collections.Counter | None, digests_out: Digests) -> tuple[list, list]:
    """Computes one pass into rows `start ... start + count` of `store`; with `expect`,
    stops at the first sample that is not in it."""
    labels, weights, position = [], [], start
    try:
        for x, y, sample_weight in passes.next_pass():
            size = digests_out.add((x, y, sample_weight))
            if expect is not None:
                for d in digests_out.order[len(digests_out.order) - size:]:
                    expect[d] -= 1
                    if expect[d] < 0:
                        raise Refused(_differs(passes))
            if position + size > start + count:
                raise Refused(f"the {passes.kind} gives more samples on one pass than on another.")
            out = _outputs(front, x, dtype)
            for o, shape in zip(out, store.shapes):
                if o.shape[1:] != shape:
                    raise Refused(f"its batches have different shapes at the frost line ({o.shape[1:]} and {shape}).")
            store.write(position, out)
            labels.append(y)
            weights.append(sample_weight)
            position += size
    except RanOut as e:
        raise Refused(str(e)) from None
    if position != start + count:
        raise Refused(f"the {passes.kind} gives fewer samples on one pass than on another.")
    return labels, weights


def compute_dataset(passes: DataPasses, front: keras.Model, *, shapes_of: Callable[[Any], list],
                    dtype: list[np.dtype], make_store: MakeStore, label: str, check: bool = True) -> Computed:
    """The front's activations for one pass of a dataset.

    Args:
        passes: The dataset's passes.
        front: The frozen part.
        shapes_of: The cut shapes for a batch of inputs.
        dtype: The stored dtype of each cut tensor.
        make_store: Makes the store for a count of rows.
        label: Names the store ("train", "validation").
        check: Read the data twice and refuse it when the passes differ. Defaults to
            True.

    Raises:
        Refused: when the passes differ, or the data cannot be stored.
    """
    seen, first = _first_pass(passes, hashed=check)  # arrays (no check): it only counts them
    store = make_store(label, shapes_of(first), len(seen))
    computed = Digests(hashed=check)
    labels, weights = _write_pass(passes, front, store, start=0, count=store.count, dtype=dtype,
                                  expect=seen.counts() if check else None, digests_out=computed)
    shuffled = check and computed.order != seen.order
    return Computed(store, _concatenate(labels), _concatenate(weights), computed.batch_sizes, shuffled, 1, store.count)


def compute_views(passes: DataPasses, front: keras.Model, *, views: int, shapes_of: Callable[[Any], list],
                  dtype: list[np.dtype], make_store: MakeStore, front_draws: bool) -> tuple[Computed, bool]:
    """`views` passes of the data through the front (its random layers in training
    mode), one view each.

    Args:
        passes: The data's passes.
        front: The frozen part with its random layers always in training mode.
        views: How many views.
        shapes_of, dtype, make_store: As in `compute_dataset`.
        front_draws: Whether the front draws random numbers itself.

    Returns:
        The `Computed` views, and whether anything random made them differ (the
        front, or the data changing between passes).

    Raises:
        Refused: when the passes hold different numbers of samples, or the data cannot
            be stored.
    """
    # The digests tell whether the data changes between passes, which a front that
    # draws random numbers makes moot.
    seen, first = _first_pass(passes, hashed=not front_draws)
    n = len(seen)
    store = make_store("train", shapes_of(first), views * n)
    labels, weights, sizes, random = [], [], [], front_draws
    for v in range(views):
        computed = Digests(hashed=not front_draws)
        y, w = _write_pass(passes, front, store, start=v * n, count=n, dtype=dtype, expect=None, digests_out=computed)
        labels += y
        weights += w
        sizes = sizes or computed.batch_sizes
        random = random or computed.counts() != seen.counts()
    return Computed(store, _concatenate(labels), _concatenate(weights), sizes, False, views, n), random

