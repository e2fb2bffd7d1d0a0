"""Paper 001's Dice loss and a deep-supervision wrapper taking one logit tensor or a list of heads."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.losses import DeepSupervisionLoss, DiceLoss
from torch.nn.modules.loss import _Loss

__all__ = ["DeepSupervisionWrapper", "dice_loss", "WEIGHT_MODES"]

#: Head-weighting schemes of :py:class:`monai.losses.DeepSupervisionLoss` (weights for heads 0, 1, 2, ...).
WEIGHT_MODES = ("same", "exp", "two")


class DeepSupervisionWrapper(DeepSupervisionLoss):
    """:py:class:`monai.losses.DeepSupervisionLoss` with its inputs checked instead of silently defaulted.

    Takes EITHER one logit tensor (the loss of it) OR a list of deep-supervision heads, main head first (the
    order :py:class:`breastseg.networks.UNetPlusPlus` returns), and sums ``weight[k] * loss(head[k], target)``.
    A head smaller than the target gets the target resized by nearest-exact interpolation (as MONAI).
    Non-finite values are propagated, never masked: a NaN head gives a NaN loss.

    Differences from MONAI's class: an unknown ``weight_mode`` or a non-positive weight raises in ``__init__``
    (MONAI falls back to equal weights), explicit ``weights`` must match the number of heads (MONAI silently
    ignores a shorter list) and an empty list raises.

    Args:
        loss: loss applied to each head, e.g. ``DiceLoss(sigmoid=True)``.
        weight_mode: ``"same"`` (1, 1, 1, ...: the UNet++ reference weights its heads equally, the default
            here), ``"exp"`` (1, 0.5, 0.25, ..., floored at 0.0625: MONAI's default) or ``"two"`` (1, 0.5, 0.5, ...).
        weights: explicit per-head weights, main head first; overrides ``weight_mode``.

    Raises:
        ValueError: for an unknown ``weight_mode`` or non-positive / non-finite ``weights``.
    """

    def __init__(self, loss: _Loss, weight_mode: str = "same", weights: Sequence[float] | None = None) -> None:
        if weight_mode not in WEIGHT_MODES:
            raise ValueError(f"weight_mode must be one of {WEIGHT_MODES}, got {weight_mode!r}.")
        if weights is not None:
            weights = [float(w) for w in weights]
            if not weights or not all(math.isfinite(w) and w > 0 for w in weights):
                raise ValueError(f"weights must be a non-empty list of positive finite numbers, got {weights}.")
        super().__init__(loss, weight_mode=weight_mode, weights=weights)

    def get_weights(self, levels: int = 1) -> list[float]:
        """Weights for ``levels`` heads, main head first.

        Raises:
            ValueError: when explicit ``weights`` do not hold exactly one weight per head.
        """
        if self.weights is not None and len(self.weights) != levels:
            raise ValueError(f"{len(self.weights)} loss weights were given for {levels} deep-supervision heads.")
        return super().get_weights(levels)

    def forward(self, input: torch.Tensor | list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        """Loss of one logit tensor ``(B, C, *spatial)`` or the weighted sum over a list of heads.

        Raises:
            ValueError: when ``input`` is ``None`` or an empty list.
        """
        if isinstance(input, (list, tuple)) and len(input) == 0:
            raise ValueError("input is an empty list of deep-supervision heads.")
        return super().forward(input, target)


def dice_loss(
    weight_mode: str = "same", weights: Sequence[float] | None = None, **dice_kwargs
) -> DeepSupervisionWrapper:
    """Paper 001's training loss: MONAI ``DiceLoss(sigmoid=True)`` on logits, accepting a tensor or a list of heads.

    Args:
        weight_mode: head weighting when a list of heads is given, see :py:class:`DeepSupervisionWrapper`.
        weights: explicit per-head weights, main head first.
        dice_kwargs: further :py:class:`monai.losses.DiceLoss` arguments (``smooth_nr``, ``batch``...);
            ``sigmoid`` defaults to ``True`` because the networks return logits.
    """
    dice_kwargs.setdefault("sigmoid", True)
    return DeepSupervisionWrapper(DiceLoss(**dice_kwargs), weight_mode=weight_mode, weights=weights)
