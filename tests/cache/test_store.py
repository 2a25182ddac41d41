"""The disk store of cached activations and the batches read from it."""

import numpy as np

from frostline.cache.store import CachedBatches, DiskActivations


def test_disk_store_is_plain_npy_files_and_batches_reshuffle_every_epoch(tmp_path):
    store = DiskActivations(str(tmp_path), "train", [(2,)], np.dtype("float32"), 10)
    values = np.arange(20, dtype="float32").reshape(10, 2)
    store.write(0, [values[:6]])
    store.write(6, [values[6:]])
    assert np.array_equal(np.load(store.paths[0]), values)  # a plain .npy file
    batches = CachedBatches(store, np.arange(10), None, 4, shuffle=True)
    orders = []
    for _ in range(2):
        batches.on_epoch_begin()
        seen = [batches[i] for i in range(len(batches))]
        xs, ys = np.concatenate([b[0] for b in seen]), np.concatenate([b[1] for b in seen])
        assert np.array_equal(xs, values[ys])  # rows stay with their labels
        orders.append(ys)
    assert sorted(orders[0]) == list(range(10)) and not np.array_equal(orders[0], orders[1])
    store.close()
