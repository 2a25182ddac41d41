"""`fl.probe`: the cuts it finds, one pass of the data, memory, the result, and bad input."""

import keras
import numpy as np
import pytest
from PIL import Image

import frostline as fl
from parity.test_probe import bottleneck_task


class CountingBatches(keras.utils.PyDataset):
    """Arrays in batches, counting every batch read."""

    def __init__(self, x, y, batch_size=32):
        super().__init__()
        self.x, self.y, self.batch_size, self.reads = x, y, batch_size, 0

    def __len__(self):
        return -(-len(self.x) // self.batch_size)

    def __getitem__(self, index):
        self.reads += 1
        rows = slice(index * self.batch_size, (index + 1) * self.batch_size)
        return self.x[rows], self.y[rows]


def residual_model():
    """Two residual blocks in a nested base, then a head: block boundaries after each `Add`."""
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="stem_conv")(inputs)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.ReLU(name="stem_relu")(x)
    for block in (1, 2):
        branch = keras.layers.Conv2D(4, 3, padding="same", name=f"block{block}_conv")(x)
        branch = keras.layers.BatchNormalization(name=f"block{block}_bn")(branch)
        x = keras.layers.Add(name=f"block{block}_add")([x, branch])
        x = keras.layers.ReLU(name=f"block{block}_out")(x)
    base = keras.Model(inputs, x, name="base")
    return keras.Sequential([keras.Input((8, 8, 3)), base, keras.layers.GlobalAveragePooling2D(name="pool"),
                             keras.layers.Dense(3, name="head")], name="res")


def images(n=48, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n).astype("int32")
    x = rng.normal(size=(n, 8, 8, 3)).astype("float32") + y[:, None, None, None]
    return x, y


def test_auto_cuts_are_the_block_boundaries_not_the_inside_of_a_residual_block():
    model = residual_model()
    x, y = images()
    result = fl.probe(model, x, y, validation_data=images(24, seed=1), epochs=2)
    assert [row["cut"] for row in result.rows] == ["base/stem_relu", "base/block1_out", "pool"]
    assert [row["features"] for row in result.rows] == [4, 4, 4]
    assert result.rows[-1]["freeze"] == ["base"] and result.rows[-1]["whole_base"]
    assert result.rows[0]["freeze"] == ["base/stem_conv", "base/stem_bn"] and not result.rows[0]["whole_base"]
    conv = 3 * 3 * 3 * 4 + 4
    assert result.rows[0]["frozen_params"] == conv + 4 * 4  # BatchNormalization's four vectors


def test_a_cut_inside_a_residual_branch_can_be_asked_for():
    model = residual_model()
    x, y = images()
    result = fl.probe(model, x, y, validation_data=images(24, seed=1), cuts=["block2_bn", "base/block1_*"], epochs=2)
    # In graph order; a selector cuts after the last layer it matches.
    assert [row["cut"] for row in result.rows] == ["base/block1_out", "base/block2_bn"]
    # The branch's output is computed from every layer with weights before it: all of the base.
    assert result.rows[1]["freeze"] == ["base"]
    assert result.rows[1]["frozen_params"] == model.get_layer("base").count_params()
    assert result.rows[1]["features"] == 4 and 0.0 <= result.rows[1]["score"] <= 1.0


def test_the_data_is_read_once_for_all_cuts():
    model = residual_model()
    x, y = images(64)
    train, held_out = CountingBatches(x, y, 16), CountingBatches(*images(32, seed=1), batch_size=16)
    result = fl.probe(model, train, validation_data=held_out, epochs=3)
    assert len(result.rows) == 3
    # One pass each (Keras's adapter may peek at the first batch once).
    assert train.reads in (4, 5) and held_out.reads in (2, 3), (train.reads, held_out.reads)
    assert result.train_samples == 64 and result.validation_samples == 32


def test_features_over_the_memory_limit_go_to_files_and_give_the_same_scores(tmp_path):
    model, (x, y), validation = bottleneck_task()
    in_memory = fl.probe(model, x, y, validation_data=validation, epochs=3)
    on_disk = fl.probe(model, x, y, validation_data=validation, epochs=3, memory_limit=1024, directory=tmp_path)
    assert not in_memory.on_disk and on_disk.on_disk
    assert [r["score"] for r in on_disk.rows] == [r["score"] for r in in_memory.rows]
    assert list(tmp_path.iterdir()) == []  # the files are gone


