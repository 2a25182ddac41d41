"""The `frostline train` configuration: a YAML file, validated before anything runs.

`load_config` needs no Keras (the command reports a config's mistakes before starting it):
the YAML, every key, type and value, and the files and folders named. What needs Keras
(plans, Keras names) is `preflight.check_config`'s.

```yaml
base:
  application: MobileNetV2        # or: keras: path/to/base.keras
  weights: imagenet               # imagenet | none | path to a weights file
  input_shape: [96, 96, 3]
head:
  classes: 5
  pooling: avg                    # avg | max | flatten
  dropout: 0.2
  units: []                       # hidden Dense layers
data:
  npz: data.npz                   # x_train, y_train[, x_val, y_val]; or images: folder/
  batch_size: 32
phases:
  - name: head
    epochs: 5
    learning_rate: 0.001
    plan: {rules: [{freeze: base}]}
    cache: auto                   # auto | memory | disk | false; cache_views: K with augmentation
optimizer: adam
loss: sparse_categorical_crossentropy
metrics: [accuracy]
output: runs/exp1
seed: 0
distribution:                     # optional: data parallel (JAX)
  data_parallel: auto             # a device count, or auto for all devices
```
"""

from __future__ import annotations

import os
import tempfile
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BaseModel, ConfigDict, Field, StrictFloat, StrictInt, ValidationError, field_validator, model_validator,
)

from frostline.app.probe_config import ProbeSpec
from frostline.errors import ConfigError, did_you_mean
from frostline.plan.safe_yaml import MAX_YAML_BYTES, decode_yaml, load_yaml

if TYPE_CHECKING:
    from frostline.plan.plan import Plan

__all__ = ["ConfigError", "TrainConfig", "load_config"]

# Booleans are not numbers here (pydantic would read `epochs: true` as 1), and no number is inf or nan.
Positive = Annotated[StrictInt, Field(gt=0)]
Number = Annotated[StrictFloat, Field(allow_inf_nan=False)]
# Folders no run may write into: the kernel's views of processes, devices and the system.
_SYSTEM_FOLDERS = ("/proc", "/sys", "/dev")
_CACHE_MODES = ("auto", "memory", "disk")

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BaseSpec(_Strict):
    """The pretrained base: a `.keras` file or a `keras.applications` model."""

    keras: str | None = None
    application: str | None = None
    weights: str = "imagenet"
    input_shape: tuple[Positive, ...] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> BaseSpec:
        if (self.keras is None) == (self.application is None):
            raise ValueError("expected exactly one of 'keras' (a .keras file) or 'application' (a keras.applications name)")
        if self.application is not None and self.input_shape is None:
            raise ValueError("'input_shape' is required with 'application', e.g. [96, 96, 3]")
        return self


class HeadSpec(_Strict):
    """The new classification head."""

    classes: Positive
    pooling: Literal["avg", "max", "flatten", "none"] = "avg"
    dropout: Number = Field(default=0.0, ge=0.0, lt=1.0)
    units: tuple[Positive, ...] = ()
    activation: str = "relu"
    output_activation: str = "softmax"


class DataSpec(_Strict):
    """Training data: arrays in a `.npz` file, or an image folder (one folder a class)."""

    npz: str | None = None
    images: str | None = None
    image_size: tuple[Positive, Positive] | None = None
    color_mode: Literal["rgb", "grayscale", "rgba"] = "rgb"
    validation_split: Number = Field(default=0.0, ge=0.0, lt=1.0)
    batch_size: Positive = 32

    @model_validator(mode="after")
    def _one_source(self) -> DataSpec:
        if (self.npz is None) == (self.images is None):
            raise ValueError("expected exactly one of 'npz' or 'images'")
        return self


