"""Lesion segmentation metrics of breastseg: per-case tables, MONAI cumulative metrics, ignite handlers.

The project's one written rule for empty masks, and which cases enter each mean, is the docstring of
:mod:`breastseg.workflows.metrics.case`. HD95 and HD max are MONAI's definitions computed on the bounding
box of the two masks (:mod:`breastseg.workflows.metrics.surface`); pixel ROC AUC is in
:mod:`breastseg.workflows.metrics.roc`.
"""

from .case import (
    CASE_COLUMNS,
    CASE_STATUSES,
    ELIGIBLE_STATUSES,
    HD_PERCENTILE,
    METRIC_NAMES,
    case_status,
    compute_case_table,
    per_case_spacing,
    table_to_rows,
)
from .handlers import (
    LesionAccuracy,
    LesionDice,
    LesionHD95,
    LesionHDMax,
    LesionIoU,
    LesionMetricHandler,
    LesionPrecision,
    LesionSensitivity,
    LesionSpecificity,
    PixelAUC,
)
from .lesion import LesionSegmentationMetric, reduce_case_table
from .roc import PixelROCAUC, roc_curve_from_histograms
from .surface import binary_crop, hausdorff_distances, image_diagonal, union_bounding_box

__all__ = [
    "CASE_COLUMNS",
    "CASE_STATUSES",
    "ELIGIBLE_STATUSES",
    "HD_PERCENTILE",
    "METRIC_NAMES",
    "case_status",
    "compute_case_table",
    "per_case_spacing",
    "table_to_rows",
    "LesionSegmentationMetric",
    "reduce_case_table",
    "PixelROCAUC",
    "roc_curve_from_histograms",
    "binary_crop",
    "hausdorff_distances",
    "image_diagonal",
    "union_bounding_box",
    "LesionMetricHandler",
    "LesionDice",
    "LesionIoU",
    "LesionHD95",
    "LesionHDMax",
    "LesionSensitivity",
    "LesionSpecificity",
    "LesionPrecision",
    "LesionAccuracy",
    "PixelAUC",
]
