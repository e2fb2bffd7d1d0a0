"""Per-case lesion segmentation metrics and the project's empty-mask rule.

The empty-mask rule
===================
Every case (one image) gets a ``status`` from its two binary masks:

==================  ==================  =====================================================================
status              masks               metric values of the case
==================  ==================  =====================================================================
``lesion``          both non-empty      every metric computed normally (Dice may be 0 when they do not touch)
``missed``          prediction empty    Dice 0, IoU 0, sensitivity 0, HD95 = HD max = the image diagonal;
                                        precision undefined (no predicted pixel)
``false_positive``  label empty         Dice 0, IoU 0, precision 0, HD95 = HD max = the image diagonal;
                                        sensitivity undefined (no lesion pixel)
``both_empty``      both empty          a true negative: specificity 1, accuracy 1, all pixels counted in
                                        ``tn``; Dice, IoU, sensitivity, precision and HD undefined
==================  ==================  =====================================================================

* The image diagonal is the distance between opposite corner pixel centres,
  ``hypot((H - 1) * row_mm, (W - 1) * col_mm)`` (spacing 1 for pixels): the worst value any prediction can
  score, so a missed lesion never improves a mean (unlike stock MONAI, whose HD95 is NaN there and is then
  dropped from the mean).
* An undefined value is ``NaN`` in the case row and the ``status`` says why. Means never skip a value
  because it is NaN: :data:`ELIGIBLE_STATUSES` says which statuses enter the mean of each metric, and an
  eligible case whose value is still NaN is counted as ``n_undefined`` next to the mean (the only expected
  one is a label covering the whole image, whose specificity is 0/0).
* Lesion means exclude ``both_empty`` cases (they are counted per status). ``false_positive`` cases enter
  the Dice, IoU, HD, specificity, accuracy and precision means with their penalty values: a model that
  paints lesions on normal images must score lower. Sensitivity is averaged over cases with a lesion
  (``lesion``, ``missed``), precision over cases with a prediction (``lesion``, ``false_positive``).
* Millimetre distances (``hd95_mm``, ``hd_max_mm``) need the pixel spacing of the grid the masks are on
  (after any resampling); where it is unknown they are NaN, ``spacing_known`` is 0, and their means run
  over the spacing-known cases only, with that count reported.

Pixel counts are taken on the bounding box of the two masks (everything outside it is a true negative);
ratios come from MONAI's :func:`~monai.metrics.compute_confusion_matrix_metric` on those counts (Dice is
the F1 score, IoU the threat score, 0/0 is NaN), distances from :mod:`breastseg.workflows.metrics.surface`.
Every value equals the full-image one (the tests compare with MONAI's ``DiceMetric``, ``MeanIoU``,
``get_confusion_matrix`` and ``HausdorffDistanceMetric``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from monai.metrics import compute_confusion_matrix_metric
from monai.utils import convert_to_tensor

from .surface import binary_crop, hausdorff_distances, image_diagonal, union_bounding_box

__all__ = [
    "CASE_STATUSES",
    "CASE_COLUMNS",
    "METRIC_NAMES",
    "ELIGIBLE_STATUSES",
    "HD_PERCENTILE",
    "case_status",
    "per_case_spacing",
    "compute_case_table",
    "table_to_rows",
]

#: Case statuses; a status is stored in metric tables as its index in this tuple.
CASE_STATUSES = ("lesion", "both_empty", "missed", "false_positive")

#: Metrics computed for every case, in table order after the bookkeeping columns.
METRIC_NAMES = (
    "dice",
    "iou",
    "sensitivity",
    "specificity",
    "precision",
    "accuracy",
    "hd95_px",
    "hd_max_px",
    "hd95_mm",
    "hd_max_mm",
)

#: Columns of the per-case table built by :func:`compute_case_table`.
CASE_COLUMNS = ("status", "spacing_known", "tp", "fp", "fn", "tn") + METRIC_NAMES

_ANY_MASK = frozenset({"lesion", "missed", "false_positive"})

#: Statuses whose cases enter the mean of each metric (see the module docstring).
ELIGIBLE_STATUSES: dict[str, frozenset[str]] = {name: _ANY_MASK for name in METRIC_NAMES}
ELIGIBLE_STATUSES["sensitivity"] = frozenset({"lesion", "missed"})
ELIGIBLE_STATUSES["precision"] = frozenset({"lesion", "false_positive"})

#: The percentile of the ``hd95_*`` columns.
HD_PERCENTILE = 95.0

# MONAI confusion-matrix metric names behind each ratio column.
_RATIOS = {
    "dice": "f1 score",
    "iou": "threat score",
    "sensitivity": "sensitivity",
    "specificity": "specificity",
    "precision": "precision",
    "accuracy": "accuracy",
}


def case_status(pred_any: bool, label_any: bool) -> str:
    """The empty-mask status of a case from whether each mask has a foreground pixel."""
    if pred_any and label_any:
        return "lesion"
    if label_any:
        return "missed"
    if pred_any:
        return "false_positive"
    return "both_empty"


def _one_spacing(value: Any, known: bool | None, case: int) -> tuple[float, float] | None:
    if value is None:
        if known:
            raise ValueError(f"case {case}: spacing_known is True but no spacing was given.")
        return None
    pair = [float(v) for v in torch.as_tensor(value, dtype=torch.float64).flatten().tolist()]
    if len(pair) != 2:
        raise ValueError(f"case {case}: spacing must be (row_mm, col_mm), got {pair}.")
    finite = all(math.isfinite(v) for v in pair)
    if known is False or (known is None and not finite):
        return None
    if not finite or min(pair) <= 0:
        raise ValueError(f"case {case}: spacing must be two positive millimetre values, got {pair}.")
    return pair[0], pair[1]


def per_case_spacing(
    spacing: Any, spacing_known: Any, batch_size: int
) -> list[tuple[float, float] | None]:
    """Normalise the spacing arguments of a batch to one ``(row_mm, col_mm)`` or ``None`` per case.

    Args:
        spacing: ``None`` (unknown for every case), one ``(row_mm, col_mm)`` pair for the whole batch, a
            ``(B, 2)`` tensor/array, or a length-``B`` sequence of pairs or ``None``. A row with NaN is
            unknown unless ``spacing_known`` says otherwise.
        spacing_known: ``None`` (derive from ``spacing``), one bool, or ``B`` bools.
        batch_size: number of cases ``B``.

    Raises:
        ValueError: when lengths disagree with ``batch_size`` or a spacing marked known is not two
            positive finite numbers.
    """
    if spacing is None:
        entries: list[Any] = [None] * batch_size
    else:
        as_list = spacing.tolist() if hasattr(spacing, "tolist") else list(spacing)
        single_pair = len(as_list) == 2 and all(isinstance(v, (int, float)) for v in as_list)
        entries = [as_list] * batch_size if single_pair else as_list
    if spacing_known is None or isinstance(spacing_known, bool):
        known_flags = [spacing_known] * batch_size
    else:
        known_flags = [bool(k) for k in torch.as_tensor(spacing_known).flatten().tolist()]
    if len(entries) != batch_size or len(known_flags) != batch_size:
        raise ValueError(
            f"spacing/spacing_known must give one entry per case: batch of {batch_size}, "
            f"got {len(entries)} spacing and {len(known_flags)} spacing_known entries."
        )
    return [_one_spacing(v, k, i) for i, (v, k) in enumerate(zip(entries, known_flags))]


def _case_row(pred: torch.Tensor, label: torch.Tensor, spacing: tuple[float, float] | None) -> list[float]:
    """One table row (see :data:`CASE_COLUMNS`) for two 2D masks."""
    total = pred.numel()
    box = union_bounding_box(pred, label)
    if box is None:
        pred_crop = label_crop = None
        tp = fp = fn = 0.0
    else:
        pred_crop, label_crop = binary_crop(pred, box, "pred"), binary_crop(label, box, "label")
        tp = float(torch.count_nonzero(pred_crop & label_crop))
        fp = float(torch.count_nonzero(pred_crop)) - tp
        fn = float(torch.count_nonzero(label_crop)) - tp
    tn = total - tp - fp - fn  # everything outside the box is a true negative
    confusion = torch.tensor([tp, fp, tn, fn], dtype=torch.float64)
    status = case_status(tp + fp > 0, tp + fn > 0)
    ratios = [float(compute_confusion_matrix_metric(_RATIOS[name], confusion)) for name in _RATIOS]

    nan = float("nan")
    hd95_px = hd_max_px = hd95_mm = hd_max_mm = nan
    if status == "lesion":
        distances = hausdorff_distances(pred_crop, label_crop, HD_PERCENTILE, (None,) if spacing is None else (None, spacing))
        hd95_px, hd_max_px = distances[0]
        if spacing is not None:
            hd95_mm, hd_max_mm = distances[1]
    elif status in ("missed", "false_positive"):
        hd95_px = hd_max_px = image_diagonal(pred.shape)
        if spacing is not None:
            hd95_mm = hd_max_mm = image_diagonal(pred.shape, spacing)
    bookkeeping = [float(CASE_STATUSES.index(status)), float(spacing is not None), tp, fp, fn, tn]
    return bookkeeping + ratios + [hd95_px, hd_max_px, hd95_mm, hd_max_mm]


def compute_case_table(
    pred: torch.Tensor, label: torch.Tensor, spacing: Any = None, spacing_known: Any = None
) -> torch.Tensor:
    """Every per-case metric of a batch, as a ``(B, len(CASE_COLUMNS))`` float64 tensor.

    Args:
        pred: binary prediction ``(B, 1, H, W)`` (any dtype, values 0/1: threshold probabilities first).
        label: binary ground truth of the same shape.
        spacing: pixel spacing of the masks' grid; see :func:`per_case_spacing`.
        spacing_known: see :func:`per_case_spacing`.

    Returns:
        Rows in :data:`CASE_COLUMNS` order, on the CPU; ``status`` holds the index into
        :data:`CASE_STATUSES`. Turn it into dicts with :func:`table_to_rows`.

    Raises:
        ValueError: when shapes are not ``(B, 1, H, W)`` and equal, or a mask is not binary.
    """
    if pred.ndim != 4 or pred.shape[1] != 1 or pred.shape != label.shape:
        raise ValueError(
            f"pred and label must both be (B, 1, H, W) binary masks, got {tuple(pred.shape)} and {tuple(label.shape)}."
        )
    # plain tensors: MetaTensor bookkeeping on every slice would cost more than the metrics
    pred, label = convert_to_tensor(pred, track_meta=False), convert_to_tensor(label, track_meta=False)
    spacings = per_case_spacing(spacing, spacing_known, pred.shape[0])
    rows = [_case_row(pred[b, 0], label[b, 0], spacings[b]) for b in range(pred.shape[0])]
    return torch.tensor(rows, dtype=torch.float64).reshape(-1, len(CASE_COLUMNS))


def table_to_rows(table: torch.Tensor) -> list[dict[str, Any]]:
    """Turn a case table into dicts: status names, ``bool`` spacing_known, ``int`` pixel counts."""
    rows = []
    for values in torch.as_tensor(table, dtype=torch.float64).reshape(-1, len(CASE_COLUMNS)).tolist():
        row: dict[str, Any] = dict(zip(CASE_COLUMNS, values))
        row["status"] = CASE_STATUSES[int(row["status"])]
        row["spacing_known"] = bool(row["spacing_known"])
        for count in ("tp", "fp", "fn", "tn"):
            row[count] = int(row[count])
        rows.append(row)
    return rows
