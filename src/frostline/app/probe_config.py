"""The `probe:` section of a `frostline train` configuration, read by `frostline probe`.

```yaml
probe:
  cuts: auto                      # or a list of selectors: [base/block_6_project_BN, ...]
  epochs: 20                      # the linear heads' epochs
  learning_rate: 0.01             # the heads' Adam
  schedule:                       # the arguments of fl.schedules.from_probe
    head_epochs: 10
    finetune_epochs: 10
    head_learning_rate: 0.001
    finetune_learning_rate: 0.0001
    gradual: false
```

Every key is optional; unknown keys are errors, and so are booleans where a number goes.
`frostline train` accepts a configuration with this section and ignores it. Imports no
Keras: the selectors are resolved against the model by `probe_job`.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, field_validator

from frostline.errors import ConfigError


__all__ = ["DESCRIPTION", "HELP", "ProbeSpec", "ScheduleSpec", "check_validation_data"]

HELP = "score a linear probe at every cut of a train config's model; write the schedule it implies"
DESCRIPTION = (
    "Validate CONFIG, a 'frostline train' config with an optional probe: section (nothing runs or is written if "
    "anything is wrong), train a linear head at each cut of its model on the frozen activations, score each on the "
    "validation data, and write the output folder: probe.md, probe.png, probe.json, phases.yaml and train.yaml, "
    "which 'frostline train' runs as it is.")

_Positive = Annotated[StrictInt, Field(gt=0)]
_Rate = Annotated[StrictFloat, Field(gt=0, allow_inf_nan=False)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ScheduleSpec(_Strict):
    """The arguments of `fl.schedules.from_probe`: the phases written to phases.yaml."""

    head_epochs: _Positive = 10
    finetune_epochs: _Positive = 10
    head_learning_rate: _Rate = 1e-3
    finetune_learning_rate: _Rate = 1e-4
    gradual: StrictBool = False


class ProbeSpec(_Strict):
    """What `frostline probe` probes and the schedule it derives."""

    cuts: str | tuple[str, ...] = "auto"
    epochs: _Positive = 20
    learning_rate: _Rate = 1e-2
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)

    @field_validator("cuts", mode="before")
    @classmethod
    def _cuts(cls, value: Any) -> Any:
        example = "e.g. [base/block_6_project_BN, base/block_13_project_BN]"
        if value == "auto":
            return value
        if isinstance(value, str):
            raise ValueError(f"expected auto or a list of layer selectors, {example}; received {value!r}. "
                             f"For one cut write a list: [{value}]")
        if not isinstance(value, (list, tuple)) or not value:
            raise ValueError(f"expected auto or a non-empty list of layer selectors, {example}; received {value!r}")
        for i, selector in enumerate(value):
            if not isinstance(selector, str) or not selector.strip():
                raise ValueError(f"expected each cut to be a layer selector, {example}; cuts[{i}] is {selector!r}")
        return tuple(value)


def check_validation_data(config: Any) -> None:
    """The probe scores its heads on validation data: the `.npz` file's `x_val` and `y_val`,
    or `data.validation_split`. Reads only the `.npz` file's list of arrays.

    Raises:
        ConfigError: when the configuration gives none.
    """
    data = config.data
    if data.validation_split > 0:
        return
    if data.npz is not None:
        import zipfile

        import numpy as np

        if not zipfile.is_zipfile(data.npz):
            return  # load_data says what the file is instead
        with np.load(data.npz, allow_pickle=False) as arrays:
            if "x_val" in arrays.files and "y_val" in arrays.files:
                return
        raise ConfigError(f"data: expected validation data to score the probes on; received {data.npz!r} without "
                          "x_val and y_val, and no validation_split. Add x_val and y_val to the .npz, or set "
                          "data.validation_split, e.g. 0.2")
    raise ConfigError(f"data.validation_split: expected validation data to score the probes on; received the image "
                      f"folder {data.images!r} with validation_split 0. Set data.validation_split, e.g. 0.2")
