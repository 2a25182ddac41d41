"""Ready-made phase lists and learning-rate plans for common fine-tuning recipes."""

from __future__ import annotations

from collections.abc import Sequence

import keras

from frostline.errors import FrostlineValueError
from frostline.model.tree import LayerTree
from frostline.plan.plan import Plan
from frostline.train.phase import Phase

__all__ = ["gradual_unfreeze", "layerwise_decay", "two_phase"]


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
