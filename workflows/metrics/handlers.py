"""Ignite handlers for the lesion metrics: thin wrappers, the maths is in the metric classes.

Like :class:`monai.handlers.MeanDice`, each builds a metric for :class:`monai.handlers.IgniteMetricHandler`;
with ``save_details=True`` the per-case table lands in ``engine.state.metric_details[name]``
(columns :data:`~breastseg.workflows.metrics.CASE_COLUMNS`).

Millimetre distances need each case's pixel spacing. Give it either as a third element returned by
``output_transform`` (``(pred, label, spacing)``), or name the batch key holding it with ``spacing_key``
(the record key is ``"spacing"``; store an unknown spacing as ``[nan, nan]`` so batches collate). The
spacing must be that of the grid the masks are on when the metric sees them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ignite.metrics.metric import reinit__is_reduced
from monai.handlers import IgniteMetricHandler

from .lesion import LesionSegmentationMetric
from .roc import PixelROCAUC

__all__ = [
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

_UNITS = ("px", "mm")


def _identity(output: Any) -> Any:
    return output


class LesionMetricHandler(IgniteMetricHandler):
    """Ignite handler of :class:`~breastseg.workflows.metrics.LesionSegmentationMetric`.

    Args:
        metric_name: the metric averaged into ``engine.state.metrics[name]``.
        output_transform: maps ``engine.state.output`` to ``(pred, label)`` or ``(pred, label, spacing)``,
            e.g. ``monai.handlers.from_engine(["pred", "label"])``.
        save_details: keep the per-case table in ``engine.state.metric_details``.
        spacing_key: when ``output_transform`` gives no spacing, read it from ``engine.state.batch[key]``
            (decollated list of dicts or a collated dict); ``None`` leaves spacing unknown.
    """

    def __init__(
        self,
        metric_name: str = "dice",
        output_transform: Callable = _identity,
        save_details: bool = True,
        spacing_key: str | None = None,
    ) -> None:
        super().__init__(
            metric_fn=LesionSegmentationMetric(metric_name),
            output_transform=output_transform,
            save_details=save_details,
        )
        self.spacing_key = spacing_key

    @reinit__is_reduced
    def update(self, output: Sequence[Any]) -> None:
        """Compute and buffer the case table of one iteration.

        Raises:
            ValueError: when ``output`` does not have 2 or 3 elements.
            KeyError: when ``spacing_key`` is set but missing from the engine batch.
        """
        if len(output) not in (2, 3):
            raise ValueError(f"output must be (pred, label) or (pred, label, spacing), got {len(output)} elements.")
        spacing = output[2] if len(output) == 3 else self._batch_spacing()
        self.metric_fn(output[0], output[1], spacing=spacing)

    def _batch_spacing(self) -> Any:
        if self.spacing_key is None or self._engine is None:
            return None
        batch = self._engine.state.batch
        items = batch if isinstance(batch, (list, tuple)) else [batch]
        if any(self.spacing_key not in item for item in items):
            raise KeyError(f"spacing_key {self.spacing_key!r} is not in the engine batch (keys: {sorted(items[0])}).")
        return [item[self.spacing_key] for item in batch] if isinstance(batch, (list, tuple)) else batch[self.spacing_key]


def _distance_name(stem: str, unit: str) -> str:
    if unit not in _UNITS:
        raise ValueError(f"unit must be one of {_UNITS}, got {unit!r}.")
    return f"{stem}_{unit}"


class LesionDice(LesionMetricHandler):
    """Mean Dice over lesion cases (empty-mask rule of :mod:`breastseg.workflows.metrics.case`)."""

    def __init__(self, output_transform: Callable = _identity, save_details: bool = True, spacing_key: str | None = None) -> None:
        super().__init__("dice", output_transform, save_details, spacing_key)


class LesionIoU(LesionMetricHandler):
    """Mean IoU (Jaccard index) over lesion cases."""

    def __init__(self, output_transform: Callable = _identity, save_details: bool = True, spacing_key: str | None = None) -> None:
        super().__init__("iou", output_transform, save_details, spacing_key)


class LesionHD95(LesionMetricHandler):
    """Mean HD95 over lesion cases, in pixels (``unit="px"``) or millimetres (``unit="mm"``, spacing-known cases)."""

    def __init__(
        self, unit: str = "px", output_transform: Callable = _identity, save_details: bool = True, spacing_key: str | None = None
    ) -> None:
        super().__init__(_distance_name("hd95", unit), output_transform, save_details, spacing_key)


class LesionHDMax(LesionMetricHandler):
    """Mean maximum (100th percentile) Hausdorff distance over lesion cases, in ``"px"`` or ``"mm"``."""

    def __init__(
        self, unit: str = "px", output_transform: Callable = _identity, save_details: bool = True, spacing_key: str | None = None
    ) -> None:
        super().__init__(_distance_name("hd_max", unit), output_transform, save_details, spacing_key)


class LesionSensitivity(LesionMetricHandler):
    """Mean pixel sensitivity over cases with a lesion in the label."""

    def __init__(self, output_transform: Callable = _identity, save_details: bool = True, spacing_key: str | None = None) -> None:
        super().__init__("sensitivity", output_transform, save_details, spacing_key)


class LesionSpecificity(LesionMetricHandler):
    """Mean pixel specificity over lesion cases."""

    def __init__(self, output_transform: Callable = _identity, save_details: bool = True, spacing_key: str | None = None) -> None:
        super().__init__("specificity", output_transform, save_details, spacing_key)


class LesionPrecision(LesionMetricHandler):
    """Mean pixel precision over cases with a predicted lesion."""

    def __init__(self, output_transform: Callable = _identity, save_details: bool = True, spacing_key: str | None = None) -> None:
        super().__init__("precision", output_transform, save_details, spacing_key)


class LesionAccuracy(LesionMetricHandler):
    """Mean pixel accuracy over lesion cases."""

    def __init__(self, output_transform: Callable = _identity, save_details: bool = True, spacing_key: str | None = None) -> None:
        super().__init__("accuracy", output_transform, save_details, spacing_key)


class PixelAUC(IgniteMetricHandler):
    """Pixel-level ROC AUC of :class:`~breastseg.workflows.metrics.PixelROCAUC`.

    Args:
        num_bins: score levels of the histogram.
        output_transform: maps ``engine.state.output`` to ``(probabilities, label)``: the probabilities
            before thresholding, e.g. ``from_engine(["prob", "label"])``.
        save_details: keep the per-case histograms in ``engine.state.metric_details``.
    """

    def __init__(self, num_bins: int = 1001, output_transform: Callable = _identity, save_details: bool = True) -> None:
        super().__init__(metric_fn=PixelROCAUC(num_bins), output_transform=output_transform, save_details=save_details)
