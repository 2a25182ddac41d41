"""Parity: the activation cache on datasets (`PyDataset`, grain, generators, `tf.data`,
torch `DataLoader`) and augmented views (`Phase(cache_views=K)`).

Cached and plain `fit` start from the same weights and read the same batches in order;
every weight must agree to rtol 1e-5 after a real fit that moved them."""

import importlib.util

import keras
import numpy as np
import pytest

import frostline as fl
from frostline.cache.store import CachedBatches, MemoryActivations, ViewEpochs
from parity.helpers import numpy

BACKEND = keras.backend.backend()
N, BATCH = 24, 8
RNG = np.random.default_rng(0)
X = RNG.normal(size=(N, 6, 6, 1)).astype("float32")
Y = RNG.integers(0, 3, N)
VX = RNG.normal(size=(8, 6, 6, 1)).astype("float32")
VY = RNG.integers(0, 3, 8)


def model(augment: bool = False) -> keras.Model:
    """Input -> [RandomFlip] -> a frozen conv base with BatchNormalization -> head."""
    keras.utils.set_random_seed(1)
    inputs = keras.Input((6, 6, 1))
    h = keras.layers.RandomFlip("horizontal", seed=3, name="flip")(inputs) if augment else inputs
    base = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Conv2D(4, 3, name="conv"),
                             keras.layers.BatchNormalization(name="bn"), keras.layers.GlobalAveragePooling2D()],
                            name="base")
    base.get_layer("bn").moving_mean.assign(np.full(4, 0.3, "float32"))  # inference mode shows
    return keras.Model(inputs, keras.layers.Dense(3, name="head")(base(h)))


class Batches(keras.utils.PyDataset):
    """Batches of X, Y in order; with `noise`, a fresh random shift on every read."""

    def __init__(self, noise: bool = False, x=X, y=Y):
        super().__init__()
        self.noise, self.x, self.y = noise, x, y

    def __len__(self):
        return len(self.x) // BATCH

    def __getitem__(self, i):
        x = self.x[i * BATCH:(i + 1) * BATCH]
        if self.noise:
            x = x + np.random.normal(size=x.shape).astype("float32")
        return x, self.y[i * BATCH:(i + 1) * BATCH]


def grain_batches():
    import grain
    return grain.MapDataset.source([(X[i], Y[i]) for i in range(N)]).batch(BATCH)


def cycle():
    batches = [(X[i:i + BATCH], Y[i:i + BATCH]) for i in range(0, N, BATCH)]
    while True:
        yield from batches


def tf_batches(shuffle: bool = False):
    import tensorflow as tf
    ds = tf.data.Dataset.from_tensor_slices((X, Y))
    if shuffle:
        ds = ds.shuffle(N, seed=0, reshuffle_each_iteration=True)
    return ds.batch(BATCH)


def torch_batches():
    import torch
    data = torch.utils.data.TensorDataset(torch.from_numpy(X), torch.from_numpy(Y))
    return torch.utils.data.DataLoader(data, batch_size=BATCH, shuffle=False)


class Lines(fl.FineTune):
    """Notes each phase's cache line."""

    lines: list

    def on_phase_begin(self, phase, info):
        self.lines = [*getattr(self, "lines", []), info.cache_description]


