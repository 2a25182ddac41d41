"""sync: make a model's current flags take effect on its compiled state, optimizer kept."""

from __future__ import annotations

import keras

from frostline import _keras, _state
from frostline.apply.multipliers import install_lr_multipliers, lr_multipliers_installed, model_lr_multipliers
from frostline.apply.optimizer import OptimizerSnapshot, migrate_optimizer, optimizer_variables_match
from frostline.apply.sharing import compiled_models_sharing, shared_layer_error
from frostline.model.modes import is_forced_inference

__all__ = ["CompiledState", "sync", "sync_model", "sync_with_sharing", "traced_functions", "untangle_optimizer_buffers"]

_FUNCTIONS = ("train_function", "test_function", "predict_function")


def traced_functions(model: keras.layers.Layer) -> tuple[str, ...]:
    """The names of the traced functions a model keeps: Keras's train, test and predict
    functions, and any other `X_function` that a `make_X_function` method makes (such
    as keras-hub's `generate_function`, which maps variables by position)."""
    extra = sorted(
        name for name in vars(model)
        if name.endswith("_function") and name not in _FUNCTIONS and callable(getattr(model, f"make_{name}", None))
    )
    return _FUNCTIONS + tuple(extra)


def _sync_key(model: keras.layers.Layer) -> tuple:
    # Functions made after a sync (by a fit) were traced for a set frostline did not
    # see, so their identities are part of the key: the next sync resets them.
    return (
        tuple(id(v) for v in model.trainable_variables),
        tuple(sorted((k, m) for k, (_, m) in model_lr_multipliers(model).items())),
        tuple(id(l) for l in _keras.all_layers(model) if is_forced_inference(l)),
        tuple((name, id(getattr(model, name, None))) for name in traced_functions(model)),
    )


class CompiledState:
    """What `sync` may change on a compiled model: the optimizer's structure and state
    references, the compiled functions, Keras's record of compiled flags and frostline's
    sync key."""

    def __init__(self, model: keras.layers.Layer):
        self.model = model
        optimizer = getattr(model, "optimizer", None)
        self.optimizer = OptimizerSnapshot(optimizer) if optimizer is not None else None
        self.functions = {name: getattr(model, name) for name in traced_functions(model) if hasattr(model, name)}
        self.compiled_flags = _keras.compiled_trainable_state(model)
        record = _state.peek(model, _state.ModelState)
        self.sync_key = None if record is None else record.sync_key

    def restore(self) -> None:
        """Puts all of it back."""
        if self.optimizer is not None:
            self.optimizer.restore()
        for name, function in self.functions.items():
            setattr(self.model, name, function)
        if self.compiled_flags is not None:
            _keras.set_compiled_trainable_state(self.model, self.compiled_flags)
        if self.sync_key is not None or _state.peek(self.model, _state.ModelState) is not None:
            _state.model_state(self.model).sync_key = self.sync_key


def _stale_optimizer(model: keras.layers.Layer) -> bool:
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        return False
    if getattr(optimizer, "built", False) and not optimizer_variables_match(optimizer, model.trainable_variables):
        return True
    wanted = {_keras.variable_key(optimizer, v): m for v, m in model_lr_multipliers(model).values()}
    return lr_multipliers_installed(optimizer) != wanted


def sync(model: keras.layers.Layer, *, _stash: dict | None = None) -> bool:
    """Makes the model's current flags take effect on the next `fit`, without recompiling.

    Use it after setting `layer.trainable` by hand on a compiled model (`fl.apply` does
    it for you). The optimizer is rebuilt in place for the new trainable set: its
    `iterations`, learning-rate schedule position and the slots (Adam moments, momentum)
    of every variable that stays trainable carry over; newly trainable variables start
    with fresh slots; newly frozen ones lose theirs. The compiled train, test and
    predict functions, and any other traced function the model keeps (keras-hub's
    `generate_function`), are made anew, so that they are traced for the new set; that
    works between epochs of a running `fit` too.

    Other compiled models that share layers with this one (two models on one base, or
    a compiled model this one is nested in) are synced the same way, since the flags
    of a shared layer hold for all of them.

    Args:
        model: A Keras model, compiled or not (an uncompiled model needs nothing).

    Returns:
        True if anything had to change on `model`.

    Raises:
        FrostlineTypeError: if the optimizer cannot be rebuilt (a custom optimizer
            without a faithful `get_config`). The model is then exactly as it was.
        SharedLayerError: if that is so for another compiled model that shares a layer;
            every model is then as it was.

    Example:

    >>> import keras, numpy as np, frostline as fl
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, name="a"),
    ...                           keras.layers.Dense(1, name="b")])
    >>> model.compile(optimizer="adam", loss="mse")
    >>> _ = model.fit(np.ones((4, 2)), np.ones((4, 1)), verbose=0)
    >>> model.get_layer("a").trainable = False
    >>> fl.sync(model)
    True
    >>> len(model.optimizer.variables)  # iterations, learning rate, 2 x 2 moments of b
    6
    """
    return sync_with_sharing(model, _keras.all_layers(model), stash=_stash)


