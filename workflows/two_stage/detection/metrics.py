"""Detection metrics of paper 002: average precision at IoU >= 0.5 (Table 1) and FROC / TPR@FPavg (Table 2)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from monai.data.box_utils import box_iou

__all__ = ["DetectionMatches", "match_detections", "average_precision", "FROCCurve", "froc_curve"]


@dataclass(frozen=True)
class DetectionMatches:
    """Detections of a set of images, each marked true or false positive.

    Attributes:
        scores: ``(D,)`` scores of all detections, in decreasing order.
        true_positive: ``(D,)`` bool, aligned with ``scores``.
        num_lesions: number of ground-truth boxes over all images.
        num_images: number of images.
    """

    scores: np.ndarray
    true_positive: np.ndarray
    num_lesions: int
    num_images: int


def match_detections(detections: Sequence, ground_truths: Sequence, iou_threshold: float = 0.5) -> DetectionMatches:
    """Mark every detection true or false positive, image by image (the PASCAL VOC rule).

    Within an image, detections are taken by decreasing score; each one is a true positive when its best-IoU
    ground-truth box overlaps it by at least ``iou_threshold`` and was not matched by a higher-scored detection;
    otherwise (no overlap, or a duplicate) it is a false positive.

    Args:
        detections: per image, ``(K, 5)`` rows ``(x0, y0, x1, y1, score)`` (K may be 0).
        ground_truths: per image, ``(G, 4)`` boxes ``(x0, y0, x1, y1)`` (G may be 0: a normal image).
        iou_threshold: the overlap that makes a hit (0.5 in the paper).

    Raises:
        ValueError: when the two lists differ in length, an array has the wrong layout (the message names the
            image), or the threshold is outside (0, 1].
    """
    if len(detections) != len(ground_truths):
        raise ValueError(f"{len(detections)} detection lists for {len(ground_truths)} ground-truth lists.")
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}.")
    scores, hits = [], []
    num_lesions = 0
    for image, (found, truth) in enumerate(zip(detections, ground_truths)):
        found = _as_array(found, 5, f"detections[{image}]")
        truth = _as_array(truth, 4, f"ground_truths[{image}]")
        num_lesions += len(truth)
        found = found[np.argsort(-found[:, 4], kind="stable")]
        matched = np.zeros(len(truth), dtype=bool)
        overlap = box_iou(found[:, :4], truth) if len(found) and len(truth) else np.zeros((len(found), len(truth)))
        for k in range(len(found)):
            best = int(overlap[k].argmax()) if len(truth) else -1
            hit = best >= 0 and overlap[k, best] >= iou_threshold and not matched[best]
            if hit:
                matched[best] = True
            hits.append(hit)
            scores.append(found[k, 4])
    scores_array = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores_array, kind="stable")
    return DetectionMatches(
        scores=scores_array[order],
        true_positive=np.asarray(hits, dtype=bool)[order],
        num_lesions=num_lesions,
        num_images=len(detections),
    )


def average_precision(detections: Sequence, ground_truths: Sequence, iou_threshold: float = 0.5) -> float:
    """Average precision of the detections at ``iou_threshold`` over a set of images.

    AP = sum_n (R_n - R_{n-1}) P_n over the ranked detections, the "weighted increase in precision with each
    change in recall" paper 002 describes (scikit-learn's ``average_precision_score``; no interpolation of the
    precision envelope). Recall is over all ground-truth boxes, so a lesion never detected caps it below 1.

    Returns:
        AP in [0, 1]; NaN when there is no ground-truth box at all (recall is undefined).
    """
    matches = match_detections(detections, ground_truths, iou_threshold)
    if matches.num_lesions == 0:
        return float("nan")
    if matches.scores.size == 0:
        return 0.0
    true_positives = np.cumsum(matches.true_positive)
    precision = true_positives / np.arange(1, len(true_positives) + 1)
    recall = true_positives / matches.num_lesions
    # ties in score form one operating point: take the last index of each run of equal scores
    last_of_tie = np.r_[matches.scores[1:] != matches.scores[:-1], True]
    precision, recall = precision[last_of_tie], recall[last_of_tie]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


@dataclass(frozen=True)
class FROCCurve:
    """Free-response ROC: sensitivity against the average number of false positives per image.

    Attributes:
        thresholds: decreasing score thresholds (detections scoring >= threshold are kept).
        fp_per_image: ``(T,)`` false positives per image at each threshold (FPavg).
        sensitivity: ``(T,)`` fraction of ground-truth boxes detected (TPR).
    """

    thresholds: np.ndarray
    fp_per_image: np.ndarray
    sensitivity: np.ndarray

    def operating_point(self) -> tuple[float, float]:
        """``(TPR, FPavg)`` with every detection kept: Table 2's TPR@FPavg of a fixed-lambda MSF output."""
        if self.thresholds.size == 0:
            return 0.0, 0.0
        return float(self.sensitivity[-1]), float(self.fp_per_image[-1])

    def sensitivity_at(self, fp_per_image: float) -> float:
        """Highest TPR whose FPavg does not exceed ``fp_per_image`` (0 when none does)."""
        allowed = self.fp_per_image <= fp_per_image
        return float(self.sensitivity[allowed].max()) if allowed.any() else 0.0


def froc_curve(detections: Sequence, ground_truths: Sequence, iou_threshold: float = 0.5) -> FROCCurve:
    """FROC curve over the distinct detection scores (same matching as :py:func:`average_precision`).

    Raises:
        ValueError: as :py:func:`match_detections`; also when the images hold no ground-truth box (the
            sensitivity is undefined).
    """
    matches = match_detections(detections, ground_truths, iou_threshold)
    if matches.num_lesions == 0:
        raise ValueError("FROC needs at least one ground-truth box; the images hold none.")
    true_positives = np.cumsum(matches.true_positive)
    false_positives = np.cumsum(~matches.true_positive)
    last_of_tie = np.r_[matches.scores[1:] != matches.scores[:-1], True] if matches.scores.size else np.zeros(0, bool)
    return FROCCurve(
        thresholds=matches.scores[last_of_tie],
        fp_per_image=false_positives[last_of_tie] / matches.num_images,
        sensitivity=true_positives[last_of_tie] / matches.num_lesions,
    )


def _as_array(values, columns: int, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        return np.zeros((0, columns))
    if array.ndim != 2 or array.shape[1] != columns:
        raise ValueError(f"{name} must be (N, {columns}), got shape {array.shape}.")
    return array
