"""Ready-made phase lists and learning-rate plans for common fine-tuning recipes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras

from frostline.errors import FrostlineValueError
from frostline.model.tree import LayerTree
from frostline.plan.plan import Plan
from frostline.train.phase import Phase

__all__ = ["from_probe", "gradual_unfreeze", "layerwise_decay", "two_phase"]


def two_phase(
    *,
    base: str,
    head_epochs: int,
    finetune_epochs: int,
    unfreeze: str | Sequence[str] | None = None,
    head_learning_rate: float = 1e-3,
    finetune_learning_rate: float = 1e-5,
) -> list[Phase]:
    """The Keras fine-tuning guide's recipe, as two phases.

    Phase "head" trains the new layers on a frozen `base` that runs in inference mode;
    phase "finetune" unfreezes `unfreeze` (default: the whole base) with a low
    learning rate, the base still in inference mode so BatchNormalization keeps its
    statistics (the guide's `base(x, training=False)`).

    Args:
        base: Selector of the pretrained base, e.g. `"mobilenetv2_1.00_224"`.
        head_epochs: Epochs of the first phase.
        finetune_epochs: Epochs of the second.
        unfreeze: What to unfreeze in the second phase. Defaults to `base`.
        head_learning_rate: Defaults to 1e-3.
        finetune_learning_rate: Defaults to 1e-5.

    Returns:
        Two `Phase`s, to print, edit or pass to `FineTune`.

    Example:

    >>> for phase in two_phase(base="base", head_epochs=5, finetune_epochs=3):
    ...     print(phase)
    Phase('head', epochs=5, plan=Plan(freeze base; inference base), learning_rate=0.001)
    Phase('finetune', epochs=3, plan=Plan(unfreeze base), learning_rate=1e-05)
    """
    return [
        Phase("head", epochs=head_epochs, plan=Plan().freeze(base).inference(base), learning_rate=head_learning_rate),
        Phase("finetune", epochs=finetune_epochs, plan=Plan().unfreeze(unfreeze or base), learning_rate=finetune_learning_rate),
    ]


def gradual_unfreeze(
    *,
    blocks: Sequence[str],
    epochs_per_block: int,
    head_epochs: int | None = None,
    learning_rate: float | None = None,
) -> list[Phase]:
    """ULMFiT's gradual unfreezing: the head first, then one more block per phase.

    Args:
        blocks: Selectors of the blocks in model order, input side first, e.g.
            `["base/block1_*", ..., "base/block5_*"]`; the last is unfrozen first.
        epochs_per_block: Epochs of each unfreezing phase.
        head_epochs: Epochs of the first phase, all blocks frozen. Defaults to
            `epochs_per_block`.
        learning_rate: For every phase. Defaults to None (the optimizer's).

    Returns:
        `len(blocks) + 1` Phases: "head", then "unfreeze <block>" from the top down.

    Example:

    >>> for phase in gradual_unfreeze(blocks=["b1", "b2"], epochs_per_block=2):
    ...     print(phase)
    Phase('head', epochs=2, plan=Plan(freeze b1, b2))
    Phase('unfreeze b2', epochs=2, plan=Plan(unfreeze b2))
    Phase('unfreeze b1', epochs=2, plan=Plan(unfreeze b1))
    """
    blocks = list(blocks)
    if not blocks:
        raise FrostlineValueError("Expected at least one block selector. Received an empty list.")
    phases = [Phase("head", epochs=head_epochs or epochs_per_block, plan=Plan().freeze(blocks), learning_rate=learning_rate)]
    for block in reversed(blocks):
        phases.append(Phase(f"unfreeze {block}", epochs=epochs_per_block, plan=Plan().unfreeze(block), learning_rate=learning_rate))
    return phases


def layerwise_decay(
    model: keras.Model,
    decay: float = 0.8,
    blocks: Sequence[str] | None = None,
) -> Plan:
    """Learning-rate multipliers that shrink by `decay` per block, going down the network.

    The top block keeps the optimizer's rate (multiplier 1), the one below gets `decay`,
    then `decay**2`, and so on.

    Args:
        model: The model (to list its blocks when `blocks` is not given).
        decay: The factor between neighbouring blocks, in (0, 1]. Defaults to 0.8.
        blocks: Selectors of the blocks in model order, input side first. Defaults to
            the model's top-level layers that hold weights.

    Returns:
        A Plan of `lr` rules, to apply or to add to a phase's plan.

    Example:

    >>> import keras
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, name="a"),
    ...                           keras.layers.Dense(2, name="b"), keras.layers.Dense(1, name="c")])
    >>> print(layerwise_decay(model, decay=0.5))
    Plan(lr a x0.25; lr b x0.5; lr c x1)
    """
    if not (0 < decay <= 1):
        raise FrostlineValueError(f"Expected decay in (0, 1]. Received: decay={decay!r}")
    if blocks is None:
        tree = LayerTree(model)
        blocks = [
            child.path for child in tree.root.children
            if any(n.weights for n in child.descendants())
        ]
    blocks = list(blocks)
    plan = Plan()
    for depth, block in enumerate(reversed(blocks)):
        plan = plan.lr(block, decay**depth)
    return Plan(tuple(reversed(plan.rules)))


def from_probe(
    result: Any,
    *,
    head_epochs: int = 10,
    finetune_epochs: int = 10,
    head_learning_rate: float = 1e-3,
    finetune_learning_rate: float = 1e-4,
    gradual: bool = False,
    base: str | Sequence[str] | None = None,
) -> list[Phase]:
    """The LP-FT schedule a probe implies: the head on the frozen base, then the base's
    layers above the best cut unfrozen at a lower learning rate.

    Linear probing first and fine-tuning second (Kumar et al. 2022) starts the fine-tuning
    from a trained head instead of a random one; the probe says where the frozen part
    should end. Phase "head" freezes `base` and runs it in inference mode. Phase
    "finetune" unfreezes the base above the best cut among those inside it; the layers up
    to the cut stay frozen, and the whole base stays in inference mode (BatchNormalization
    keeps its statistics). When the best cut freezes the whole base, the finetune phase
    unfreezes its top block: the layers above the cut before it. With `gradual`, one phase
    per probed block from the top down to the best cut unfreezes one more block each.

    Args:
        result: A `ProbeResult` (or its `to_dict()`).
        head_epochs: Epochs of the head phase. Defaults to 10.
        finetune_epochs: Epochs of the finetune phase (of each, with `gradual`). Defaults to 10.
        head_learning_rate: Defaults to 1e-3.
        finetune_learning_rate: Defaults to 1e-4.
        gradual: One phase per block above the cut instead of one. Defaults to False.
        base: Selectors of the pretrained part. Defaults to the probe's `base`.

    Returns:
        The phases, to print, edit, save with the CLI's YAML or pass to `FineTune`.

    Example:

    >>> import keras, numpy as np, frostline as fl
    >>> inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, name="low"),
    ...                           keras.layers.Dense(8, name="high")], name="base")
    >>> model = keras.Sequential([keras.Input((4,)), inner, keras.layers.Dense(2, name="head")])
    >>> x = np.random.default_rng(0).random((64, 4), dtype="float32")
    >>> y = (x[:, 0] > 0.5).astype("int32")
    >>> result = fl.probe(model, x, y, validation_data=(x, y), cuts=["base/low"], epochs=2)
    >>> for phase in fl.schedules.from_probe(result):
    ...     print(phase)
    Phase('head', epochs=10, plan=Plan(freeze base; inference base), learning_rate=0.001)
    Phase('finetune', epochs=10, plan=Plan(unfreeze base; freeze base/low), learning_rate=0.0001)
    """
    data = result.to_dict() if hasattr(result, "to_dict") else dict(result)
    rows = [dict(row) for row in data.get("rows", [])]
    if not rows:
        raise FrostlineValueError("Expected a probe result with at least one row. Received none.")
    base_selectors = data.get("base") if base is None else ([base] if isinstance(base, str) else list(base))
    if not base_selectors:
        raise FrostlineValueError("Expected the probe's base, or base=[...] naming the pretrained part. Received none.")
    inside = [i for i, row in enumerate(rows) if row.get("in_base", True)]
    phases = [Phase("head", epochs=head_epochs, plan=Plan().freeze(base_selectors).inference(base_selectors),
                    learning_rate=head_learning_rate)]
    if not inside:
        return phases
    target = max(inside, key=lambda i: (rows[i]["score"], i))
    if rows[target].get("whole_base"):
        below = [i for i in inside if i < target and not rows[i].get("whole_base")]
        if not below:
            return phases
        target = below[-1]
    steps = [i for i in inside if i > target and not rows[i].get("whole_base")][::-1] if gradual else []
    for i in [*steps, target]:
        name = "finetune" if not gradual else f"above {rows[i]['cut']}"
        phases.append(Phase(name, epochs=finetune_epochs, learning_rate=finetune_learning_rate,
                            plan=Plan().unfreeze(base_selectors).freeze(rows[i]["freeze"])))
    return phases
