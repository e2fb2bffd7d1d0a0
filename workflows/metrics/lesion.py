"""A cumulative MONAI metric over per-case lesion tables, reduced by the empty-mask rule."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from monai.metrics import CumulativeIterationMetric

from .case import CASE_COLUMNS, CASE_STATUSES, ELIGIBLE_STATUSES, METRIC_NAMES, compute_case_table

__all__ = ["LesionSegmentationMetric", "reduce_case_table"]

_STATUS = CASE_COLUMNS.index("status")
_SPACING_KNOWN = CASE_COLUMNS.index("spacing_known")


def reduce_case_table(table: torch.Tensor, metric_name: str) -> tuple[float, int, int]:
    """Mean of one metric over the cases the empty-mask rule makes eligible.

    Args:
        table: ``(N, len(CASE_COLUMNS))`` case table (:func:`~breastseg.workflows.metrics.compute_case_table`).
        metric_name: one of :data:`~breastseg.workflows.metrics.METRIC_NAMES`.

    Returns:
        ``(mean, n_used, n_undefined)``: ``mean`` is NaN when ``n_used`` is 0; ``n_undefined`` counts eligible
        cases whose value is NaN (spacing unknown for ``*_mm``, 0/0 ratios), which are left out of the mean.
    """
    if metric_name not in METRIC_NAMES:
        raise ValueError(f"metric_name must be one of {METRIC_NAMES}, got {metric_name!r}.")
    table = torch.as_tensor(table, dtype=torch.float64).reshape(-1, len(CASE_COLUMNS))
    codes = [CASE_STATUSES.index(s) for s in ELIGIBLE_STATUSES[metric_name]]
    eligible = torch.isin(table[:, _STATUS], torch.tensor(codes, dtype=table.dtype, device=table.device))
    values = table[eligible, CASE_COLUMNS.index(metric_name)]
    defined = ~torch.isnan(values)
    n_used = int(defined.sum())
    mean = float(values[defined].mean()) if n_used else math.nan
    return mean, n_used, int(values.numel()) - n_used


class LesionSegmentationMetric(CumulativeIterationMetric):
    """Per-case lesion segmentation metrics of binary 2D masks, averaged by the project's empty-mask rule.

    Each call computes the full case table (Dice, IoU, sensitivity, specificity, precision, accuracy, HD95
    and HD max in pixels and millimetres, pixel counts, status) for a batch and buffers it, so
    ``get_buffer()`` (``engine.state.metric_details`` under a handler) is a ``(N, len(CASE_COLUMNS))`` table
    and every rank's cases are gathered under DDP. ``aggregate()`` returns the mean of ``metric_name`` over
    the eligible cases of :data:`~breastseg.workflows.metrics.ELIGIBLE_STATUSES`; the rule is written in
    :mod:`breastseg.workflows.metrics.case`.

    When no case is eligible (e.g. a validation set with no lesion and no false positive), ``aggregate()``
    returns NaN and warns: a NaN key metric never compares as "best", so no checkpoint is chosen on it.

    Args:
        metric_name: the metric to aggregate, one of :data:`~breastseg.workflows.metrics.METRIC_NAMES`.
        get_not_nans: also return the number of cases the mean used, as MONAI metrics do.

    Example::

        metric = LesionSegmentationMetric("hd95_mm")
        metric(y_pred=pred, y=label, spacing=[[0.07, 0.07], None])   # (B, 1, H, W) binary masks
        metric.aggregate()
    """

    def __init__(self, metric_name: str = "dice", get_not_nans: bool = False) -> None:
        super().__init__()
        if metric_name not in METRIC_NAMES:
            raise ValueError(f"metric_name must be one of {METRIC_NAMES}, got {metric_name!r}.")
        self.metric_name = metric_name
        self.get_not_nans = get_not_nans

    def _compute_tensor(  # type: ignore[override]
        self, y_pred: torch.Tensor, y: torch.Tensor, spacing: Any = None, spacing_known: Any = None
    ) -> torch.Tensor:
        """Case table of a batch.

        Args:
            y_pred: binary prediction ``(B, 1, H, W)``.
            y: binary ground truth ``(B, 1, H, W)``.
            spacing: ``(row_mm, col_mm)`` of the masks' grid per case; see
                :func:`~breastseg.workflows.metrics.per_case_spacing`.
            spacing_known: optional per-case flags overriding the NaN convention.

        Raises:
            ValueError: for non-binary masks, shape mismatch or invalid spacing.
        """
        if y is None:
            raise ValueError("LesionSegmentationMetric needs the ground truth y.")
        return compute_case_table(y_pred, y, spacing, spacing_known).to(y_pred.device)

    def _compute_list(  # type: ignore[override]
        self, y_pred: Sequence[torch.Tensor], y: Sequence[torch.Tensor], spacing: Any = None, spacing_known: Any = None
    ) -> torch.Tensor:
        """Channel-first lists (decollated batches, cases may differ in size): spacing is split per case."""
        if y is None or len(y_pred) != len(y):
            raise ValueError("y_pred and y must be lists of the same length.")
        count = len(y_pred)
        spacings = _split(spacing, count, "spacing")
        flags = _split(spacing_known, count, "spacing_known")
        tables = [
            self._compute_tensor(p.detach()[None], t.detach()[None], s, k)
            for p, t, s, k in zip(y_pred, y, spacings, flags)
        ]
        return torch.cat(tables, dim=0)

    def aggregate(self) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        """Mean of ``metric_name`` over eligible cases (NaN, with a warning, when there are none)."""
        table = self.get_buffer()
        if table is None:
            table = torch.zeros((0, len(CASE_COLUMNS)), dtype=torch.float64)
        mean, n_used, n_undefined = reduce_case_table(table, self.metric_name)
        if n_used == 0:
            counts = {s: int((table[:, _STATUS] == i).sum()) for i, s in enumerate(CASE_STATUSES)}
            warnings.warn(
                f"{self.metric_name}: no case is eligible for the mean (statuses {counts}, "
                f"{n_undefined} eligible case(s) undefined); returning NaN.",
                stacklevel=2,
            )
        result = torch.tensor(mean, dtype=torch.float64)
        return (result, torch.tensor(n_used)) if self.get_not_nans else result


def _split(value: Any, count: int, name: str) -> list[Any]:
    """One entry per case of a batch argument (``spacing`` or ``spacing_known``) given with a list of cases."""
    if value is None or isinstance(value, bool):
        return [value] * count
    entries = value.tolist() if hasattr(value, "tolist") else list(value)
    is_spacing = name == "spacing"
    if is_spacing and len(entries) == 2 and all(isinstance(v, (int, float)) for v in entries):
        return [entries] * count  # one (row_mm, col_mm) pair for every case
    if len(entries) != count:
        raise ValueError(f"{name} must give one entry per case: {count} cases, got {len(entries)} entries.")
    return [[e] for e in entries] if is_spacing else entries
