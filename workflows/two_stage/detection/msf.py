"""Multi-scale fusion (MSF) of detections, paper 002 Sect. 3.2, eq. 1."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from skimage.measure import label, regionprops

from breastseg.networks.yolov3 import decode_boxes

__all__ = [
    "PAPER_VIEW_SIZES",
    "FusionResult",
    "MultiScaleFusion",
    "view_to_full_resolution",
    "fusion_map",
    "detect_at_scales",
    "per_view",
]

#: Detector input sizes (H, W) of paper 002's MSF: the paper's W x H 160x320 ... 480x960 views of a 2048x1024
#: (H x W) portrait mammogram.
PAPER_VIEW_SIZES = ((320, 160), (512, 256), (640, 320), (832, 416), (960, 480))


def view_to_full_resolution(detections, view_size: Sequence[int], full_size: Sequence[int]) -> np.ndarray:
    """Map ``(K, 5)`` detections ``(x0, y0, x1, y1, score)`` from a resized view to full-resolution pixels.

    The view is the whole image resized to ``view_size`` (H, W), so x scales by W_full / W_view and y by
    H_full / H_view. Scores are kept.

    Raises:
        ValueError: for detections that are not ``(K, 5)`` or non-positive sizes.
    """
    detections = _as_detections(detections, "detections")
    view_h, view_w = _size(view_size, "view_size")
    full_h, full_w = _size(full_size, "full_size")
    scale = np.array([full_w / view_w, full_h / view_h, full_w / view_w, full_h / view_h, 1.0])
    return detections * scale


def fusion_map(detections_per_scale: Sequence, image_size: Sequence[int]) -> np.ndarray:
    """The normalised confidence map M_s of eq. 1, ``(H, W)`` float32.

    For each box B_i (score c_i, full-resolution pixels) of every scale, M_i = c_i on the pixels the box
    touches (columns floor(x0) .. ceil(x1) - 1, rows likewise) and 0 elsewhere; boxes are clipped to the image
    and boxes with no pixel inside are dropped. Then M_s = sum_i M_i / (N * max_i c_i), with N the number of
    scales (``len(detections_per_scale)``, counting scales that found nothing): a box found at every scale with
    the top score reaches 1. All zeros when no box remains.

    Raises:
        ValueError: for an empty list of scales, detections that are not ``(K, 5)``, or a negative score.
    """
    if len(detections_per_scale) == 0:
        raise ValueError("detections_per_scale must hold at least one scale (N >= 1).")
    height, width = _size(image_size, "image_size")
    boxes = []
    for scale, detections in enumerate(detections_per_scale):
        detections = _as_detections(detections, f"detections_per_scale[{scale}]")
        if (detections[:, 4] < 0).any():
            raise ValueError(f"detections_per_scale[{scale}] has a negative score; scores are confidences in [0, 1].")
        for x0, y0, x1, y1, score in detections:
            col0, row0 = max(int(np.floor(x0)), 0), max(int(np.floor(y0)), 0)
            col1, row1 = min(int(np.ceil(x1)), width), min(int(np.ceil(y1)), height)
            if col1 > col0 and row1 > row0 and score > 0:
                boxes.append((row0, row1, col0, col1, float(score)))
    fused = np.zeros((height, width), dtype=np.float64)
    if not boxes:
        return fused.astype(np.float32)
    for row0, row1, col0, col1, score in boxes:
        fused[row0:row1, col0:col1] += score
    top_score = max(box[4] for box in boxes)
    return (fused / (len(detections_per_scale) * top_score)).astype(np.float32)


@dataclass(frozen=True)
class FusionResult:
    """Output of :py:class:`MultiScaleFusion`.

    Attributes:
        boxes: ``(K, 4)`` int64 half-open boxes ``(x0, y0, x1, y1)``: the component's pixels have
            x0 <= x < x1 and y0 <= y < y1 (``regionprops(...).bbox`` order changed to x-first). K = 0 is a miss.
        scores: ``(K,)`` the highest M_s inside each component (ranks the boxes, e.g. for FROC curves).
        fused: ``(H, W)`` the map M_s.
    """

    boxes: np.ndarray
    scores: np.ndarray
    fused: np.ndarray

    @property
    def detections(self) -> np.ndarray:
        """``(K, 5)`` float ``(x0, y0, x1, y1, score)``, the layout the detection metrics take."""
        return np.concatenate([self.boxes.astype(np.float64), self.scores[:, None].astype(np.float64)], axis=1)


class MultiScaleFusion:
    """Fuse per-scale detections of one image into candidate regions (paper 002, Sect. 3.2).

    M_s (eq. 1, :py:func:`fusion_map`) is thresholded at ``threshold`` (lambda; the paper explores 0, 0.5, 0.6,
    0.7 and keeps 0.6), its 8-connected components are labelled, and each component's bounding box is one
    candidate. Pixels with M_s = 0 are never kept, so lambda = 0 keeps exactly the union of all detections, as the
    paper describes it ("we keep all the detections of YOLO").

    Args:
        threshold: lambda, in [0, 1].

    Raises:
        ValueError: for a threshold outside [0, 1].

    Examples::

        >>> fuse = MultiScaleFusion(threshold=0.6)
        >>> result = fuse([[[10, 10, 50, 50, 0.9]], [[12, 10, 50, 52, 0.8]]], image_size=(100, 80))
        >>> result.boxes.tolist()
        [[12, 10, 50, 50]]
    """

    def __init__(self, threshold: float = 0.6) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold (lambda) must be in [0, 1], got {threshold}.")
        self.threshold = threshold

    def __call__(self, detections_per_scale: Sequence, image_size: Sequence[int]) -> FusionResult:
        """Fuse ``detections_per_scale`` (one ``(K_i, 5)`` full-resolution array per scale) on an ``(H, W)`` image."""
        fused = fusion_map(detections_per_scale, image_size)
        kept = (fused >= self.threshold) & (fused > 0)
        regions = regionprops(label(kept, connectivity=2), intensity_image=fused)
        boxes = np.zeros((len(regions), 4), dtype=np.int64)
        scores = np.zeros(len(regions), dtype=np.float32)
        for k, region in enumerate(regions):
            row0, col0, row1, col1 = region.bbox
            boxes[k] = (col0, row0, col1, row1)
            scores[k] = region.intensity_max
        return FusionResult(boxes=boxes, scores=scores, fused=fused)


def detect_at_scales(
    detector: torch.nn.Module,
    image: torch.Tensor,
    view_sizes: Sequence[Sequence[int]] = PAPER_VIEW_SIZES,
    conf_thresholds: float | Sequence[float] = 0.25,
    nms_thresholds: float | Sequence[float] = 0.45,
) -> list[np.ndarray]:
    """Run a YOLOv3 ``detector`` on ``image`` resized to every view size; detections in full-resolution pixels.

    Args:
        detector: a :py:class:`breastseg.networks.YOLOv3` (put in ``eval()`` here).
        image: ``(C, H, W)`` full-resolution image tensor.
        view_sizes: detector input sizes ``(H, W)``, multiples of 32 (default: the paper's five views).
        conf_thresholds: score threshold per view (or one for all); paper 002 does not give it (Darknet: 0.25).
        nms_thresholds: NMS IoU threshold per view (or one for all); not given either (Darknet: 0.45).

    Returns:
        One ``(K_i, 5)`` array ``(x0, y0, x1, y1, score)`` per view, mapped to the ``(H, W)`` image: the input of
        :py:class:`MultiScaleFusion`.

    Raises:
        ValueError: for an image that is not ``(C, H, W)`` or per-view thresholds of the wrong length.
    """
    if image.ndim != 3:
        raise ValueError(f"image must be (C, H, W), got shape {tuple(image.shape)}.")
    conf = per_view(conf_thresholds, len(view_sizes), "conf_thresholds")
    nms = per_view(nms_thresholds, len(view_sizes), "nms_thresholds")
    full_size = tuple(image.shape[1:])
    detector.eval()
    results = []
    with torch.no_grad():
        for view_size, conf_threshold, nms_threshold in zip(view_sizes, conf, nms):
            # antialiased: the paper's views shrink a 2048-pixel side by up to 6.4x
            view = F.interpolate(image[None].float(), size=tuple(view_size), mode="bilinear", antialias=True)
            found = decode_boxes(detector(view), conf_threshold, nms_threshold, image_size=tuple(view_size))[0]
            results.append(view_to_full_resolution(found.cpu().numpy(), view_size, full_size))
    return results


def per_view(value: float | Sequence[float], count: int, name: str) -> list[float]:
    """One threshold per view: ``value`` repeated, or checked to hold ``count`` values (``name`` in the error)."""
    values = [float(value)] * count if isinstance(value, (int, float)) else [float(v) for v in value]
    if len(values) != count:
        raise ValueError(f"{name} must be one value or one per view ({count}), got {len(values)}.")
    return values


def _as_detections(detections, name: str) -> np.ndarray:
    array = np.asarray(detections, dtype=np.float64)
    if array.size == 0:
        return np.zeros((0, 5))
    if array.ndim != 2 or array.shape[1] != 5:
        raise ValueError(f"{name} must be (K, 5) rows of (x0, y0, x1, y1, score), got shape {array.shape}.")
    return array


def _size(size: Sequence[int], name: str) -> tuple[int, int]:
    if len(size) != 2 or min(size) <= 0:
        raise ValueError(f"{name} must be a positive (H, W), got {tuple(size)}.")
    return int(size[0]), int(size[1])