def test_the_model_is_not_changed_compiled_and_planned():
    model, (x, y), validation = bottleneck_task()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=1, verbose=0)
    fl.apply(model, fl.Plan().freeze("base/keep").inference("base"))
    trainable = [v.path for v in model.trainable_weights]
    iterations = int(model.optimizer.iterations)
    expected = model.predict(x[:8], verbose=0)
    fl.probe(model, x, y, validation_data=validation, epochs=2)
    assert [v.path for v in model.trainable_weights] == trainable
    assert int(model.optimizer.iterations) == iterations
    np.testing.assert_array_equal(model.predict(x[:8], verbose=0), expected)
    assert str(fl.applied_plan(model)) == "Plan(freeze base/keep; inference base)"
    model.fit(x, y, epochs=1, verbose=0)  # still trains as compiled
    assert int(model.optimizer.iterations) > iterations


def test_regression_labels_are_scored_by_r2():
    model, (x, _), (xv, _) = bottleneck_task()
    result = fl.probe(model, x, 2.0 * x[:, 0] + 1.0, validation_data=(xv, 2.0 * xv[:, 0] + 1.0), epochs=20)
    assert result.metric == "r2"
    keep, squash = result.rows
    assert keep["score"] > 0.9 and squash["score"] < 0.3, result


def test_one_hot_labels_are_classes():
    model, (x, y), (xv, yv) = bottleneck_task()
    result = fl.probe(model, x, np.eye(2, dtype="float32")[y], validation_data=(xv, np.eye(2, dtype="float32")[yv]))
    assert result.metric == "accuracy" and result.best["cut"] == "base/keep"


def test_whole_float_labels_of_a_classifier_are_classes():
    model, (x, y), (xv, yv) = bottleneck_task()
    result = fl.probe(model, x, y.astype("float32"), validation_data=(xv, yv.astype("float32")))
    assert result.metric == "accuracy" and result.best["cut"] == "base/keep"


