"""Report: what is frozen in a model, as a tree table, markdown or plain data."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import keras

from frostline.model.adapters import adapter_variables, lora_rank
from frostline.model.modes import layer_mode
from frostline.model.tree import LayerNode, LayerTree, variable_size

if TYPE_CHECKING:
    from frostline.plan.resolve import Resolution

__all__ = ["LayerRow", "Report", "report"]


@dataclasses.dataclass(frozen=True)
class LayerRow:
    """One layer of a Report.

    `params` and `trainable_params` count the layer and everything inside it. `state`
    is `"trainable"`, `"frozen"`, `"partial"` (a container with both inside) or `"-"`
    (no parameters). `mode` is how the layer runs inside `fit`: `"training"`,
    `"inference"` (frozen BatchNormalization, or an `inference` rule) or `"-"` (the
    layer behaves the same either way). `lr` is the learning-rate multiplier of the
    layer's weights (`"x0.1"`), `"mixed"` for a container whose layers differ, `"-"`
    without trainable-capable weights. `lora` is `"r8 · 1,024"` for a layer with LoRA
    adapters of rank 8 holding 1,024 parameters (counted in `params` too), `"-"` otherwise.
    """

    path: str
    name: str
    class_name: str
    depth: int
    params: int
    trainable_params: int
    state: str
    mode: str
    lr: str
    also_at: tuple[str, ...]
    lora: str = "-"


@dataclasses.dataclass(frozen=True)
class RuleSummary:
    """What one rule of the applied plan matched."""

    index: int
    rule: str
    layers: int
    params: int


def _lr_label(multipliers: set[float]) -> str:
    if not multipliers:
        return "-"
    if len(multipliers) > 1:
        return "mixed"
    return f"x{next(iter(multipliers)):g}"


def _lora_label(layer) -> str:
    rank = lora_rank(layer)
    if rank is None:
        return "-"
    return f"r{rank} · {sum(variable_size(v) for v in adapter_variables(layer)):,}"


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def _state(capable: list, trainable_ids: set[int], has_params: bool) -> str:
    if not has_params:
        return "-"
    trainable = sum(id(v) in trainable_ids for v in capable)
    if trainable == 0:
        return "frozen"
    return "trainable" if trainable == len(capable) else "partial"


class Report:
    """What is frozen in a model. `str(report)` is a tree table ending in a totals line.

    Totals are Keras's own: the sums over `model.trainable_weights` and
    `model.non_trainable_weights`. Optimizer variables are reported apart, never in
    the totals.

    Args:
        tree: `LayerTree(model)`, read as the model is now.
        resolution: The `Resolution` that was applied, for the per-rule summary.
            Defaults to None.
    """

    def __init__(self, tree: LayerTree, resolution: Resolution | None = None):
        model = tree.model
        self.model_name: str = model.name
        trainable_ids = tree.effective_trainable_ids()
        self.rows: list[LayerRow] = [self._row(node, trainable_ids, tree) for node in tree]
        self.has_lr_multipliers = any(r.lr not in ("x1", "-") for r in self.rows)
        self.has_adapters = any(r.lora != "-" for r in self.rows)
        self.trainable_params = sum(variable_size(v) for v in model.trainable_weights)
        self.frozen_params = sum(variable_size(v) for v in model.non_trainable_weights)
        self.total_params = self.trainable_params + self.frozen_params
        self.optimizer = _optimizer_summary(model)
        self.rules: list[RuleSummary] = []
        if resolution is not None:
            self.rules = [
                RuleSummary(m.index + 1, m.rule.describe(), len(m.layers), m.params)
                for m in resolution.matches
            ]

    @staticmethod
    def _row(node: LayerNode, trainable_ids: set[int], tree: LayerTree) -> LayerRow:
        inside = list(node.descendants())
        variables = [v for n in inside for v in n.variables]
        capable = [v for n in inside for v in n.weights]
        params = sum(variable_size(v) for v in variables)
        return LayerRow(
            path=node.path or node.name,
            name=node.name,
            class_name=node.class_name,
            depth=node.depth,
            params=params,
            trainable_params=sum(variable_size(v) for v in capable if id(v) in trainable_ids),
            state=_state(capable, trainable_ids, params > 0),
            mode=layer_mode(node.layer, inside=node.containers),
            lr=_lr_label({tree.lr_multiplier(v) for v in capable}),
            also_at=tuple(node.paths[1:]),
            lora=_lora_label(node.layer),
        )

    @property
    def totals_line(self) -> str:
        """E.g. `trainable 1,234 (3.1%) · frozen 38,000 · total 39,234`."""
        share = 100.0 * self.trainable_params / self.total_params if self.total_params else 0.0
        return (
            f"trainable {self.trainable_params:,} ({share:.1f}%) · "
            f"frozen {self.frozen_params:,} · total {self.total_params:,}"
        )

    def _table(self, max_depth: int | None, *, markdown: bool = False) -> list[list[str]]:
        header = ["layer", "class", "params", "trainable", "state", "mode"]
        header += ["lr"] if self.has_lr_multipliers else []
        rows = [header + ["lora"] if self.has_adapters else header]
        for row in self.rows:
            if max_depth is not None and row.depth > max_depth:
                continue
            quote = (lambda p: f"`{p}`") if markdown else (lambda p: p)
            label = ("&nbsp;&nbsp;" if markdown else "  ") * row.depth + quote(row.path)
            if row.also_at:
                label += "  (shared, also " + ", ".join(quote(p) for p in row.also_at) + ")"
            cells = [label, row.class_name, f"{row.params:,}", f"{row.trainable_params:,}", row.state, row.mode]
            cells += [row.lr] if self.has_lr_multipliers else []
            rows.append(cells + [row.lora] if self.has_adapters else cells)
        return rows

    def to_string(self, *, max_depth: int | None = None) -> str:
        """The tree table, optionally down to `max_depth` (0 is the model alone).

        Args:
            max_depth: Deepest level shown; deeper layers still count in their
                containers' rows. Defaults to None (every layer).
        """
        table = self._table(max_depth)
        widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
        right = {2, 3}
        lines = []
        for k, r in enumerate(table):
            cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
            lines.append("  ".join(cells).rstrip())
            if k == 0:
                lines.append("-" * len(lines[0]))
        lines.append("-" * len(lines[0]))
        if self.rules:
            lines.append(self._rules_text())
        if self.optimizer:
            lines.append(
                f"optimizer {self.optimizer['name']}: {self.optimizer['params']:,} state "
                "values (not model parameters, not in the totals)"
            )
        lines.append(self.totals_line)
        return "\n".join(lines)

    def _rules_text(self) -> str:
        width = max(len(r.rule) for r in self.rules)
        out = ["rules (layers and parameters each matched, containers included):"]
        for r in self.rules:
            out.append(f"  {r.index}. {r.rule.ljust(width)}  {_count(r.layers, 'layer')}, {_count(r.params, 'param')}")
        return "\n".join(out)

    def __str__(self) -> str:
        return self.to_string()

    def __repr__(self) -> str:
        return f"<Report {self.model_name}: {self.totals_line}>"

    def to_markdown(self) -> str:
        """The tree table as a GitHub-flavoured markdown table plus the totals."""
        table = self._table(None, markdown=True)
        align = ["---", "---", "--:", "--:", "---", "---"] + ["--:"] * (len(table[0]) - 6)
        lines = ["| " + " | ".join(table[0]) + " |", "|" + "|".join(align) + "|"]
        lines += ["| " + " | ".join(cells) + " |" for cells in table[1:]]
        if self.rules or self.optimizer:
            lines.append("")
        for r in self.rules:
            lines.append(f"- rule {r.index} `{r.rule}`: {_count(r.layers, 'layer')}, {_count(r.params, 'param')}")
        if self.optimizer:
            lines.append(
                f"- optimizer {self.optimizer['name']}: {self.optimizer['params']:,} state "
                "values (not model parameters)"
            )
        lines.append("")
        lines.append(f"**{self.totals_line}**")
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        """The report as plain data (JSON-serialisable)."""
        return {
            "model": self.model_name,
            "layers": [dataclasses.asdict(r) | {"also_at": list(r.also_at)} for r in self.rows],
            "totals": {
                "trainable": self.trainable_params,
                "frozen": self.frozen_params,
                "total": self.total_params,
            },
            "optimizer": self.optimizer,
            "rules": [dataclasses.asdict(r) for r in self.rules],
        }


def _optimizer_summary(model: keras.layers.Layer) -> dict[str, Any] | None:
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None or not getattr(optimizer, "built", False):
        return None
    return {
        "name": type(optimizer).__name__,
        "params": sum(variable_size(v) for v in optimizer.variables),
    }


def report(model: keras.layers.Layer) -> Report:
    """The Report of a model as it is now.

    Args:
        model: A Keras model or layer.

    Returns:
        A `Report`; `print(report)` shows the tree table and the totals.

    Example:

    >>> import keras, frostline as fl
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="d")])
    >>> print(fl.report(model).totals_line)
    trainable 10 (100.0%) · frozen 0 · total 10
    """
    return Report(LayerTree(model))
