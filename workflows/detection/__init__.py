"""Detection stage of the two-stage pipeline (paper 002): anchors, multi-scale fusion, detection metrics."""

from .anchors import box_sizes, kmeans_anchors, mean_best_iou, size_iou
from .metrics import DetectionMatches, FROCCurve, average_precision, froc_curve, match_detections
from .msf import (
    PAPER_VIEW_SIZES,
    FusionResult,
    MultiScaleFusion,
    detect_at_scales,
    fusion_map,
    view_to_full_resolution,
)

__all__ = [
    "box_sizes",
    "size_iou",
    "kmeans_anchors",
    "mean_best_iou",
    "PAPER_VIEW_SIZES",
    "FusionResult",
    "MultiScaleFusion",
    "fusion_map",
    "view_to_full_resolution",
    "detect_at_scales",
    "DetectionMatches",
    "match_detections",
    "average_precision",
    "FROCCurve",
    "froc_curve",
]