def test_the_result_prints_round_trips_and_plots(tmp_path):
    model, (x, y), validation = bottleneck_task()
    result = fl.probe(model, x, y, validation_data=validation)
    table = str(result).splitlines()
    assert table[0].split() == ["cut", "features", "frozen", "params", "accuracy"]
    assert table[2].startswith("base/keep") and table[2].endswith("<- best")
    assert "<- best" not in table[3]
    data = result.to_dict()
    assert data["best"] == "base/keep" and data["rows"][0]["freeze"] == ["base/keep"]
    assert fl.ProbeResult.from_dict(data).to_dict() == data
    path = result.plot(tmp_path / "probe.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > image.height


def test_gradual_from_probe_unfreezes_one_block_per_phase():
    model = residual_model()
    x, y = images()
    result = fl.probe(model, x, y, validation_data=images(24, seed=1), epochs=2)
    rows = [dict(row) for row in result.to_dict()["rows"]]
    for row, score in zip(rows, (0.9, 0.5, 0.4)):  # as if the stem were best
        row["score"] = score
    data = dict(result.to_dict(), rows=rows)
    phases = fl.schedules.from_probe(data, gradual=True)
    assert [p.name for p in phases] == ["head", "above base/block1_out", "above base/stem_relu"]
    assert str(phases[1].plan) == "Plan(unfreeze base; freeze base[:6])"
    assert str(phases[2].plan) == "Plan(unfreeze base; freeze base/stem_conv, base/stem_bn)"
    # The whole base winning: the finetune phase unfreezes the top block.
    for row, score in zip(rows, (0.1, 0.2, 0.9)):
        row["score"] = score
    phases = fl.schedules.from_probe(dict(data, rows=rows))
    assert str(phases[1].plan) == "Plan(unfreeze base; freeze base[:6])"


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.body = keras.layers.Dense(4)
        self.head = keras.layers.Dense(2)

    def call(self, x):
        return self.head(self.body(x))


def _unused_branch_model():
    """A nested model with two outputs, of which the outer model reads one."""
    inputs = keras.Input((8,))
    base = keras.Model(inputs, [keras.layers.Dense(4, name="used")(inputs), keras.layers.Dense(4, name="unused")(inputs)],
                       name="base")
    outer = keras.Input((8,))
    return keras.Model(outer, keras.layers.Dense(2, name="head")(base(outer)[0]))


def test_layer_names_like_the_probes_own_and_a_flat_model_with_conv_bn_relu_blocks():
    inputs = keras.Input((8, 8, 3))
    h = inputs
    for i in (0, 1):  # DenseNet names its layers pool0, pool1, ...
        h = keras.layers.Conv2D(4, 3, padding="same", name=f"c{i}")(h)
        h = keras.layers.BatchNormalization(name=f"bn{i}")(h)
        h = keras.layers.ReLU(name=f"r{i}")(h)
        h = keras.layers.MaxPooling2D(name=f"pool{i}")(h)
    model = keras.Model(inputs, keras.layers.Dense(3, name="head")(keras.layers.GlobalAveragePooling2D(name="gap")(h)))
    x, y = images()
    result = fl.probe(model, x, y, validation_data=images(24, seed=1), epochs=1)
    # A convolution, its BatchNormalization, ReLU and pooling are one block: one cut after each.
    assert [row["cut"] for row in result.rows] == ["pool0", "gap"]


def test_auto_cuts_skip_a_branch_one_input_bypasses_and_the_new_head():
    image, vector = keras.Input((8, 8, 3), name="image"), keras.Input((4,), name="vector")
    inner = keras.Input((8, 8, 3))
    base = keras.Model(inner, keras.layers.GlobalAveragePooling2D(name="gap")(
        keras.layers.Conv2D(4, 3, name="conv")(inner)), name="base")
    joined = keras.layers.Concatenate(name="join")([base(image), keras.layers.Dense(4, name="side")(vector)])
    hidden = keras.layers.Dropout(0.5, name="drop")(keras.layers.Dense(8, name="hidden")(joined))
    model = keras.Model([image, vector], keras.layers.Dense(3, name="head")(hidden))
    x, y = images()
    data = [x, np.ones((len(x), 4), "float32")]
    result = fl.probe(model, data, y, validation_data=(data, y), epochs=1)
    # The base's own boundaries (conv and gap are one block); join is computed from the
    # new side layer too, and hidden and drop lie in the new head.
    assert [row["cut"] for row in result.rows] == ["base/gap"], result.rows


def test_a_cut_scores_the_same_whatever_else_is_probed():
    model = residual_model()
    x, y = images()
    held_out = images(24, seed=1)
    alone = fl.probe(model, x, y, validation_data=held_out, cuts=["base/block1_out"], epochs=3)
    among = fl.probe(model, x, y, validation_data=held_out, epochs=3)
    assert alone.rows[0]["score"] == [r for r in among.rows if r["cut"] == "base/block1_out"][0]["score"]


@pytest.mark.parametrize("case, message", [
    ("no validation", "Expected validation_data=(x_val, y_val)"),
    ("no cuts", "Expected cuts='auto' or a non-empty list of layer selectors"),
    ("no match", "Cut 'base/kep' matches no layer. Did you mean 'base/keep'?"),
    ("subclassed", "a subclassed model with no graph to cut"),
    ("no labels", "Expected labels with the training data"),
    ("epochs", "Expected epochs to be a positive int. Received: epochs=True"),
])
def test_bad_input_is_refused_before_any_training(case, message):
    model, (x, y), validation = bottleneck_task()
    train = CountingBatches(x, y)
    kwargs = {"validation_data": validation}
    if case == "no validation":
        kwargs["validation_data"] = None
    elif case == "no cuts":
        kwargs["cuts"] = []
    elif case == "no match":
        kwargs["cuts"] = ["base/kep"]
    elif case == "subclassed":
        model = Subclassed()
        model(x[:1])
    elif case == "no labels":
        train = x
    elif case == "epochs":
        kwargs["epochs"] = True
    before = [np.array(w) for w in model.weights]
    with pytest.raises(fl.FrostlineError, match=None) as raised:
        fl.probe(model, train, **kwargs)
    assert message in str(raised.value)
    assert all(np.array_equal(a, np.array(b)) for a, b in zip(before, model.weights))
    if case != "no labels":
        assert train.reads == 0


def test_a_layer_the_outputs_do_not_use_is_not_a_cut():
    model = _unused_branch_model()
    x = np.zeros((8, 8), "float32")
    with pytest.raises(fl.FrostlineValueError, match="not on the path from the inputs to the outputs"):
        fl.probe(model, x, np.zeros(8, "int32"), validation_data=(x, np.zeros(8, "int32")), cuts=["unused"])


@pytest.mark.slow
def test_auto_cuts_of_a_keras_applications_base_are_its_blocks():
    base = keras.applications.MobileNetV2(weights=None, include_top=False, input_shape=(32, 32, 3), alpha=0.35)
    model = keras.Sequential([keras.Input((32, 32, 3)), base, keras.layers.GlobalAveragePooling2D(name="pool"),
                              keras.layers.Dense(2, name="head")])
    rng = np.random.default_rng(0)
    x, y = rng.random((16, 32, 32, 3), dtype="float32"), rng.integers(0, 2, 16)
    result = fl.probe(model, x, y, validation_data=(x, y), epochs=1)
    names = [row["cut"].rsplit("/", 1)[-1] for row in result.rows]
    assert len(names) == 19 and names[0] == "Conv1_relu" and names[-1] == "pool"
    assert names[1:-1] == ["expanded_conv_project_BN"] + [
        f"block_{i}_add" if i in (2, 4, 5, 7, 8, 9, 11, 12, 14, 15) else f"block_{i}_project_BN" for i in range(1, 17)]
    frozen = [row["frozen_params"] for row in result.rows]
    assert frozen == sorted(frozen) and frozen[-1] == base.count_params()


class WeightedBatches(CountingBatches):
    def __getitem__(self, index):
        x, y = super().__getitem__(index)
        return x, y, np.ones(len(y), "float32")


@pytest.mark.parametrize("case, message", [
    ("string labels", "Expected numeric training labels"),
    ("lengths", "Expected as many training labels as inputs. Received 192 inputs and 100 labels."),
    ("validation lengths", "Expected as many validation labels as inputs. Received 64 inputs and 10 labels."),
    ("cuts None", "Expected cuts='auto', a selector or a list of selectors"),
    ("seed", "Expected seed to be an int of 0 or more. Received: seed='x'"),
    ("memory_limit", "Expected memory_limit to be an int of 0 or more. Received: memory_limit=-1"),
    ("directory", "Expected directory to be an existing folder."),
    ("dataset and y", "Expected y=None with a dataset as the training inputs"),
    ("weights", "Expected validation_data=(x_val, y_val). Received three items"),
    ("weighted batches", "Expected (x, y) batches of training data. Received sample weights too"),
    ("sequence labels", "not one-hot: several labels per sample, or a label per step of a sequence"),
    ("channels", "The training data does not fit the model's inputs: expected batches of shape (None, 8)"),
    ("unbuilt", "Expected a built model. Received Sequential"),
])
def test_more_bad_input_is_one_clear_error(case, message, tmp_path):
    model, (x, y), (xv, yv) = bottleneck_task()
    kwargs = {"validation_data": (xv, yv)}
    if case == "string labels":
        y = np.array(["a", "b"])[y]
    elif case == "lengths":
        y = y[:100]
    elif case == "validation lengths":
        kwargs["validation_data"] = (xv, yv[:10])
    elif case == "cuts None":
        kwargs["cuts"] = None
    elif case == "seed":
        kwargs["seed"] = "x"
    elif case == "memory_limit":
        kwargs["memory_limit"] = -1
    elif case == "directory":
        kwargs["directory"] = tmp_path / "missing"
    elif case == "dataset and y":
        x = CountingBatches(x, y)
    elif case == "weights":
        kwargs["validation_data"] = (xv, yv, np.ones(len(yv)))
    elif case == "weighted batches":
        x, y = WeightedBatches(x, y), None
    elif case == "sequence labels":
        y = np.stack([y, y, y], axis=1)
    elif case == "channels":
        x = x[:, :4]
    elif case == "unbuilt":
        model = keras.Sequential([keras.layers.Dense(2)])
    with pytest.raises(fl.FrostlineError) as raised:
        fl.probe(model, x, y, **kwargs)
    assert message in str(raised.value), str(raised.value)


def test_labels_as_a_list_and_validation_as_a_list():
    model, (x, y), (xv, yv) = bottleneck_task()
    result = fl.probe(model, x, list(y), validation_data=[xv, yv])
    assert result.best["cut"] == "base/keep" and result.metric == "accuracy"
