"""Every private Keras attribute and `keras.src` import frostline relies on, in one place.

Keras's public API cannot say "which variables was this optimizer built for" or "run this
Functional graph with my own function per layer"; frostline needs both. Each function
below names what it relies on. They were checked against the Keras versions in
`VERIFIED_KERAS`; `check_version` warns, once at import, on any other version. When Keras
changes, this file is the list of what to check, and nothing else in frostline touches a
private Keras name.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import keras
from keras.src.utils.tracking import DotNotTrackScope

__all__ = ["VERIFIED_KERAS", "check_version"]

# Minor versions whose internals this module was read against and tested with.
VERIFIED_KERAS = ("3.15",)


def check_version(version: str | None = None) -> bool:
    """Warns when the installed Keras (or `version`, a version string) is not a version
    frostline was verified with; returns True for a verified one."""
    version = keras.__version__ if version is None else version
    if ".".join(version.split(".")[:2]) in VERIFIED_KERAS:
        return True
    warnings.warn(f"frostline was verified with Keras {', '.join(VERIFIED_KERAS)}; Keras {version} is installed. "
                  "frostline relies on a few Keras internals (listed in frostline/_keras.py) that may have changed: "
                  f"run its tests, or install keras~={VERIFIED_KERAS[-1]}.", stacklevel=3)
    return False


# ---- layers -------------------------------------------------------------------------


def direct_sublayers(layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    """A layer's direct sublayers, in tracking order. Relies on
    `Layer._flatten_layers(include_self=False, recursive=False)`."""
    return list(layer._flatten_layers(include_self=False, recursive=False))


def all_layers(layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    """The layer and every layer inside it, each once. Relies on `Layer._flatten_layers()`."""
    return list(layer._flatten_layers())


def own_variables(layer: keras.layers.Layer) -> tuple[list, list]:
    """A layer's own (trainable-capable, never-trainable) variables, not its sublayers'.
    Relies on `Layer._trainable_variables` and `Layer._non_trainable_variables`."""
    return list(layer._trainable_variables), list(layer._non_trainable_variables)


def set_own_trainable(layer: keras.layers.Layer, flag: bool) -> None:
    """Sets one layer's `trainable` flag without the public setter's recursion into its
    sublayers. Relies on `Layer._trainable`, the attribute behind `Layer.trainable`."""
    layer._trainable = bool(flag)


def call_takes_training(layer: keras.layers.Layer) -> bool:
    """Whether the layer's `call` has a `training` argument (`Layer._call_has_training_arg`)."""
    return bool(getattr(layer, "_call_has_training_arg", False))


def has_seed_generators(layer: keras.layers.Layer) -> bool:
    """Whether the layer draws random numbers (Dropout, noise, random augmentation).
    Relies on `Layer._seed_generators`, where Keras tracks a layer's SeedGenerators."""
    return bool(getattr(layer, "_seed_generators", None))


# ---- compiled models -----------------------------------------------------------------


_COMPILE_ATTRIBUTES = ("optimizer", "compiled", "loss", "_compile_loss", "_compile_metrics", "_loss_tracker",
                       "_jit_compile", "_run_eagerly", "stop_training", "_compiled_trainable_state",
                       "steps_per_execution", "train_function", "test_function", "predict_function",
                       "_compile_config")


def compile_attributes(model: keras.Model) -> dict:
    """What `Trainer.compile` sets (untracked) on a model, for `set_compile_attributes`."""
    return {name: model.__dict__[name] for name in _COMPILE_ATTRIBUTES if name in model.__dict__}


def set_compile_attributes(model: keras.Model, attributes: dict) -> None:
    for name in _COMPILE_ATTRIBUTES:
        model.__dict__.pop(name, None)
    model.__dict__.update(attributes)


def compiled_trainable_state(model: keras.Model) -> dict | None:
    """Keras's record of each layer's `trainable` flag at compile time, or None. Relies on
    `Trainer._compiled_trainable_state` (compared by fit to warn that flags changed)."""
    return getattr(model, "_compiled_trainable_state", None)


def set_compiled_trainable_state(model: keras.Model, state: dict | None = None) -> None:
    """Sets that record; None records every layer's flag as it is now (the flags have
    taken effect, so fit need not warn). Does nothing on a model that never compiled."""
    if hasattr(model, "_compiled_trainable_state"):
        model._compiled_trainable_state = {x: x.trainable for x in all_layers(model)} if state is None else state


# ---- variables -----------------------------------------------------------------------