def fit(data, *, cache="auto", views=None, augment=False, **fit_kwargs):
    m = model(augment)
    run = Lines(m, [fl.Phase("head", epochs=3, plan=fl.Plan().freeze("base"), cache=cache, cache_views=views)],
                loss="sparse_categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
    before = numpy(m.get_layer("head").kernel)
    history = run.fit(data, verbose=0, **fit_kwargs)
    weights = [numpy(v) for v in m.weights]
    assert not np.allclose(before, numpy(m.get_layer("head").kernel)), "the fit moved nothing"
    return weights, history.history, run.lines[0]


KINDS = {
    "PyDataset": (lambda: Batches(), {"shuffle": False}),
    "grain dataset": (grain_batches, {"shuffle": False}),
    "generator": (cycle, {"steps_per_epoch": N // BATCH, "shuffle": False}),
    "tf.data.Dataset": (tf_batches, {"shuffle": False}),
    "torch DataLoader": (torch_batches, {"shuffle": False}),
}


def available(kind):
    if kind == "tf.data.Dataset":
        return importlib.util.find_spec("tensorflow") is not None
    if kind == "torch DataLoader":
        return BACKEND == "torch"
    return True


# Keras warns on the first epoch of a dataset of unknown length (grain), then goes on.
@pytest.mark.filterwarnings("ignore:Your input ran out of data")
@pytest.mark.parametrize("kind", [
    pytest.param(k, marks=pytest.mark.skip(reason=(
        "Keras's TensorFlow trainer runs 12 optimizer steps for 3 epochs of a 3-batch grain dataset (of unknown "
        "length), the cached fit 9; see docs/caching.md"))) if (k == "grain dataset" and BACKEND == "tensorflow")
    else k for k in KINDS if available(k)])
def test_a_dataset_is_cached_and_trains_what_plain_fit_trains(kind):
    make, kwargs = KINDS[kind]
    cached, history, line = fit(make(), validation_data=(VX, VY), **kwargs)
    plain, plain_history, plain_line = fit(make(), cache=False, validation_data=(VX, VY), **kwargs)
    assert line.startswith("memory, 512 bytes of activations at the frost line (4,)"), line  # 24 + 8 samples
    assert f"from a {kind} checked to give the same samples on two passes" in line
    assert "reshuffled" not in line and plain_line == "off (cache=False)"
    for a, b in zip(cached, plain):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert history.keys() == plain_history.keys()
    for key in history:
        np.testing.assert_allclose(history[key], plain_history[key], rtol=1e-5, atol=1e-6)


def test_a_validation_dataset_is_cached_too_and_validates_the_same():
    validation = Batches(x=VX, y=VY)
    _, history, line = fit(Batches(), validation_data=validation, shuffle=False)
    _, plain_history, _ = fit(Batches(), cache=False, validation_data=Batches(x=VX, y=VY), shuffle=False)
    assert line.startswith("memory, 512 bytes"), line  # 24 + 8 samples of 4 float32
    np.testing.assert_allclose(history["val_loss"], plain_history["val_loss"], rtol=1e-5, atol=1e-6)


class Shuffled(Batches):
    """Reorders its samples at the end of every epoch, as PyDatasets often do."""

    def on_epoch_end(self):
        order = np.random.permutation(len(self.x))
        self.x, self.y = self.x[order], self.y[order]


def test_a_shuffled_dataset_is_reshuffled_every_epoch():
    cached, history, line = fit(Shuffled(), shuffle=False)
    assert "checked to give the same samples on two passes, reshuffled every epoch" in line, line
    assert len(history["loss"]) == 3


def test_a_dataset_that_changes_between_passes_is_not_cached_and_memory_refuses_it():
    _, _, line = fit(Batches(noise=True), shuffle=False)
    assert line == ("off, plain fit: the PyDataset gives different samples on two passes (a random map function "
                    "or augmentation): pass Phase(cache_views=K) to cache K passes of it.")
    m = model()
    start = [numpy(v) for v in m.weights]
    run = fl.FineTune(m, [fl.Phase("head", epochs=2, plan=fl.Plan().freeze("base"), cache="memory")],
                      loss="sparse_categorical_crossentropy")
    with pytest.raises(fl.NotCacheable, match="asks for cache='memory', which cannot apply: the PyDataset gives "
                                              "different samples on two passes"):
        run.fit(Batches(noise=True), verbose=0, shuffle=False)
    assert all(np.array_equal(a, numpy(v)) for a, v in zip(start, m.weights))


class Endless(Batches):
    @property
    def num_batches(self):
        return None

    def __len__(self):
        raise TypeError("endless")


def test_an_infinite_dataset_is_plain_under_auto_and_an_error_before_training_under_memory():
    m = model()
    start = [numpy(v) for v in m.weights]
    run = fl.FineTune(m, [fl.Phase("head", epochs=2, plan=fl.Plan().freeze("base"), cache="memory")],
                      loss="sparse_categorical_crossentropy")
    with pytest.raises(fl.NotCacheable, match=r"cache='memory', which cannot apply: the PyDataset is infinite"):
        run.check(Endless())
    with pytest.raises(fl.NotCacheable, match="a generator without steps_per_epoch runs out after one epoch"):
        run.fit(cycle(), verbose=0)
    assert all(np.array_equal(a, numpy(v)) for a, v in zip(start, m.weights))
    _, _, line = fit(cycle(), steps_per_epoch=N // BATCH + 1, shuffle=False)  # windows that do not line up with the cycle
    assert line == ("off, plain fit: two windows of steps_per_epoch=4 batches of the generator hold different "
                    "samples: steps_per_epoch does not span whole cycles of the data (make it the number of batches "
                    "in one cycle), or the data is random (a random map function or augmentation: pass "
                    "Phase(cache_views=K) to cache K passes of it)."), line


def test_cache_views_computes_augmented_views_through_the_frozen_part_in_inference_mode():
    m = model(augment=True)
    fl.apply(m, fl.Plan().freeze("base"))
    split = fl.frost_split(m, views=True)
    assert split.random_layers == ("flip",)
    base = keras.Model(m.get_layer("base").inputs, m.get_layer("base").outputs)
    straight = numpy(base.predict(X, verbose=0))
    flipped = numpy(base.predict(X[:, :, ::-1], verbose=0))
    views = [numpy(split.augmenting.predict(X, batch_size=BATCH, verbose=0)) for _ in range(2)]
    for view in views:  # each sample is itself or its mirror image, through the base in inference mode
        mirror = np.isclose(view, flipped, atol=1e-5).all(axis=1)
        assert (np.isclose(view, straight, atol=1e-5).all(axis=1) | mirror).all()
        assert 0 < mirror.sum() < N
    assert not np.allclose(views[0], views[1])
    np.testing.assert_allclose(numpy(split.frozen.predict(X, verbose=0)), straight, atol=1e-6)  # validation


def test_cache_views_trains_on_views_of_arrays_and_of_a_dataset_that_augments():
    _, history, line = fit(X, y=Y, batch_size=BATCH, views=2, augment=True, validation_data=(VX, VY))
    assert line.startswith("memory, 896 bytes of activations at the frost line (4,), 2 views through flip "
                           "(epoch e trains on view e % 2"), line  # 2 x 24 + 8 samples
    assert len(history["val_loss"]) == 3
    _, _, line = fit(X, y=Y, batch_size=BATCH, augment=True)
    assert line == ("off, plain fit: random layers (flip) come before the frozen part: Phase(cache_views=K) "
                    "caches K augmented views of every sample.")
    _, _, line = fit(Batches(noise=True), views=3, shuffle=False)
    assert line.startswith("memory, 1,152 bytes of activations at the frost line (4,), 3 views from the "
                           "PyDataset's passes"), line


def test_each_epoch_trains_on_its_view_counted_from_the_phase_start():
    # View v holds the value v for every sample. Fitting w * v to 1 from w = 0 moves w
    # exactly when the epoch's batches hold a nonzero view: view 0 leaves w as it was.
    per_view = 8
    store = MemoryActivations([(1,)], "float32", 3 * per_view)
    store.write(0, [np.repeat(np.arange(3.0), per_view).astype("float32")[:, None]])
    batches = CachedBatches(store, np.ones((3 * per_view, 1), "float32"), None, 4, True, views=3)
    m = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros")])
    m.compile(keras.optimizers.SGD(0.01), "mse")
    kernels = []

    class Kernel(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            kernels.append(float(numpy(m.layers[0].kernel)[0, 0]))

    m.fit(batches, epochs=7, initial_epoch=2, verbose=0, callbacks=[ViewEpochs(batches, 2), Kernel()])
    moved = [b != a for a, b in zip([0.0, *kernels], kernels)]
    assert moved == [False, True, True, False, True], kernels  # views 0, 1, 2, 0, 1


@pytest.mark.parametrize("views", [0, -1, 1.5, True, "2"])
def test_cache_views_that_is_not_a_positive_integer_is_refused(views):
    with pytest.raises(fl.FrostlineValueError, match=f"expected cache_views to be a positive integer .* "
                                                     f"Received: cache_views={views!r}"):
        fl.Phase("head", epochs=2, cache_views=views)


def test_cache_views_with_nothing_random_in_front_is_refused_before_training():
    with pytest.raises(fl.FrostlineValueError, match="cache=False turns the cache off"):
        fl.Phase("head", epochs=2, cache=False, cache_views=2)
    m = model()
    start = [numpy(v) for v in m.weights]
    run = fl.FineTune(m, [fl.Phase("head", epochs=2, plan=fl.Plan().freeze("base"), cache_views=2)],
                      loss="sparse_categorical_crossentropy")
    with pytest.raises(fl.FrostlineValueError, match="cache_views=2, but nothing random comes before its frozen "
                                                     "part: the model has no random layer"):
        run.fit(X, Y, verbose=0)
    with pytest.raises(fl.FrostlineValueError, match="the PyDataset gave the same samples on every pass"):
        run.fit(Batches(), verbose=0, shuffle=False)
    assert all(np.array_equal(a, numpy(v)) for a, v in zip(start, m.weights))


def _two_outputs() -> keras.Model:
    keras.utils.set_random_seed(1)
    inputs = keras.Input((6,), name="a")
    h = keras.Sequential([keras.layers.Dense(5, activation="tanh", name="dense")], name="base")(inputs)
    return keras.Model(inputs, {"cls": keras.layers.Dense(3, name="cls")(h), "reg": keras.layers.Dense(1, name="reg")(h)})


class _WeightedDict(keras.utils.PyDataset):
    """Batches of (x, {cls, reg} labels, {cls, reg} sample weights), in order."""

    def __init__(self, x, y, weights):
        super().__init__()
        self.x, self.y, self.weights = x, y, weights

    def __len__(self):
        return len(self.x) // BATCH

    def __getitem__(self, i):
        rows = slice(i * BATCH, (i + 1) * BATCH)
        return self.x[rows], {k: v[rows] for k, v in self.y.items()}, {k: v[rows] for k, v in self.weights.items()}


@pytest.mark.parametrize("kind", ["arrays", "PyDataset"])
def test_labels_and_sample_weights_as_dicts_are_cached_and_train_what_plain_fit_trains(kind):
    x = X.reshape(N, -1)[:, :6]
    y = {"cls": Y, "reg": RNG.normal(size=(N, 1)).astype("float32")}
    weights = {"cls": np.linspace(0.1, 2.0, N).astype("float32"), "reg": np.ones(N, "float32")}
    loss = {"cls": keras.losses.SparseCategoricalCrossentropy(from_logits=True), "reg": "mse"}
    data = ((x, y), dict(batch_size=BATCH, sample_weight=weights)) if kind == "arrays" else (
        (_WeightedDict(x, y, weights),), {})
    plain = _two_outputs()
    start = plain.get_weights()
    plain.get_layer("base").trainable = False
    plain.compile(optimizer=keras.optimizers.Adam(1e-2), loss=loss)
    plain.fit(*data[0], epochs=3, shuffle=False, verbose=0, **data[1])
    cached = _two_outputs()
    cached.set_weights(start)
    lines = []

    class Lines(fl.FineTune):
        def on_phase_begin(self, phase, info):
            lines.append(info.cache_description)

    Lines(cached, [fl.Phase("head", epochs=3, plan=fl.Plan().freeze("base"))], optimizer=keras.optimizers.Adam(1e-2),
          loss=loss).fit(*data[0], shuffle=False, verbose=0, **data[1])
    assert lines[0].startswith("memory, ")
    for a, b in zip(plain.get_weights(), cached.get_weights()):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    moved = [not np.array_equal(a, w) for a, w in zip(plain.get_weights(), start)]
    assert sum(moved) == 4  # the two heads' kernels and biases; the frozen base stayed
