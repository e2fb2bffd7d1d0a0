"""Pixel-level ROC curve and AUC from per-case score histograms.

Probabilities are rounded to ``num_bins`` evenly spaced levels in ``[0, 1]`` (1001 levels: steps of 0.001)
and counted separately for lesion and background pixels. The ROC curve has one point per level; the AUC is
the trapezoid area under it, which equals the Mann-Whitney statistic with scores in the same level counted
as ties. Memory is ``2 * num_bins`` numbers per case whatever the image size, and the histograms of all
ranks are gathered under DDP like any MONAI cumulative metric.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from monai.metrics import CumulativeIterationMetric

__all__ = ["PixelROCAUC", "roc_curve_from_histograms"]


def roc_curve_from_histograms(negative: np.ndarray, positive: np.ndarray) -> dict[str, list[float] | float]:
    """ROC curve and AUC from background and lesion counts per score level.

    Args:
        negative: counts of background pixels per level (level ``k`` is score ``k / (num_bins - 1)``).
        positive: counts of lesion pixels per level.

    Returns:
        ``{"fpr": [...], "tpr": [...], "thresholds": [...], "auc": float, "positives": int, "negatives": int}``;
        the curve runs from ``(0, 0)`` (threshold above 1) to ``(1, 1)``, a pixel is called lesion when its
        score level is ``>= threshold``. ``auc`` is NaN when either class has no pixel.
    """
    negative = np.asarray(negative, dtype=np.float64)
    positive = np.asarray(positive, dtype=np.float64)
    levels = np.linspace(0.0, 1.0, negative.size)
    # cumulative counts from the highest level down: pixels called lesion at each threshold
    true_positives = np.concatenate([[0.0], np.cumsum(positive[::-1])])
    false_positives = np.concatenate([[0.0], np.cumsum(negative[::-1])])
    total_positive, total_negative = true_positives[-1], false_positives[-1]
    thresholds = np.concatenate([[math.inf], levels[::-1]])
    if total_positive == 0 or total_negative == 0:
        tpr = np.full_like(true_positives, math.nan)
        fpr = np.full_like(false_positives, math.nan)
        auc = math.nan
    else:
        tpr, fpr = true_positives / total_positive, false_positives / total_negative
        auc = float(np.trapezoid(tpr, fpr))
    return {
        "fpr": fpr.tolist(),
        "tpr": tpr.tolist(),
        "thresholds": thresholds.tolist(),
        "auc": auc,
        "positives": int(total_positive),
        "negatives": int(total_negative),
    }


class PixelROCAUC(CumulativeIterationMetric):
    """Pixel-level ROC AUC over a whole set of images, from lesion probabilities.

    Every pixel of every case counts once (pooled, as papers report a pixel ROC), so large images weigh
    more. Feed probabilities (after the sigmoid, before any threshold) and binary labels.

    Args:
        num_bins: number of score levels in ``[0, 1]``; 1001 gives steps of 0.001.

    Example::

        auc = PixelROCAUC()
        auc(y_pred=torch.sigmoid(logits), y=label)
        auc.aggregate(), auc.roc_curve()["fpr"]
    """

    def __init__(self, num_bins: int = 1001) -> None:
        super().__init__()
        if not isinstance(num_bins, int) or num_bins < 2:
            raise ValueError(f"num_bins must be an integer >= 2, got {num_bins!r}.")
        self.num_bins = num_bins

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        """Histograms ``(B, 2, num_bins)``: background counts then lesion counts per score level.

        Raises:
            ValueError: when shapes differ, a probability is outside ``[0, 1]`` or NaN, or a label is not 0/1.
        """
        if y is None or y_pred.shape != y.shape:
            raise ValueError(
                f"y_pred (probabilities) and y (binary labels) must have one shape, got {tuple(y_pred.shape)} "
                f"and {None if y is None else tuple(y.shape)}."
            )
        scores = torch.as_tensor(y_pred, dtype=torch.float32).reshape(y_pred.shape[0], -1)
        labels = torch.as_tensor(y).reshape(y.shape[0], -1)
        if scores.numel() and not (bool((scores >= 0).all()) and bool((scores <= 1).all())):
            raise ValueError(
                "y_pred must hold probabilities in [0, 1] (apply the sigmoid first); "
                f"found [{float(scores.nan_to_num(0).min())}, {float(scores.nan_to_num(0).max())}] or NaN."
            )
        if not bool(((labels == 0) | (labels == 1)).all()):
            raise ValueError("y must be a binary (0/1) lesion mask.")
        levels = torch.round(scores * (self.num_bins - 1)).long() + self.num_bins * (labels == 1).long()
        histograms = [torch.bincount(case, minlength=2 * self.num_bins) for case in levels]
        return torch.stack(histograms).reshape(-1, 2, self.num_bins).to(torch.float64)

    def _histograms(self) -> tuple[np.ndarray, np.ndarray]:
        buffer = self.get_buffer()
        if buffer is None:
            empty = np.zeros(self.num_bins)
            return empty, empty
        totals = buffer.sum(dim=0).cpu().numpy()
        return totals[0], totals[1]

    def roc_curve(self) -> dict[str, list[float] | float]:
        """The ROC curve of everything buffered (see :func:`roc_curve_from_histograms`)."""
        return roc_curve_from_histograms(*self._histograms())

    def aggregate(self) -> torch.Tensor:  # type: ignore[override]
        """Pixel AUC of everything buffered; NaN, with a warning, when lesion or background pixels are missing."""
        curve = self.roc_curve()
        if math.isnan(curve["auc"]):
            warnings.warn(
                f"pixel AUC undefined: {curve['positives']} lesion and {curve['negatives']} background pixels.",
                stacklevel=2,
            )
        return torch.tensor(curve["auc"], dtype=torch.float64)
