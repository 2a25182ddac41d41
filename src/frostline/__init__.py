"""frostline: transfer learning for Keras 3 where freezing is a plan, not a pile of flags."""

from frostline import _backend

_backend.choose_default_backend()

from frostline.apply.apply import apply, scoped, sync  # noqa: E402
from frostline.inspect.audit import FreezeAudit, Fingerprint, fingerprint  # noqa: E402
from frostline.cache.policy import FrostSplit, NotCacheable, frost_split  # noqa: E402
from frostline.train.checkpoint import CheckpointError  # noqa: E402
from frostline.app.config import ConfigError  # noqa: E402
from frostline.train.distribute import data_parallel  # noqa: E402
from frostline.errors import FrozenWeightsChanged, PlanError, StaleTrainableError  # noqa: E402
from frostline.apply.guard import FreezeGuard  # noqa: E402
from frostline.train import schedules  # noqa: E402
from frostline.train.runner import FineTune, Phase, PhaseSchedule  # noqa: E402
from frostline.plan.plan import (  # noqa: E402
    Freeze,
    Inference,
    LayerDecision,
    LearningRate,
    Plan,
    Resolution,
    Rule,
    RuleMatch,
    Unfreeze,
    VariableDecision,
    register_rule,
    resolve,
)
from frostline.inspect.report import LayerRow, Report, report  # noqa: E402
from frostline.inspect.saving import applied_plan, load_model, load_plan  # noqa: E402
from frostline.plan.selectors import Selector, parse_selector  # noqa: E402
from frostline.model.tree import LayerNode, LayerTree  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ConfigError",
    "FineTune",
    "Fingerprint",
    "Freeze",
    "FreezeAudit",
    "FreezeGuard",
    "FrostSplit",
    "FrozenWeightsChanged",
    "Inference",
    "LayerDecision",
    "LayerNode",
    "LayerRow",
    "LayerTree",
    "LearningRate",
    "NotCacheable",
    "Phase",
    "PhaseSchedule",
    "Plan",
    "PlanError",
    "Report",
    "Resolution",
    "Rule",
    "RuleMatch",
    "Selector",
    "StaleTrainableError",
    "Unfreeze",
    "VariableDecision",
    "applied_plan",
    "apply",
    "data_parallel",
    "fingerprint",
    "frost_split",
    "load_model",
    "load_plan",
    "parse_selector",
    "register_rule",
    "report",
    "resolve",
    "schedules",
    "scoped",
    "sync",
]