def sync_with_sharing(model: keras.layers.Layer, layers: list, *, stash: dict | None = None,
                      undo: list | None = None) -> bool:
    """`sync_model(model)`, then the same for every other compiled model that contains
    one of `layers` (see `frostline.apply.sharing`); all are put back if one fails.
    The `CompiledState` of each other model synced is appended to `undo`, for a caller
    that may still fail. Returns whether `model` had to change."""
    state = CompiledState(model)
    changed = sync_model(model, stash=stash)
    done: list[CompiledState] = []
    try:
        for other in compiled_models_sharing(model, layers):
            done.append(CompiledState(other))
            try:
                sync_model(other, stash=stash)
            except Exception as e:
                raise shared_layer_error(other, model, layers, e) from e
    except BaseException:
        for earlier in reversed(done):
            earlier.restore()
        state.restore()
        raise
    if undo is not None:
        undo.extend(done)
    return changed


def sync_model(model: keras.layers.Layer, *, stash: dict | None = None) -> bool:
    """`sync` for this model alone. Returns True if anything had to change."""
    _keep_across_compile(model)
    key = _sync_key(model)
    stale_optimizer = _stale_optimizer(model)
    has_functions = any(getattr(model, name, None) is not None for name in traced_functions(model))
    record = _state.peek(model, _state.ModelState)
    stale_functions = has_functions and (record is None or record.sync_key != key)
    if not stale_optimizer and not stale_functions:
        untangle_optimizer_buffers(model)
        _state.model_state(model).sync_key = key
        return False
    state = CompiledState(model)
    try:
        if stale_optimizer:
            _rebuild_optimizer(model, stash)
        _reset_functions(model)
        untangle_optimizer_buffers(model)
        _state.model_state(model).sync_key = _sync_key(model)
    except BaseException:
        state.restore()
        raise
    return True


def _keep_across_compile(model: keras.layers.Layer) -> None:
    """For a model with learning-rate multipliers, makes its `compile` sync after it, so
    that an optimizer given later (compiled after the plan, recompiled, compiled after
    `fl.load_model(compile=False)`) gets the multipliers too."""
    if "compile" in vars(model) or not model_lr_multipliers(model):
        return
    compile_of_class = type(model).compile

    def compile(*args, **kwargs):
        compile_of_class(model, *args, **kwargs)
        sync(model)

    compile.__doc__ = compile_of_class.__doc__
    model.compile = compile


def _rebuild_optimizer(model: keras.layers.Layer, stash: dict | None) -> None:
    optimizer = model.optimizer
    multipliers = model_lr_multipliers(model)
    if getattr(optimizer, "built", False):
        migrate_optimizer(optimizer, model.trainable_variables, stash=stash)
    elif multipliers and _keras.is_multi_optimizer(optimizer):
        # Its sub-optimizers exist only once it is built, and the multipliers go on them;
        # fit would build it for this same trainable set.
        optimizer.build(model.trainable_variables)
    install_lr_multipliers(optimizer, multipliers)


def _reset_functions(model: keras.layers.Layer) -> None:
    for name in traced_functions(model):
        if name != "train_function" and hasattr(model, name):
            setattr(model, name, None)
    if getattr(model, "train_function", None) is not None:
        # Made anew rather than dropped: a fit in progress (a callback between epochs)
        # calls `model.train_function` on.
        model.make_train_function(force=True)
    # Keras warns at the next fit that flags changed since compile; they have now taken
    # effect.
    _keras.set_compiled_trainable_state(model)


def untangle_optimizer_buffers(model: keras.layers.Layer) -> None:
    """Gives optimizer variables that share a buffer with a model variable their own.

    With EMA on JAX, Keras's end-of-fit overwrite leaves model variables and their
    averages sharing one buffer, and the next fit fails donating it twice.
    """
    optimizer = getattr(model, "optimizer", None)
    if keras.backend.backend() != "jax" or optimizer is None or not getattr(optimizer, "use_ema", False):
        return
    model_buffers = {id(b) for b in map(_keras.variable_buffer, model.weights) if b is not None}
    for v in optimizer.variables:
        buffer = _keras.variable_buffer(v)
        if buffer is not None and id(buffer) in model_buffers:
            v.assign(keras.ops.copy(buffer))