class PhaseSpec(_Strict):
    """One phase; `plan` is the same YAML as `Plan.to_yaml`. Its rules and the arguments of
    `early_stopping` are checked with Keras, by `preflight.check_config`."""

    name: str = Field(min_length=1)
    epochs: Positive
    learning_rate: Number | None = Field(default=None, gt=0)
    plan: dict[str, Any] | list[Any] = Field(default_factory=dict)
    early_stopping: dict[str, Any] | None = None
    cache: Literal["auto", "memory", "disk", False] = "auto"
    cache_views: Positive | None = None

    @field_validator("cache", mode="before")
    @classmethod
    def _cache_mode(cls, value: Any) -> Any:
        if value is True:  # as fl.Phase reads it
            return "auto"
        if value is False or (isinstance(value, str) and value in _CACHE_MODES):
            return value
        hint = did_you_mean(value, _CACHE_MODES) if isinstance(value, str) else ""
        raise ValueError(f"expected auto, memory, disk or false (true is auto); received {value!r}.{hint}")

    def to_plan(self) -> Plan:
        """The phase's plan (this imports Keras, as `Plan` does; `load_config` does not)."""
        from frostline.plan.plan import Plan

        return Plan.from_config(self.plan or {"rules": []})


class DistributionSpec(_Strict):
    """Data-parallel training over several devices (`frostline.data_parallel`)."""

    data_parallel: StrictInt | Literal["auto"] = Field(default="auto")

    @field_validator("data_parallel")
    @classmethod
    def _positive(cls, value: Any) -> Any:
        if isinstance(value, int) and value < 1:
            raise ValueError(f"expected a positive device count or 'auto'; received {value!r}")
        return value


