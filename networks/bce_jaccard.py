"""Paper 003's hybrid loss: binary cross-entropy plus soft Jaccard loss (eq. 16-18), on logits."""

from __future__ import annotations

import torch
from monai.losses import DiceLoss
from torch.nn.modules.loss import _Loss

__all__ = ["BCEJaccardLoss", "bce_jaccard_loss"]


class BCEJaccardLoss(_Loss):
    """``mean BCE(sigmoid(x), y) + 1 - sum(p g) / sum(p + g - p g)`` (eq. 16-18).

    The cross-entropy is averaged over pixels (the Keras ``binary_crossentropy`` the paper trains with; eq. 16
    writes a sum, which only rescales it by the pixel count and would drown the Jaccard term). The soft Jaccard
    is MONAI's ``DiceLoss(jaccard=True)``: per image (or over the whole batch with ``batch=True``), then averaged,
    with ``smooth`` added to numerator and denominator so an empty mask predicted empty costs 0, not NaN.

    Args:
        bce_weight: weight of the cross-entropy term (1 in the paper).
        jaccard_weight: weight of the Jaccard term (1 in the paper).
        batch: compute the Jaccard sums over the whole batch instead of per image.
        smooth: smoothing constant of the Jaccard ratio.

    Raises:
        ValueError: for a negative weight, both weights zero, or a negative ``smooth``.
    """

    def __init__(
        self, bce_weight: float = 1.0, jaccard_weight: float = 1.0, batch: bool = False, smooth: float = 1e-5
    ) -> None:
        super().__init__()
        if bce_weight < 0 or jaccard_weight < 0 or bce_weight + jaccard_weight == 0:
            raise ValueError(f"loss weights must be >= 0 and not both 0, got {bce_weight}, {jaccard_weight}.")
        if smooth < 0:
            raise ValueError(f"smooth must be >= 0, got {smooth}.")
        self.bce_weight = float(bce_weight)
        self.jaccard_weight = float(jaccard_weight)
        self.bce = torch.nn.BCEWithLogitsLoss()
        self.jaccard = DiceLoss(sigmoid=True, jaccard=True, batch=batch, smooth_nr=smooth, smooth_dr=smooth)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss of logits ``input`` against a binary ``target`` of the same shape ``(B, 1, H, W)``.

        Raises:
            ValueError: when the shapes differ.
        """
        if input.shape != target.shape:
            raise ValueError(f"logits shape {tuple(input.shape)} differs from target shape {tuple(target.shape)}.")
        target = target.float()
        return self.bce_weight * self.bce(input, target) + self.jaccard_weight * self.jaccard(input, target)


def bce_jaccard_loss(**kwargs) -> BCEJaccardLoss:
    """Paper 003's training loss; keyword arguments go to :py:class:`BCEJaccardLoss`."""
    return BCEJaccardLoss(**kwargs)