def variable_buffer(variable: keras.Variable) -> Any:
    """The backend array behind a variable, or None. Relies on `Variable._value`."""
    return getattr(variable, "_value", None)


def backend_variable(variable: keras.Variable) -> Any:
    """On TensorFlow, the `tf.Variable` behind a Keras variable (what a strategy places);
    elsewhere the variable. Relies on `Variable._value`."""
    return getattr(variable, "_value", variable)


def place_variable(variable: keras.Variable, distribution: Any) -> None:
    """Lays a variable made before `distribution` out on its devices (JAX). Relies on
    `Variable._layout` (read by the JAX backend when it assigns) and
    `Variable._direct_assign`, which re-places the value under that layout."""
    if getattr(variable, "_layout", None) is None:
        variable._layout = distribution.get_variable_layout(variable)
        variable._direct_assign(variable.value)


# ---- optimizers ----------------------------------------------------------------------

# Attributes an optimizer's `build` sets that frostline rebuilds itself when it migrates
# an optimizer: the variable list and its tracker, and the built-for list and index.
OPTIMIZER_BOOKKEEPING = ("_variables", "_tracker", "_trainable_variables", "_trainable_variables_indices", "built")
# The EMA averages' slot list (`BaseOptimizer._model_variables_moving_average`).
EMA_SLOTS = "_model_variables_moving_average"


def built_for(optimizer: keras.optimizers.Optimizer) -> list:
    """The variables a built optimizer was built for, in order. Relies on
    `BaseOptimizer._trainable_variables`."""
    return list(optimizer._trainable_variables)


def variable_key(optimizer: keras.optimizers.Optimizer, variable: keras.Variable) -> Any:
    """The key an optimizer files a variable under. Relies on `BaseOptimizer._var_key`."""
    return optimizer._var_key(variable)


def variable_list(optimizer: keras.optimizers.Optimizer) -> list:
    """The optimizer's own list of its variables (the list object itself). Relies on
    `BaseOptimizer._variables`."""
    return optimizer._variables


def tracked_variable_ids(optimizer: keras.optimizers.Optimizer) -> set:
    """Ids of the variables the optimizer's tracker knows. Relies on
    `BaseOptimizer._tracker.stored_ids["variables"]`."""
    return set(optimizer._tracker.stored_ids["variables"])


def set_variables(optimizer: keras.optimizers.Optimizer, variables: list, tracked: set | None = None) -> None:
    """Makes `variables` the optimizer's variables, and `tracked` (default: their ids) the
    ids its tracker knows."""
    target = optimizer._variables
    # Not `target[:] = items`: TensorFlow's list wrapper compares old and new items
    # with `!=`, which Keras variables answer elementwise.
    del target[:]
    target.extend(variables)
    optimizer._tracker.stored_ids["variables"] = {id(v) for v in variables} if tracked is None else set(tracked)


def set_built_for(optimizer: keras.optimizers.Optimizer, variables: list, indices: dict) -> None:
    """Marks the optimizer built for `variables` with the key-to-index map `indices`, as
    `BaseOptimizer.build` does (`_trainable_variables`, `_trainable_variables_indices`)."""
    with DotNotTrackScope():
        optimizer._trainable_variables = list(variables)
        optimizer._trainable_variables_indices = dict(indices)
        optimizer.built = True


def built_for_indices(optimizer: keras.optimizers.Optimizer) -> dict:
    """The key-to-index map of the variables a built optimizer was built for
    (`BaseOptimizer._trainable_variables_indices`)."""
    return dict(optimizer._trainable_variables_indices)


@contextlib.contextmanager
def untracked() -> Iterator[None]:
    """Attributes set inside are not tracked, as in Keras's own `build` (`DotNotTrackScope`)."""
    with DotNotTrackScope():
        yield


def learning_rate_value(optimizer: keras.optimizers.Optimizer) -> Any:
    """What the optimizer computes its rate from: a variable or a schedule. Relies on
    `BaseOptimizer._learning_rate`."""
    return optimizer.__dict__.get("_learning_rate")


def set_learning_rate_value(optimizer: keras.optimizers.Optimizer, value: Any) -> None:
    """Replaces `BaseOptimizer._learning_rate` (a variable or a schedule) without Keras's
    setter, which would make a new variable and change the optimizer's structure."""
    optimizer.__dict__["_learning_rate"] = value


def iterations(optimizer: keras.optimizers.Optimizer) -> int:
    """The optimizer's step count (`BaseOptimizer._iterations`: readable under every strategy)."""
    return int(keras.ops.convert_to_numpy(optimizer._iterations))


