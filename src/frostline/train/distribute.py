"""Data parallelism for FineTune, through Keras's own distribution API.

frostline does not distribute anything itself: on JAX it runs `fit` (and the activation
cache's `predict`) under a `keras.distribution.DataParallel`, on TensorFlow under a
`tf.distribute` strategy. What it adds is the part Keras leaves to the user: a model built
before the distribution existed is replicated onto its devices (with its optimizer and
metric state), and inputs that would fail halfway through an epoch are refused before
training starts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import keras

from frostline import _keras
from frostline.errors import DistributionError, FrostlineTypeError

__all__ = ["DistributedRun", "data_parallel"]

_MORE_CPU_DEVICES = "XLA_FLAGS=--xla_force_host_platform_device_count=N (set before JAX starts)"


def _backend_hint() -> str:
    if keras.backend.backend() == "tensorflow":
        return (
            " On TensorFlow, pass a tf.distribute strategy instead, e.g. "
            "distribution=tf.distribute.MirroredStrategy(), and build the model under its scope()."
        )
    return " Run with KERAS_BACKEND=jax for keras.distribution.DataParallel."


def _chosen_devices(devices: int | Literal["auto"] | Sequence[str], available: list[str]) -> list[str]:
    """The devices `data_parallel(devices)` names, checked against those available."""
    if devices == "auto":
        return available
    if isinstance(devices, int) and not isinstance(devices, bool):
        if devices < 1:
            raise DistributionError(f"Expected devices to be a positive integer or 'auto'. Received: devices={devices}")
        if devices > len(available):
            raise DistributionError(
                f"Asked for {devices} devices; this machine has {len(available)} "
                f"({', '.join(available)}). Use devices='auto' or at most {len(available)}; "
                f"for more CPU devices in a test, {_MORE_CPU_DEVICES}."
            )
        return available[:devices]
    if isinstance(devices, (list, tuple)) and devices and all(isinstance(d, str) for d in devices):
        unknown = [d for d in devices if d.lower() not in available]
        if unknown:
            raise DistributionError(f"Unknown devices {unknown}. Available: {available}")
        return [d.lower() for d in devices]
    raise DistributionError(
        f"Expected devices to be a positive integer, 'auto' or a list of device names. Received: devices={devices!r}"
    )


def data_parallel(
    devices: int | Literal["auto"] | Sequence[str] = "auto", *, auto_shard_dataset: bool = True
) -> keras.distribution.DataParallel:
    """A `keras.distribution.DataParallel` over some or all of this machine's devices.

    Every device holds a copy of the weights and takes an equal slice of each batch;
    gradients are averaged across devices, so training computes what one device would.
    With several hosts (after `keras.distribution.initialize()`), "auto" spans every
    host's devices.

    Args:
        devices: How many devices (the first ones of the default kind: GPUs or TPUs
            when present, else CPUs), their names (`["gpu:0", "gpu:1"]`), or "auto"
            for all of them. Defaults to "auto".
        auto_shard_dataset: On several hosts, let Keras split a `tf.data.Dataset`
            over them. Set it to False when each host is given its own part of the
            data, which NumPy arrays must be. Defaults to True.

    Returns:
        A `keras.distribution.DataParallel` to pass as `FineTune(distribution=...)`.

    Raises:
        DistributionError: on a backend other than JAX, for more devices than exist, or for
            a count that is not a positive integer.

    Example:

    >>> import frostline as fl
    >>> fl.data_parallel(1).num_model_replicas
    1
    """
    if keras.backend.backend() != "jax":
        raise DistributionError(
            "keras.distribution.DataParallel needs the JAX backend; Keras does not support it on "
            f"{keras.backend.backend()!r}." + _backend_hint()
        )
    chosen = _chosen_devices(devices, keras.distribution.list_devices())
    return keras.distribution.DataParallel(devices=chosen, auto_shard_dataset=auto_shard_dataset)


def _is_tf_strategy(value: Any) -> bool:
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    return isinstance(value, tf.distribute.Strategy)


def _kind_of(distribution: Any) -> Literal["none", "keras", "tf"]:
    """Which API runs the distribution: none, keras.distribution (JAX) or tf.distribute."""
    if distribution is None:
        return "none"
    if isinstance(distribution, (keras.distribution.DataParallel, keras.distribution.ModelParallel)):
        if keras.backend.backend() != "jax":
            raise DistributionError(
                f"{type(distribution).__name__} needs the JAX backend; Keras does not support "
                f"keras.distribution on {keras.backend.backend()!r}." + _backend_hint()
            )
        if not isinstance(distribution, keras.distribution.DataParallel):
            raise DistributionError(
                "FineTune supports keras.distribution.DataParallel (weights copied to every "
                f"device). Received: {type(distribution).__name__}"
            )
        return "keras"
    if _is_tf_strategy(distribution):
        return "tf"
    if keras.backend.backend() == "torch":
        raise DistributionError(
            "Keras does not support data parallelism on the 'torch' backend; received "
            f"distribution={distribution!r}." + _backend_hint()
        )
    supported = (
        "a tf.distribute strategy" if keras.backend.backend() == "tensorflow"
        else "keras.distribution.DataParallel (frostline.data_parallel())"
    )
    raise FrostlineTypeError(f"Expected distribution to be {supported} or None. Received: {distribution!r}")


class DistributedRun:
    """How a `FineTune` run uses its distribution (or runs on one device without one).

    Args:
        distribution: A `keras.distribution.DataParallel` (JAX), a
            `tf.distribute.Strategy` (TensorFlow), or None.

    Raises:
        DistributionError: for a distribution this backend cannot run.
        FrostlineTypeError: for something that is not a distribution.
    """

    def __init__(self, distribution: Any = None):
        self.distribution = distribution
        self.kind: Literal["none", "keras", "tf"] = _kind_of(distribution)

    @property
    def replicas(self) -> int:
        """Devices that share each batch (1 without a distribution)."""
        if self.kind == "keras":
            return int(self.distribution.num_model_replicas)
        if self.kind == "tf":
            return int(self.distribution.num_replicas_in_sync)
        return 1

    @property
    def processes(self) -> int:
        """Processes (hosts) in the run: 1 unless `keras.distribution.initialize` joined several."""
        if self.kind == "keras":
            return int(self.distribution.num_processes)
        return 1

    @property
    def local_replicas(self) -> int:
        """Devices of this process that share its part of each batch."""
        if self.kind == "keras":
            return max(1, self.replicas // self.processes)
        return self.replicas

    @property
    def is_chief(self) -> bool:
        """Whether this process writes checkpoints (process 0, the strategy's chief, or
        the only one)."""
        if self.kind == "keras":
            import jax

            return jax.process_index() == 0
        if self.kind == "tf":
            return bool(self.distribution.extended.should_checkpoint)
        return True

    def describe(self) -> str:
        """One phrase for the phase line, e.g. "data parallel over 4 devices"."""
        if self.kind == "none":
            return ""
        return f"data parallel over {self.replicas} device" + ("" if self.replicas == 1 else "s")

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        """The distribution's scope: variables made inside are replicated."""
        if self.kind == "none":
            yield
        else:
            with self.distribution.scope():
                yield

    def place(self, variables: Sequence[keras.Variable]) -> None:
        """Puts variables made before the distribution onto its devices (JAX), or checks
        that they were made under the strategy's scope (TensorFlow).

        Raises:
            DistributionError: on TensorFlow, for a variable made outside the strategy's scope.
        """
        if self.kind == "keras":
            for v in variables:
                _keras.place_variable(v, self.distribution)
        elif self.kind == "tf":
            self.check_variables(variables)

    def check_variables(self, variables: Sequence[keras.Variable]) -> None:
        """On TensorFlow, refuses variables made outside the strategy's scope, which
        TensorFlow cannot move onto the strategy's devices; elsewhere does nothing.

        Raises:
            DistributionError: naming the first such variable and saying where to build it.
        """
        if self.kind != "tf":
            return
        strategy = self.distribution
        for v in variables:
            inner = _keras.backend_variable(v)
            if not strategy.extended.variable_created_in_scope(inner):
                raise DistributionError(
                    f"Variable {v.path!r} was made outside the strategy's scope; TensorFlow "
                    "cannot move it onto the strategy's devices. Build the model (and an "
                    "optimizer you pass) under `with strategy.scope():` and pass the same "
                    "strategy as distribution=."
                )

    def check_arrays(self) -> None:
        """Refuses NumPy inputs that Keras would try to split over several hosts.

        Raises:
            DistributionError: saying to give each host its part and turn auto-sharding off.
        """
        if self.processes > 1 and self.distribution.auto_shard_dataset:
            raise DistributionError(
                f"This run spans {self.processes} processes and the data are NumPy "
                "arrays, which Keras cannot split over hosts. Give each process its own part of the "
                "data and use frostline.data_parallel(..., auto_shard_dataset=False), or pass a "
                "tf.data.Dataset."
            )

    def check_batches(self, samples: int | None, batch_size: int | None, what: str) -> None:
        """Refuses a batch size, or a last batch, that this process's devices cannot
        share equally (JAX would fail partway through an epoch).

        Raises:
            DistributionError: saying which batch, and what would divide.
        """
        devices = self.local_replicas
        if self.kind != "keras" or devices == 1:
            return
        batch = batch_size or 32
        if batch % devices:
            lower, upper = batch - batch % devices, batch + devices - batch % devices
            suggestion = f"{lower} or {upper}" if lower else f"{upper}"
            raise DistributionError(
                f"batch_size={batch} cannot be split over {devices} devices: expected a multiple of "
                f"{devices}, e.g. {suggestion}."
            )
        if samples is not None and samples % batch % devices:
            last = samples % batch
            raise DistributionError(
                f"The {what} has {samples} samples, so its last batch has {last}, which cannot be split "
                f"over {devices} devices. Drop {last % devices} samples (use {samples - last % devices}) "
                f"or choose a batch size that leaves a last batch divisible by {devices}."
            )
