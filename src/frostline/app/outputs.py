"""`report.md` of a `frostline train` run: each phase's epochs, totals and metrics (final,
best and the epoch of the best), then the trained model's report."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

import keras

from frostline.app.history_summary import MetricSummary, metric_modes, phase_summaries
from frostline.inspect.report import Report, report

__all__ = ["report_markdown", "write_report"]


def _number(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:.4g}"


def _best(metric: MetricSummary) -> str:
    if metric.best is None:
        return "-"
    return f"{_number(metric.best)} ({metric.mode})"


def report_markdown(model: keras.Model, history: keras.callbacks.History, reports: Mapping[str, Report]) -> str:
    """The text of `report.md`.

    Args:
        model: The trained model.
        history: The History of `FineTune.fit`, with `history.phases`.
        reports: Phase name to the Report taken when the phase began (`FineTune.reports`).
    """
    modes = metric_modes(model, history.history)
    summaries = phase_summaries(history, modes)
    lines = [f"# {model.name}", ""]
    for phase in summaries:
        totals = reports[phase.name].totals_line if phase.name in reports else ""
        lines.append(f"- phase **{phase.name}**: epochs {phase.first_epoch}-{phase.last_epoch}"
                     + (f", {totals}" if totals else ""))
    lines += ["", "## Metrics", "",
              "Per phase: the value at the phase's last epoch, the best value (lowest for a loss, "
              "highest for accuracy: the rule of Keras's `EarlyStopping(mode=\"auto\")`) and the epoch "
              "of the best, counted from 1 across the run.", ""]
    for phase in summaries:
        lines += [f"### {phase.name} (epochs {phase.first_epoch}-{phase.last_epoch})", "",
                  "| metric | final | best | best epoch |", "|---|--:|--:|--:|"]
        for metric in phase.metrics:
            epoch = "-" if metric.best_epoch is None else str(metric.best_epoch)
            lines.append(f"| `{metric.name}` | {_number(metric.final)} | {_best(metric)} | {epoch} |")
        lines.append("")
    lines += ["## After training", "", report(model).to_markdown()]
    return "\n".join(lines) + "\n"


def write_report(model: keras.Model, history: keras.callbacks.History, reports: Mapping[str, Report],
                 path: str | os.PathLike[str]) -> str:
    """Writes `report_markdown(model, history, reports)` to `path`; returns the path."""
    with open(path, "w") as f:
        f.write(report_markdown(model, history, reports))
    return os.fspath(path)
