"""Detection stage of the two-stage pipeline (paper 002): data, training, anchors, multi-scale fusion, metrics."""

from .anchors import box_sizes, kmeans_anchors, mean_best_iou, size_iou
from .data import (
    PAPER_FRAME_SIZE,
    FrameGeometry,
    ResizeWithBoxesd,
    ToDetectorFramed,
    collate_boxes,
    detector_chain,
    resize_batch,
    unpad_boxes,
)
from .evaluation import PAPER_LAMBDAS, detection_markdown, detection_tables
from .metrics import DetectionMatches, FROCCurve, average_precision, froc_curve, match_detections
from .model import DetectorModel, build_detector, detector_settings, load_detector
from .msf import (
    PAPER_VIEW_SIZES,
    FusionResult,
    MultiScaleFusion,
    detect_at_scales,
    fusion_map,
    view_to_full_resolution,
)
from .training import DetectorLoss, MultiScaleResize, MultiScaleSchedule, fit_anchors, read_anchors, training_boxes
from .validation import DecodeDetections, DetectionAP

__all__ = [
    "box_sizes",
    "size_iou",
    "kmeans_anchors",
    "mean_best_iou",
    "PAPER_FRAME_SIZE",
    "FrameGeometry",
    "ToDetectorFramed",
    "ResizeWithBoxesd",
    "detector_chain",
    "collate_boxes",
    "unpad_boxes",
    "resize_batch",
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
    "MultiScaleSchedule",
    "MultiScaleResize",
    "DetectorLoss",
    "training_boxes",
    "fit_anchors",
    "read_anchors",
    "DecodeDetections",
    "DetectionAP",
    "PAPER_LAMBDAS",
    "detection_tables",
    "detection_markdown",
    "detector_settings",
    "build_detector",
    "load_detector",
    "DetectorModel",
]
