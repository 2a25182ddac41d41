"""What `fl.probe` measured: a row per cut, the best one, a table and a plot."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

__all__ = ["ProbeResult"]


def _count(n: int) -> str:
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= size:
            return f"{n / size:.1f}{suffix}"
    return str(n)


@dataclasses.dataclass
class ProbeResult:
    """The linear probe's score at each cut, input side first.

    Attributes:
        rows: A dict per cut: `cut` (the layer path), `layer` (its class), `features`
            (pooled width), `frozen_params` (parameters of the layers the cut's output is
            computed from), `frozen_fraction` (of the model's), `score` (validation
            accuracy, or R² for regression), `loss` (validation cross-entropy or mean
            squared error), `freeze` (selectors naming exactly the frozen layers), `in_base`
            (whether they are all in `base`) and `whole_base` (whether all of `base` is).
        metric: `"accuracy"` or `"r2"`.
        model: The model's name.
        base: Selectors of the pretrained part (the largest nested model, else what the
            deepest cut freezes): what the head phase of `schedules.from_probe` freezes.
        train_samples, validation_samples: Samples in each pass.
        epochs: The heads' epochs.
        seconds: `{"pass": ..., "heads": ...}`: the pass of the data through the model
            (both sets) and the heads' training and scoring.
        on_disk: Whether the features went to files (above `memory_limit`).
    """

    rows: list[dict[str, Any]]
    metric: str
    model: str
    base: list[str]
    train_samples: int
    validation_samples: int
    epochs: int
    seconds: dict[str, float]
    on_disk: bool = False

    @property
    def best(self) -> dict[str, Any]:
        """The row with the highest score; between equal scores, the deeper cut (fewer
        parameters left to train)."""
        return max(enumerate(self.rows), key=lambda item: (item[1]["score"], item[0]))[1]

    def __repr__(self) -> str:
        best = self.best
        return (f"ProbeResult(model={self.model!r}, cuts={len(self.rows)}, best={best['cut']!r}, "
                f"{self.metric}={best['score']:.3f})")

    def __str__(self) -> str:
        best = self.best
        width = max(len("cut"), *(len(r["cut"]) for r in self.rows))
        lines = [f"{'cut':<{width}}  {'features':>8}  {'frozen params':>13}  {self.metric:>8}",
                 f"{'-' * width}  {'-' * 8}  {'-' * 13}  {'-' * 8}"]
        for row in self.rows:
            frozen = f"{_count(row['frozen_params'])} ({row['frozen_fraction']:.0%})"
            mark = "  <- best" if row is best else ""
            lines.append(f"{row['cut']:<{width}}  {row['features']:>8}  {frozen:>13}  {row['score']:>8.3f}{mark}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Everything above as plain Python values (for JSON or YAML)."""
        return {"model": self.model, "metric": self.metric, "best": self.best["cut"], "base": list(self.base),
                "train_samples": self.train_samples, "validation_samples": self.validation_samples,
                "epochs": self.epochs, "seconds": dict(self.seconds), "on_disk": self.on_disk,
                "rows": [dict(row, freeze=list(row["freeze"])) for row in self.rows]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProbeResult:
        """The inverse of `to_dict`."""
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})

    def plot(self, path: str | os.PathLike[str]) -> str:
        """Writes the score against depth, the best cut marked and the frozen parameters on
        a second axis, as a PNG; returns the path."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        depth = list(range(len(self.rows)))
        scores = [row["score"] for row in self.rows]
        best = self.rows.index(self.best)
        fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(self.rows) + 3), 4.5), layout="constrained")
        ax.plot(depth, scores, "o-", color="tab:blue", label=f"probe {self.metric}")
        ax.plot([best], [scores[best]], "*", color="tab:red", markersize=16, label=f"best: {self.rows[best]['cut']}")
        ax.set_ylabel(f"validation {self.metric}")
        ax.set_xticks(depth, [row["cut"].rsplit("/", 1)[-1] for row in self.rows], rotation=60, ha="right",
                      fontsize=8)
        ax.set_xlabel("cut (input side first)")
        frozen = ax.twinx()
        frozen.bar(depth, [row["frozen_params"] for row in self.rows], color="tab:gray", alpha=0.25,
                   label="frozen parameters")
        frozen.set_ylabel("frozen parameters")
        ax.set_zorder(frozen.get_zorder() + 1)
        ax.patch.set_visible(False)
        handles = ax.get_legend_handles_labels()[0] + frozen.get_legend_handles_labels()[0]
        ax.legend(handles=handles, loc="best", fontsize=8)
        ax.set_title(f"Linear probe per cut: {self.model} ({self.train_samples} training, "
                     f"{self.validation_samples} validation samples)")
        path = os.fspath(path)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path