class TrainConfig(_Strict):
    """The whole `frostline train` configuration."""

    base: BaseSpec
    head: HeadSpec
    data: DataSpec
    phases: tuple[PhaseSpec, ...] = Field(min_length=1)
    optimizer: str | dict[str, Any] = "adam"
    loss: str = "sparse_categorical_crossentropy"
    metrics: tuple[str, ...] = ("accuracy",)
    output: str
    seed: Annotated[StrictInt, Field(ge=0, le=2**32 - 1)] | None = 0
    distribution: DistributionSpec | None = None
    probe: ProbeSpec | None = None  # frostline probe's; frostline train ignores it

    @field_validator("output")
    @classmethod
    def _folder(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("expected the output folder, e.g. runs/exp1; received an empty path, which would write "
                             "into the config file's own folder (and over a config.yaml there)")
        return value

    @model_validator(mode="after")
    def _distinct_phase_names(self) -> TrainConfig:  # and cache_views only where the cache is on
        seen: dict[str, int] = {}
        for i, phase in enumerate(self.phases):
            if phase.name in seen:
                raise ValueError(f"phases[{i}].name: expected each phase to have its own name; received "
                                 f"{phase.name!r}, the name of phases[{seen[phase.name]}] too. Rename one of them.")
            seen[phase.name] = i
            if phase.cache_views is not None and phase.cache is False:
                raise ValueError(f"phases[{i}].cache_views: {phase.cache_views} asks for cached views of augmented "
                                 "samples, but cache: false turns the cache off. Drop one of them.")
        return self


def _location(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _message(error: dict) -> str:
    kind, received = error["type"], error.get("input")
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "missing key"
    text = error["msg"].removeprefix("Value error, ")
    if isinstance(received, bool) and kind in ("int_type", "float_type"):
        return f"{text}; received {str(received).lower()}, a boolean. Write a number, e.g. 5"
    return f"{text}; received {received!r}" if kind != "value_error" else text


def _check_output(output: str, config_path: str) -> None:
    """Refuses an output folder that is the config file, a file, a system folder, or
    inside a folder this user cannot write to; leaves nothing behind."""
    out = os.path.realpath(output)
    if out == os.path.realpath(config_path):
        raise ConfigError(f"output: expected a folder to write the run into; received the config file itself "
                          f"({output!r}), which the run would overwrite. Use e.g. output: runs/exp1")
    system = next((f for f in _SYSTEM_FOLDERS if out == f or out.startswith(f + os.sep)), None)
    if system is not None:
        raise ConfigError(f"output: expected a folder of your own; received {output!r}, inside {system}, which "
                          "the kernel provides and no run can write. Use e.g. output: runs/exp1")
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError(f"output: expected a folder; received {output!r}, which is a file. "
                          "Choose another output, or move the file away.")
    existing = out
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ConfigError(f"output: expected a folder; {existing!r} on the way to {output!r} is a file.")
    read_only = bool(os.statvfs(existing).f_flag & os.ST_RDONLY)
    why = "on a read-only file system" if read_only else None
    if why is None and not os.access(existing, os.W_OK | os.X_OK):
        why = "not writable by this user"
    if why is None:
        why = _write_refused(existing)
    if why is not None:
        raise ConfigError(f"output: {output!r} cannot be written: {existing!r} is {why}. "
                          "Write to a folder this user can write to.")


def _write_refused(folder: str) -> str | None:
    """Why making a folder in `folder` fails, or None when it works: an empty folder is
    made and removed at once. Permission bits do not tell (root passes them; an immutable
    folder, a read-only network share or a security policy refuse what they allow)."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".frostline-write-check-", dir=folder))
    except OSError as e:
        return f"not writable by this user ({os.strerror(e.errno) if e.errno else e})"
    return None


def load_config(path: str | os.PathLike[str], *, default_phases: list[dict] | None = None) -> TrainConfig:
    """Reads and validates a configuration file; relative paths in it are taken from
    the file's folder. `default_phases` stand in for a file without `phases:` (the
    probe's, which writes its own); without them `phases:` is required.

    Raises:
        ConfigError: naming the YAML path of the culprit, for a missing file, malformed
            YAML (a key twice in one mapping, aliases expanding past 100,000 values), an
            unknown key, a wrong type or value, a missing data path, or an output
            folder that cannot be written.

    Imports no Keras: the phases' plans and `early_stopping` arguments are checked by
    `preflight.check_config`.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path!r}")
    with open(path, "rb") as f:
        data = f.read(MAX_YAML_BYTES + 1)
    # Bounded: aliases may not expand past MAX_YAML_NODES values; duplicate keys are refused.
    raw = load_yaml(decode_yaml(data, error=ConfigError, what="config"), error=ConfigError, what="", aliases=True)
    if not isinstance(raw, dict):
        raise ConfigError(f"expected a mapping of settings at the top level; received {type(raw).__name__}")
    if default_phases is not None and "phases" not in raw:
        raw = {**raw, "phases": default_phases}
    try:
        config = TrainConfig.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        where = f"{_location(first['loc'])}: " if first["loc"] else ""  # a check of the whole names its place
        raise ConfigError(f"{where}{_message(first)}") from None
    folder = os.path.dirname(os.path.abspath(path))
    resolve = lambda p: p if p is None or os.path.isabs(p) else os.path.join(folder, p)  # noqa: E731
    data = config.data.model_copy(update={"npz": resolve(config.data.npz), "images": resolve(config.data.images)})
    base = config.base.model_copy(update={"keras": resolve(config.base.keras)})
    if base.weights not in ("imagenet", "none"):
        base = base.model_copy(update={"weights": resolve(base.weights)})
    config = config.model_copy(update={"data": data, "base": base, "output": resolve(config.output)})
    for field, value in (("data.npz", data.npz), ("base.keras", base.keras)):
        if value is not None and os.path.isdir(value):
            raise ConfigError(f"{field}: expected a file, received a directory: {value!r}")
        if value is not None and not os.path.isfile(value):
            raise ConfigError(f"{field}: file not found: {value!r}")
    _check_output(config.output, path)
    if data.images is not None and not os.path.isdir(data.images):
        raise ConfigError(f"data.images: folder not found: {data.images!r}")
    if base.weights not in ("imagenet", "none") and not os.path.isfile(base.weights):
        raise ConfigError(f"base.weights: file not found: {base.weights!r} (expected imagenet, none or a weights file)")
    return config
