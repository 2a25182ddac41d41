"""Pictures of a run: the history with its phases, and the frost line of every phase."""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # headless: files only

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from frostline.app.history_summary import metric_modes  # noqa: E402
from frostline.inspect.report import LayerRow, Report  # noqa: E402

__all__ = ["LayerGroup", "layer_groups", "plot_frost_lines", "plot_history"]

_PHASE_COLORS = ("#dbe9f6", "#fde6cf", "#e2f0d9", "#eadcf0", "#f7f3c6")
_STATE_COLORS = {"frozen": "#6baed6", "trainable": "#fd8d3c", "partial": "#fdd0a2"}
_FROST = "#08306b"


def _lr_text(rate) -> str:
    if rate is None:
        return "lr as before"
    return f"lr {rate:g}" if isinstance(rate, (int, float)) else f"lr {type(rate).__name__}"


def _phase_rates(history, phases) -> dict[str, str]:
    """Phase name to its learning rate as text: from the phases, else from a logged
    `learning_rate`, else nothing."""
    if phases is not None:
        return {p.name: _lr_text(p.learning_rate) for p in phases}
    logged = history.history.get("learning_rate")
    if logged is None:
        return {}
    out = {}
    for phase in getattr(history, "phases", []):
        rows = [i for i, e in enumerate(history.epoch) if e == phase["start_epoch"]]
        if rows:
            out[phase["name"]] = _lr_text(float(logged[rows[0]]))
    return out


def plot_history(history, path: str | os.PathLike[str], *, phases: Sequence | None = None,
                 title: str | None = None) -> str:
    """Loss and metrics against epoch: each phase a shaded band labelled with its name and
    learning rate, dashed lines where phases begin, and each metric's best epoch marked
    (lowest loss, highest accuracy: see `metric_modes`).

    Args:
        history: The History from `FineTune.fit` (with `history.phases`).
        path: Where to write the PNG.
        phases: The run's `Phase`s, for their learning rates. Defaults to None: a
            logged `learning_rate`, if any.
        title: The figure's title. Defaults to None: the phases and epochs run.

    Returns:
        The path written.
    """
    logs = history.history
    metrics = sorted((k for k in logs if not k.startswith("val_") and k != "learning_rate"), key=lambda k: k != "loss")
    modes = metric_modes(getattr(history, "model", None), logs)
    run_phases = list(getattr(history, "phases", []))
    rates = _phase_rates(history, phases)
    cols = min(2, max(1, len(metrics)))
    rows = math.ceil(max(1, len(metrics)) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.8 * cols, 3.6 * rows + 0.9), squeeze=False)
    epochs = [e + 1 for e in history.epoch]
    for ax in axes.flat[len(metrics):]:
        ax.set_visible(False)
    for ax, name in zip(axes.flat, metrics):
        for i, phase in enumerate(run_phases):
            start, end = phase["start_epoch"] + 0.5, phase["start_epoch"] + phase["epochs"] + 0.5
            ax.axvspan(start, end, color=_PHASE_COLORS[i % len(_PHASE_COLORS)], zorder=0)
            if i:
                ax.axvline(start, color="#555555", linestyle="--", linewidth=1, zorder=1)
            label = phase["name"] + (f"\n{rates[phase['name']]}" if phase["name"] in rates else "")
            ax.text((start + end) / 2, 1.01, label, transform=ax.get_xaxis_transform(),
                    ha="center", va="bottom", fontsize=8)
        keys = [key for key in (name, f"val_{name}") if key in logs]
        for key in keys:
            ax.plot(epochs, logs[key], marker="o", markersize=3, label=key)
        for key in keys:
            _mark_best(ax, epochs, logs[key], modes.get(key))
        ax.set_ylabel(name)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
        ax.xaxis.get_major_locator().set_params(integer=True)
    if title is None:
        names = ", ".join(p["name"] for p in run_phases)
        title = f"training history: {len(epochs)} epochs" + (f" in phases {names}" if names else "")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return os.fspath(path)


def _mark_best(ax, epochs: list[int], values: list[float], mode: str | None) -> None:
    known = [(v, e) for v, e in zip(values, epochs) if not math.isnan(v)]
    if mode is None or not known:
        return
    value, epoch = (min if mode == "min" else max)(known, key=lambda pair: pair[0])
    low, high = ax.get_ylim()
    above = value < (low + high) / 2  # the label on the side with room, inside the axes
    ax.plot([epoch], [value], marker="*", markersize=13, color="#b30000", zorder=5, linestyle="none")
    ax.annotate(f"best {value:.4g}\nepoch {epoch}", (epoch, value), textcoords="offset points",
                xytext=(7, 6 if above else -6), va="bottom" if above else "top", fontsize=7, color="#b30000")


