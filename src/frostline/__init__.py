"""frostline: transfer learning for Keras 3 where freezing is a plan, not a pile of flags."""

from frostline import _backend

_backend.choose_default_backend()

from frostline import _keras  # noqa: E402

_keras.check_version()

from frostline.apply.adapters import load_adapters, merge_adapters, save_adapters  # noqa: E402
from frostline.apply.apply import apply, scoped  # noqa: E402
from frostline.apply.guard import FreezeGuard  # noqa: E402
from frostline.apply.learning_rate import PhaseSchedule  # noqa: E402
from frostline.apply.loading import load_model  # noqa: E402
from frostline.apply.sync import sync  # noqa: E402
from frostline.cache.split import FrostSplit, frost_split  # noqa: E402
from frostline.errors import (  # noqa: E402
    BackendUnavailable,
    CheckpointError,
    ConfigError,
    DistributionError,
    FrostlineError,
    FrostlineTypeError,
    FrostlineValueError,
    FrozenWeightsChanged,
    MissingFileError,
    NoStoredPlan,
    NotCacheable,
    PlanError,
    SharedLayerError,
    StaleTrainableError,
    StorageError,
    TrainableSetMismatch,
)
from frostline.inspect.audit import FreezeAudit, Fingerprint, fingerprint  # noqa: E402
from frostline.inspect.report import LayerRow, Report, report  # noqa: E402
from frostline.inspect.saving import applied_plan, load_plan  # noqa: E402
from frostline.model.tree import LayerNode, LayerTree  # noqa: E402
from frostline.plan.plan import Plan  # noqa: E402
from frostline.plan.resolve import LayerDecision, Resolution, RuleMatch, VariableDecision, resolve  # noqa: E402
from frostline.plan.rules import Freeze, Inference, LearningRate, Lora, Rule, Unfreeze, register_rule  # noqa: E402
from frostline.plan.selectors import Selector, VariableSelector, parse_selector  # noqa: E402
from frostline.train import schedules  # noqa: E402
from frostline.train.distribute import data_parallel  # noqa: E402
from frostline.train.phase import Phase, PhaseInfo  # noqa: E402
from frostline.train.runner import FineTune  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailable",
    "CheckpointError",
    "ConfigError",
    "DistributionError",
    "FineTune",
    "Fingerprint",
    "Freeze",
    "FreezeAudit",
    "FreezeGuard",
    "FrostSplit",
    "FrostlineError",
    "FrostlineTypeError",
    "FrostlineValueError",
    "FrozenWeightsChanged",
    "MissingFileError",
    "Inference",
    "LayerDecision",
    "LayerNode",
    "LayerRow",
    "LayerTree",
    "LearningRate",
    "Lora",
    "NoStoredPlan",
    "NotCacheable",
    "Phase",
    "PhaseInfo",
    "PhaseSchedule",
    "Plan",
    "PlanError",
    "Report",
    "Resolution",
    "Rule",
    "RuleMatch",
    "Selector",
    "SharedLayerError",
    "StaleTrainableError",
    "StorageError",
    "TrainableSetMismatch",
    "Unfreeze",
    "VariableDecision",
    "VariableSelector",
    "applied_plan",
    "apply",
    "data_parallel",
    "fingerprint",
    "frost_split",
    "load_adapters",
    "load_model",
    "load_plan",
    "parse_selector",
    "merge_adapters",
    "register_rule",
    "report",
    "resolve",
    "save_adapters",
    "schedules",
    "scoped",
    "sync",
]