def uses_weight_decay(optimizer: keras.optimizers.Optimizer, variable: keras.Variable) -> bool:
    """Whether decoupled weight decay applies to a variable (`BaseOptimizer._use_weight_decay`)."""
    return bool(optimizer._use_weight_decay(variable))


def class_update_step(optimizer: keras.optimizers.Optimizer) -> Callable:
    """The optimizer class's own `update_step`, unbound."""
    return type(optimizer).update_step


def class_apply_weight_decay(optimizer: keras.optimizers.Optimizer) -> Callable:
    """The class's own `BaseOptimizer._apply_weight_decay(variables)`, unbound."""
    return type(optimizer)._apply_weight_decay


def per_variable_update_step(optimizer: keras.optimizers.Optimizer) -> Callable | None:
    """For PyTorch's vectorised optimizers, the per-variable update loop their base class
    keeps (they update every variable in one call with one rate); None elsewhere. Relies
    on `TorchParallelOptimizer._backend_update_step` and its base's."""
    for cls in type(optimizer).__mro__:
        if cls.__name__ == "TorchParallelOptimizer":
            return super(cls, optimizer)._backend_update_step
    return None


# Instance attributes that `install_update_hooks` sets over the class's methods.
UPDATE_HOOKS = ("update_step", "_apply_weight_decay", "_backend_update_step")


def install_update_hooks(optimizer: keras.optimizers.Optimizer, update_step: Callable,
                         apply_weight_decay: Callable) -> None:
    """Gives one optimizer its own `update_step` and `_apply_weight_decay` (and, on
    PyTorch's vectorised optimizers, the per-variable update loop). Set in the instance
    dict: Keras's and torch's `__setattr__` must not track them."""
    optimizer.__dict__["update_step"] = update_step
    optimizer.__dict__["_apply_weight_decay"] = apply_weight_decay
    sequential = per_variable_update_step(optimizer)
    if sequential is not None:
        optimizer.__dict__["_backend_update_step"] = sequential


def remove_update_hooks(optimizer: keras.optimizers.Optimizer) -> None:
    """Undoes `install_update_hooks`: the class's methods apply again."""
    for name in UPDATE_HOOKS:
        optimizer.__dict__.pop(name, None)


# ---- Functional graphs ---------------------------------------------------------------


def functional_graph(model: keras.layers.Layer) -> keras.Model | None:
    """The Functional graph behind a model (a Sequential's is built lazily), or None for a
    model whose graph cannot be seen. Relies on `Sequential._functional` and on
    `Functional._run_through_graph` / `_nodes_by_depth`."""
    if isinstance(model, keras.Sequential):
        return getattr(model, "_functional", None)
    if isinstance(model, keras.Model) and hasattr(model, "_run_through_graph") and hasattr(model, "_nodes_by_depth"):
        return model
    return None


def run_through_graph(graph: keras.Model, inputs: Any, operation_fn: Callable) -> Any:
    """Calls a Functional graph on `inputs` with `operation_fn(op)` deciding how each
    operation runs. Relies on `Function._run_through_graph(inputs, operation_fn=...)`."""
    return graph._run_through_graph(inputs, operation_fn=operation_fn)


def input_structure(graph: keras.Model) -> Any:
    """The structure (a tensor, list or dict) a Functional graph was built on, with its
    input tensors. Relies on `Function._inputs_struct`."""
    return graph._inputs_struct


def graph_nodes(graph: keras.Model) -> list:
    """Every node of a Functional graph, by depth. Relies on `Functional._nodes_by_depth`."""
    return [node for nodes in graph._nodes_by_depth.values() for node in nodes]


# ---- data -----------------------------------------------------------------------------


def data_adapter(x: Any, y: Any = None, sample_weight: Any = None, *, batch_size: int | None = None,
                 shuffle: bool = False) -> Any:
    """The adapter `fit` reads `x` through. Relies on `keras.src.trainers.data_adapters.
    get_data_adapter` and the adapters' `get_numpy_iterator`, `on_epoch_begin`,
    `on_epoch_end` and `num_batches`."""
    from keras.src.trainers.data_adapters import get_data_adapter

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "shuffle=True ... will be ignored": fit says it too
        return get_data_adapter(x, y, sample_weight, batch_size=batch_size, shuffle=shuffle)


# ---- callbacks -----------------------------------------------------------------------


