"""Pictures of a run: the history with its phases, and the frost line of every phase."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

import matplotlib

matplotlib.use("Agg")  # headless: files only

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from frostline.inspect.report import Report  # noqa: E402

__all__ = ["plot_frost_lines", "plot_history"]

_PHASE_COLORS = ("#dbe9f6", "#fde6cf", "#e2f0d9", "#eadcf0", "#f7f3c6")
_STATE_COLORS = {"frozen": "#9ecae1", "trainable": "#fd8d3c", "partial": "#fdd0a2"}


def plot_history(history, path: str | os.PathLike[str]) -> str:
    """Loss and metrics against epoch, each phase a shaded, labelled band.

    Args:
        history: The History from `FineTune.fit` (with `history.phases`).
        path: Where to write the PNG.

    Returns:
        The path written.
    """
    logs = history.history
    metrics = [k for k in logs if not k.startswith("val_") and k != "learning_rate"]
    fig, axes = plt.subplots(len(metrics), 1, figsize=(8, 2.6 * len(metrics) + 0.6), sharex=True, squeeze=False)
    epochs = [e + 1 for e in history.epoch]
    for ax, name in zip(axes[:, 0], metrics):
        for i, phase in enumerate(getattr(history, "phases", [])):
            start, end = phase["start_epoch"] + 0.5, phase["start_epoch"] + phase["epochs"] + 0.5
            ax.axvspan(start, end, color=_PHASE_COLORS[i % len(_PHASE_COLORS)], zorder=0)
            if ax is axes[0, 0]:
                ax.text((start + end) / 2, 1.02, phase["name"], transform=ax.get_xaxis_transform(),
                        ha="center", va="bottom", fontsize=9)
        ax.plot(epochs, logs[name], marker="o", label=name)
        if f"val_{name}" in logs:
            ax.plot(epochs, logs[f"val_{name}"], marker="o", label=f"val_{name}")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    axes[-1, 0].set_xlabel("epoch")
    axes[-1, 0].xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return os.fspath(path)


def plot_frost_lines(reports: Mapping[str, Report], path: str | os.PathLike[str], *, max_depth: int = 2) -> str:
    """The layer stack, input at the bottom, with each phase's frozen and trainable
    layers and its frost line: the boundary below which everything is frozen.

    Args:
        reports: Phase name to the Report taken when the phase began (`FineTune.reports`).
        path: Where to write the PNG.
        max_depth: Deepest layers drawn (containers above them are summed). Defaults to 2.

    Returns:
        The path written.
    """
    names = list(reports)
    first = reports[names[0]]
    rows = [r for r in first.rows if 0 < r.depth <= max_depth and r.params > 0 and not _has_child_row(first, r, max_depth)]
    paths = [r.path for r in rows]
    height = max(3.0, 0.22 * len(paths) + 1.5)
    fig, ax = plt.subplots(figsize=(2.0 + 1.6 * len(names), height))
    for x, name in enumerate(names):
        states = {r.path: r.state for r in reports[name].rows}
        frozen_below = -1
        for y, p in enumerate(paths):
            state = states.get(p, "frozen")
            ax.add_patch(plt.Rectangle((x + 0.1, y), 0.8, 0.9, color=_STATE_COLORS.get(state, "#dddddd")))
            if state == "frozen" and frozen_below == y - 1:
                frozen_below = y
        if frozen_below >= 0:
            ax.plot([x + 0.02, x + 0.98], [frozen_below + 0.95] * 2, color="#08306b", linewidth=2.5)
    ax.set_xlim(0, len(names))
    ax.set_ylim(0, len(paths))
    ax.set_xticks([i + 0.5 for i in range(len(names))], names)
    step = max(1, math.ceil(len(paths) / 40))
    ax.set_yticks([y + 0.45 for y in range(0, len(paths), step)], paths[::step], fontsize=7)
    ax.set_title("frost line per phase (input at the bottom)", fontsize=10)
    ax.legend(handles=[Patch(color=c, label=s) for s, c in _STATE_COLORS.items()]
              + [Patch(color="#08306b", label="frost line")], loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return os.fspath(path)


def _has_child_row(report: Report, row, max_depth: int) -> bool:
    if row.depth >= max_depth:
        return False
    prefix = row.path + "/"
    return any(r.path.startswith(prefix) and r.params > 0 for r in report.rows)
