"""fl.FineTune on a keras-hub task, and the fine-tuned task saved and loaded: weights read
before and after real fits, a real `.keras` file."""

import keras
import numpy as np
import pytest

import frostline as fl
from hub_zoo import bert_classifier, texts

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
HEAD = {"logits/kernel", "logits/bias"}


def _values(model) -> dict[str, np.ndarray]:
    return {v.path: keras.ops.convert_to_numpy(v).copy() for v in model.weights}


def _moved(before: dict, after: dict) -> set[str]:
    """Paths whose values are not bit-identical."""
    return {p for p in before if not np.array_equal(before[p], after[p])}


def _paths(variables) -> list[str]:
    return sorted(v.path for v in variables)


class _Snapshots(fl.FineTune):
    """Keeps the task's weights as each phase ends."""

    def on_phase_end(self, phase, info):
        super().on_phase_end(phase, info)
        self.snapshots = {**getattr(self, "snapshots", {}), phase.name: _values(self.model)}


def test_fine_tune_trains_the_head_on_a_frozen_backbone_then_the_top_block():
    model = bert_classifier(preprocessor=True)
    x, y = texts()
    backbone = _paths(model.backbone.weights)
    top = {p for p in backbone if p.startswith("transformer_layer_1/")}
    run = _Snapshots(model, [
        fl.Phase("head", epochs=2, plan=fl.Plan().freeze("bert_backbone"), learning_rate=1e-2),
        fl.Phase("top", epochs=1, plan=fl.Plan().unfreeze("bert_backbone/transformer_layer_1"), learning_rate=1e-3),
    ], optimizer=keras.optimizers.Adam(), loss=LOSS)
    start = _values(model)
    # shuffle=False: keras-hub's own fit warns that it ignores shuffle=True (its data
    # goes through a grain pipeline), and pytest makes warnings errors.
    history = run.fit(x, y, batch_size=4, shuffle=False, verbose=0, callbacks=[fl.FreezeAudit()])
    assert history.epoch == [0, 1, 2]
    assert np.all(np.isfinite(history.history["loss"]))
    # Phase 1: every backbone weight bit-identical, the head moved.
    assert _moved(start, run.snapshots["head"]) == HEAD
    # Phase 2: the top block moved too; the embeddings and the first block did not.
    moved = _moved(run.snapshots["head"], run.snapshots["top"])
    assert top <= moved <= top | HEAD, sorted(moved ^ top)
    assert not _moved({p: start[p] for p in backbone if p not in top}, run.snapshots["top"])
    assert _paths(model.trainable_weights) == sorted(top | HEAD)
    # One optimizer throughout: 16 texts in batches of 4 are 4 steps an epoch.
    assert int(keras.ops.convert_to_numpy(run.optimizer.iterations)) == 3 * 4


# A keras-hub task compiles itself when it is made, so the loaded task has an optimizer
# that was never built, and Keras warns that it skips the saved optimizer's state
# (as it does for any trained keras-hub task, frostline or not); pytest would make that
# warning a loading error.
@pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer:UserWarning")
@pytest.mark.parametrize("unfrozen", [None, "bert_backbone/transformer_layer_1"], ids=["backbone", "all-but-top-block"])
def test_a_fine_tuned_bert_loads_with_the_trainable_counts_it_was_saved_with(tmp_path, unfrozen):
    model = bert_classifier(preprocessor=True)
    x, y = texts()
    plan = fl.Plan().freeze("bert_backbone")
    plan = plan.unfreeze(unfrozen) if unfrozen else plan
    run = fl.FineTune(model, [fl.Phase("head", epochs=1, plan=plan)], optimizer=keras.optimizers.Adam(1e-2), loss=LOSS)
    run.fit(x, y, batch_size=4, shuffle=False, verbose=0)
    trained = _paths(model.trainable_weights)
    assert (trained == sorted(HEAD)) == (unfrozen is None)
    path = tmp_path / "bert.keras"
    model.save(path)
    saved = fl.report(model)

    if unfrozen:
        # keras-hub rebuilds the backbone's layers trainable when it loads: plain Keras
        # loses a partly frozen backbone. (A wholly frozen one keeps its own flag, which
        # hides the rest on JAX and TensorFlow, not on PyTorch.)
        plain = keras.saving.load_model(path, compile=False)
        assert len(plain.trainable_weights) > len(model.trainable_weights)
    loaded = fl.load_model(path, compile=False)
    assert len(loaded.trainable_weights) == len(model.trainable_weights)
    assert len(loaded.non_trainable_weights) == len(model.non_trainable_weights)
    assert _paths(loaded.trainable_weights) == trained
    report = fl.report(loaded)
    assert (report.trainable_params, report.frozen_params) == (saved.trainable_params, saved.frozen_params)
    assert report.trainable_params == sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    # The same weights: the loaded task predicts what the saved one did, text in.
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))

    # The restored frozen set takes effect in the loaded task's own fit.
    loaded.compile(optimizer=keras.optimizers.Adam(1e-2), loss=LOSS)
    before = _values(loaded)
    loaded.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    assert _moved(before, _values(loaded)) == set(trained)
