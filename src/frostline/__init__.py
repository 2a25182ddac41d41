"""frostline: transfer learning for Keras 3 where freezing is a plan, not a pile of flags."""

from frostline import _backend

_backend.choose_default_backend()

from frostline.apply import apply  # noqa: E402
from frostline.errors import PlanError  # noqa: E402
from frostline.plan import (  # noqa: E402
    Freeze,
    LayerDecision,
    Plan,
    Resolution,
    Rule,
    RuleMatch,
    Unfreeze,
    VariableDecision,
    register_rule,
    resolve,
)
from frostline.report import LayerRow, Report, report  # noqa: E402
from frostline.selectors import Selector, parse_selector  # noqa: E402
from frostline.tree import LayerNode, LayerTree  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "Freeze",
    "LayerDecision",
    "LayerNode",
    "LayerRow",
    "LayerTree",
    "Plan",
    "PlanError",
    "Report",
    "Resolution",
    "Rule",
    "RuleMatch",
    "Selector",
    "Unfreeze",
    "VariableDecision",
    "apply",
    "parse_selector",
    "register_rule",
    "report",
    "resolve",
]