def overrides_hook(callback: keras.callbacks.Callback, hook: str) -> bool:
    """Whether a callback implements `hook` (e.g. "on_train_batch_end") itself. Relies on
    the `_is_default` mark Keras puts on the base class's empty hooks, which lets fit skip
    batch-level dispatch when no callback needs it."""
    return not getattr(getattr(callback, hook), "_is_default", False)


# ---- LoRA adapters -------------------------------------------------------------------


def lora_base_variable(layer: keras.layers.Layer) -> keras.Variable | None:
    """The variable `enable_lora` freezes: `Dense`/`EinsumDense`/conv layers' `_kernel`
    (their public `kernel` is computed when quantized), `Embedding._embeddings` (its
    public `embeddings` is computed: merged with the adapters, unpacked for int4)."""
    for name in ("_kernel", "_embeddings", "embeddings"):
        value = layer.__dict__.get(name)
        if isinstance(value, keras.Variable):
            return value
    return None


def merge_lora(layer: keras.layers.Layer) -> None:
    """Folds a layer's adapters into its base weights as Keras does when it saves, then takes
    them out (`remove_lora`). Relies on `_get_{kernel,embeddings}_with_merged_lora` and the
    variables `_kernel`, `kernel_scale`, `kernel_zero` (or `_embeddings`, `embeddings_*`)."""
    if hasattr(layer, "_get_embeddings_with_merged_lora"):
        merged = layer._get_embeddings_with_merged_lora()
        names = ("_embeddings", "embeddings_scale", "embeddings_zero")
    else:
        merged = layer._get_kernel_with_merged_lora()
        names = ("_kernel", "kernel_scale", "kernel_zero")
    merged = merged if isinstance(merged, tuple) else (merged,)
    for name, value in zip(names, merged):
        target = layer.__dict__.get(name)
        if value is not None and isinstance(target, keras.Variable):
            target.assign(value)
    remove_lora(layer)


def remove_lora(layer: keras.layers.Layer) -> None:
    """Takes a layer's LoRA adapters out again (Keras has no `disable_lora`): the adapter
    variables are untracked through `Layer.__delattr__`, and the layer's `lora_*`
    attributes reset, so that its config no longer asks for adapters."""
    layer._tracker.unlock()
    try:
        for name in [n for n, v in list(vars(layer).items()) if n.startswith("lora_") and isinstance(v, keras.Variable)]:
            delattr(layer, name)
    finally:
        layer._tracker.lock()
    layer.lora_enabled = False
    layer.lora_rank = None
    layer.lora_alpha = None


# ---- MultiOptimizer ------------------------------------------------------------------


def is_multi_optimizer(optimizer: keras.optimizers.Optimizer) -> bool:
    """Whether this is Keras's `MultiOptimizer` (per-variable sub-optimizers)."""
    return type(optimizer).__name__ == "MultiOptimizer" and hasattr(optimizer, "_inner_optimizers")


def sub_optimizer_for(optimizer: keras.optimizers.Optimizer, variable: keras.Variable) -> keras.optimizers.Optimizer:
    """The sub-optimizer a `MultiOptimizer` gives `variable`, added to its list as its own
    `build` does when the map returns a new one (`_optimizer_map`, `_inner_optimizers`)."""
    sub = optimizer._optimizer_map(variable)
    if not isinstance(sub, keras.optimizers.Optimizer):
        raise TypeError(f"The MultiOptimizer's map gave {sub!r} for {variable.path}, not an optimizer.")
    if not any(sub is o for o in optimizer._inner_optimizers):
        sub.loss_scale_factor = optimizer.loss_scale_factor
        optimizer._inner_optimizers.append(sub)
    return sub


def sub_optimizers(optimizer: keras.optimizers.Optimizer) -> list:
    """A `MultiOptimizer`'s sub-optimizers, in its order (`_inner_optimizers`)."""
    return list(optimizer._inner_optimizers)


def set_multi_assignment(optimizer: keras.optimizers.Optimizer, variables: list) -> None:
    """Marks a `MultiOptimizer` built for `variables`: which sub-optimizer takes each
    (`_var_to_optimizer_idx`) and its own built-for list and index."""
    subs = optimizer._inner_optimizers
    assignment, indices = {}, {}
    for i, v in enumerate(variables):
        sub = optimizer._optimizer_map(v)
        assignment[variable_key(optimizer, v)] = next(k for k, o in enumerate(subs) if o is sub)
        indices[variable_key(optimizer, v)] = i
    with DotNotTrackScope():
        optimizer._var_to_optimizer_idx = assignment
    set_built_for(optimizer, variables, indices)