@dataclasses.dataclass(frozen=True)
class LayerGroup:
    """Consecutive layers drawn as one bar: `label`, the `paths` of its layers."""

    label: str
    paths: tuple[str, ...]


_NUMBERED = re.compile(r"^(\D*?\d+[a-z]?)(?=_|$)")


def _group_key(name: str) -> str:
    # block_3_expand_BN -> block_3, conv4_block2_out -> conv4, expanded_conv_project -> expanded_conv
    numbered = _NUMBERED.match(name)
    if numbered:
        return numbered.group(1)
    parts = name.split("_")
    return "_".join(parts[:2]) if len(parts) > 2 else name


def layer_groups(report: Report, *, max_depth: int = 2) -> list[LayerGroup]:
    """The layers with parameters, down to `max_depth`, input first, with consecutive
    layers of one container whose names share a block prefix (`block_3_*`, `conv4_*`,
    `expanded_conv_*`) in one group.

    Args:
        report: A Report of the model.
        max_depth: Deepest layers shown (containers above them are summed). Defaults to 2.
    """
    leaves = [r for r in report.rows if 0 < r.depth <= max_depth and r.params > 0
              and not _has_child_row(report, r, max_depth)]
    groups: list[tuple[str, str, list[str]]] = []  # (container, key, paths)
    for row in leaves:
        container, _, name = row.path.rpartition("/")
        key = _group_key(name)
        if groups and groups[-1][0] == container and groups[-1][1] == key:
            groups[-1][2].append(row.path)
        else:
            groups.append((container, key, [row.path]))
    return [LayerGroup(f"{key}_*" if len(paths) > 1 else paths[0].rpartition("/")[2], tuple(paths))
            for _, key, paths in groups]


def _group_state(rows: Sequence[LayerRow]) -> str:
    states = {r.state for r in rows if r.state != "-"}
    if states <= {"frozen"}:
        return "frozen"
    if states == {"trainable"}:
        return "trainable"
    return "partial"


def plot_frost_lines(reports: Mapping[str, Report], path: str | os.PathLike[str], *, max_depth: int = 2) -> str:
    """The layer stack from input (left) to output (right), one row per phase: a bar per
    block of layers (see `layer_groups`), its height the block's parameters (log scale)
    and its colour whether it is frozen, trainable or partly frozen in that phase, and the
    frost line: the boundary left of which everything is frozen.

    Args:
        reports: Phase name to the Report taken when the phase began (`FineTune.reports`).
        path: Where to write the PNG.
        max_depth: Deepest layers drawn (containers above them are summed). Defaults to 2.

    Returns:
        The path written.
    """
    names = list(reports)
    groups = layer_groups(reports[names[0]], max_depth=max_depth)
    width = max(8.0, 0.34 * len(groups) + 3.0)
    fig, axes = plt.subplots(len(names), 1, figsize=(width, 1.6 * len(names) + 2.6), sharex=True, squeeze=False)
    xs = range(len(groups))
    for ax, name in zip(axes[:, 0], names):
        by_path = {r.path: r for r in reports[name].rows}
        members = [[by_path[p] for p in g.paths if p in by_path] for g in groups]
        states = [_group_state(m) if m else "frozen" for m in members]
        params = [sum(r.params for r in m) for m in members]
        ax.bar(xs, params, width=0.8, color=[_STATE_COLORS[s] for s in states], edgecolor="#444444", linewidth=0.4)
        ax.set_yscale("log")
        frozen_prefix = next((i for i, s in enumerate(states) if s != "frozen"), len(states))
        if frozen_prefix:
            ax.axvline(frozen_prefix - 0.5, color=_FROST, linewidth=2.5)
        ax.set_title(f"{name}: {reports[name].totals_line}", fontsize=9, loc="left")
        ax.set_ylabel("params", fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(axis="y", alpha=0.3)
    bottom = axes[-1, 0]
    bottom.set_xticks(list(xs), [g.label for g in groups], rotation=50, ha="right", rotation_mode="anchor", fontsize=8)
    bottom.set_xlim(-0.6, len(groups) - 0.4)
    fig.suptitle("frost line per phase: layers from input (left) to output (right), bar height = parameters",
                 fontsize=10)
    fig.legend(handles=[Patch(color=c, label=s) for s, c in _STATE_COLORS.items()]
               + [Patch(color=_FROST, label="frost line")], loc="upper center", ncol=4, fontsize=8,
               bbox_to_anchor=(0.5, 0.95), frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.91))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return os.fspath(path)


def _has_child_row(report: Report, row, max_depth: int) -> bool:
    if row.depth >= max_depth:
        return False
    prefix = row.path + "/"
    return any(r.path.startswith(prefix) and r.params > 0 for r in report.rows)
