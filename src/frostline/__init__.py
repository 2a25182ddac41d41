"""frostline: transfer learning for Keras 3 where freezing is a plan, not a pile of flags."""

from frostline import _backend

__version__ = "0.1.0"

if _backend.defers_keras():
    # The `frostline` command: Keras is imported when a command needs it (`--help` and
    # `--version` do not); then, or at the first public name asked for, this module runs
    # again and imports everything below.
    def __getattr__(name: str) -> object:
        if name not in __all__:
            raise AttributeError(f"module 'frostline' has no attribute {name!r}")
        import importlib
        import sys

        _backend.import_keras()
        importlib.reload(sys.modules[__name__])
        return globals()[name]

else:
    _backend.choose_default_backend()

    from frostline import _keras

    _keras.check_version()

    from frostline.apply.adapters import load_adapters, merge_adapters, save_adapters
    from frostline.apply.apply import apply, scoped
    from frostline.apply.guard import FreezeGuard
    from frostline.apply.learning_rate import PhaseSchedule
    from frostline.apply.loading import load_model
    from frostline.apply.sync import sync
    from frostline.cache.split import FrostSplit, frost_split
    from frostline.errors import (
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
    from frostline.inspect.audit import FreezeAudit, Fingerprint, fingerprint
    from frostline.inspect.report import LayerRow, Report, report
    from frostline.inspect.saving import applied_plan, load_plan
    from frostline.model.tree import LayerNode, LayerTree
    from frostline.plan.plan import Plan
    from frostline.plan.resolve import LayerDecision, Resolution, RuleMatch, VariableDecision, resolve
    from frostline.plan.rules import Freeze, Inference, LearningRate, Lora, Rule, Unfreeze, register_rule
    from frostline.plan.selectors import Selector, VariableSelector, parse_selector
    from frostline.train import schedules
    from frostline.train.distribute import data_parallel
    from frostline.train.phase import Phase, PhaseInfo
    from frostline.train.probe import probe
    from frostline.train.probe_result import ProbeResult
    from frostline.train.runner import FineTune


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
    "ProbeResult",
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
    "probe",
    "merge_adapters",
    "register_rule",
    "report",
    "resolve",
    "save_adapters",
    "schedules",
    "scoped",
    "sync",
]
