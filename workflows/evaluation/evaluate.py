"""Validation and evaluation pieces every bundle's evaluator uses.

- :func:`key_metric`: one :class:`~breastseg.workflows.metrics.LesionDice` handler whose per-case table
  holds every metric (Dice, IoU, sensitivity, specificity, precision, accuracy, HD95/HD max in pixels
  and mm) under the project's empty-mask rule; the table is computed once per batch;
- :class:`LesionMetricsSummary`: puts the mean of every column into ``engine.state.metrics`` (so MLflow
  logs them each validation) from that single table;
- :class:`CaseReportWriter`: the per-case CSV (case id + metadata + every metric), the summary JSON and
  the plots, logged as artifacts of the evaluation run.

Pixel spacing travels in the image's affine (set by the readers from the DICOM header; unknown spacing
is flagged ``spacing_known=False`` in the metadata) and follows every resize and crop, so HD95 in mm is
that of the grid the metric sees.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path
from typing import Any, Sequence

import torch
from ignite.engine import Engine, Events

from breastseg.workflows.metrics import METRIC_NAMES, LesionDice, reduce_case_table
from breastseg.workflows.tracking.runs import DropMessages

__all__ = [
    "pred_label_spacing",
    "key_metric",
    "segmentation_metrics",
    "LesionMetricsSummary",
    "CaseReportWriter",
    "print_summary",
]

logger = logging.getLogger("breastseg.evaluation")

#: columns of the case CSV that are never logged to MLflow (they are, or derive from, DICOM PatientID)
_IDENTIFYING_COLUMNS = ("case_id", "patient_id", "image", "label")


def _spacing_of(image: Any) -> list[list[float]] | None:
    """Per-case ``[row_mm, col_mm]`` from a batched MetaTensor's affine; NaN where unknown."""
    affine = getattr(image, "affine", None)
    meta = getattr(image, "meta", None)
    if affine is None or meta is None:
        return None
    affine = torch.as_tensor(affine, dtype=torch.float64)
    if affine.ndim == 2:
        affine = affine[None]
    known = meta.get("spacing_known", [True] * affine.shape[0])
    if isinstance(known, (bool, int)) or (torch.is_tensor(known) and known.ndim == 0):
        known = [bool(known)] * affine.shape[0]
    spacing = []
    for case, flag in zip(affine, known):
        rows_mm, cols_mm = float(case[:2, 0].norm()), float(case[:2, 1].norm())
        spacing.append([rows_mm, cols_mm] if bool(flag) else [math.nan, math.nan])
    return spacing


def pred_label_spacing(output: dict[str, Any]) -> tuple[Any, Any, Any]:
    """``(pred, label, spacing)`` of a batched engine output (spacing from the label's affine).

    The masks are handed over as ``bool``: finding their bounding box is then ~3x cheaper than on
    float32 (``benchmarks/hd95.py --dtype``).
    """
    return output["pred"] > 0.5, output["label"] > 0.5, _spacing_of(output["label"])


def key_metric(name: str = "val_mean_dice") -> dict[str, Any]:
    """The key validation metric: mean lesion Dice; its per-case table carries every metric."""
    return {name: LesionDice(output_transform=pred_label_spacing, save_details=True)}


def segmentation_metrics() -> dict[str, Any]:
    """Additional metric handlers: none, :class:`LesionMetricsSummary` reads the key metric's table."""
    return {}


class LesionMetricsSummary:
    """Mean of every case-table column into ``engine.state.metrics`` as ``val_<metric>``.

    Attach it before the MLflow handler so the values are logged with the key metric.
    """

    def __init__(self, table_key: str = "val_mean_dice", prefix: str = "val_") -> None:
        self.table_key = table_key
        self.prefix = prefix

    def attach(self, engine: Engine) -> None:
        if not engine.has_event_handler(self, Events.EPOCH_COMPLETED):
            engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        table = engine.state.metric_details.get(self.table_key)
        if table is None:
            return
        for name in METRIC_NAMES:
            mean, _, _ = reduce_case_table(table, name)
            engine.state.metrics[f"{self.prefix}{name}"] = mean


def case_key(case_id: str) -> str:
    """A stable pseudonym of a case id for what leaves the machine (CBIS case ids embed PatientID)."""
    return hashlib.sha256(case_id.encode()).hexdigest()[:12]


_BEST_METRIC_LINE = ("Got new best metric",)


class CaseReportWriter:
    """Per-case CSV, summary JSON and plots of an evaluation, logged to its MLflow run.

    Local files (``output_dir``) keep the case ids and metadata for the team's own analysis; the copies
    logged to MLflow replace the case id with :func:`case_key` and drop every identifying column.

    Args:
        output_dir: folder of ``cases.csv``, ``summary.json`` and the plots.
        metadata: ``case_id`` -> record metadata (:func:`breastseg.workflows.commands.bundle.case_metadata`).
        tracker: the evaluation run's MLflow handler (``None``: files only).
        table_key: the metric whose per-case table is reported.
        plots: any of ``confusion_matrix``, ``violin_birads``, ``violin_acr``.
        enabled: ``False`` on non-zero DDP ranks.
    """

    def __init__(
        self,
        output_dir: str | Path,
        metadata: dict[str, dict[str, Any]],
        tracker: Any = None,
        table_key: str = "val_mean_dice",
        plots: Sequence[str] = ("confusion_matrix", "violin_birads", "violin_acr"),
        enabled: bool = True,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.metadata = metadata
        self.tracker = tracker
        self.table_key = table_key
        self.plots = tuple(plots)
        self.enabled = enabled
        self._cases: list[str] = []
        self._lesions: list[int] = []
        self.summary: dict[str, Any] | None = None

    def attach(self, engine: Engine) -> None:
        # a test evaluation scores once: MONAI's "Got new best metric" line would only mislead
        if not any(getattr(f, "fragments", None) == _BEST_METRIC_LINE for f in engine.logger.filters):
            engine.logger.addFilter(DropMessages(*_BEST_METRIC_LINE))
        if not engine.has_event_handler(self.reset, Events.EPOCH_STARTED):
            engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
            engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
            engine.add_event_handler(Events.EPOCH_COMPLETED, self.write)

    def reset(self, engine: Engine) -> None:
        self._cases, self._lesions = [], []

    def collect(self, engine: Engine) -> None:
        batch = engine.state.batch
        cases = list(batch["case_id"])
        lesions = batch.get("lesion_index")
        self._cases.extend(str(c) for c in cases)
        self._lesions.extend(int(i) for i in lesions) if lesions is not None else self._lesions.extend([0] * len(cases))

    def rows(self, engine: Engine) -> list[dict[str, Any]]:
        from monai.utils import string_list_all_gather

        from breastseg.workflows.evaluation import reports

        cases = string_list_all_gather(self._cases)
        lesions = [int(v) for v in string_list_all_gather([str(i) for i in self._lesions])]
        metadata = []
        for case_id, lesion in zip(cases, lesions):
            meta = {"case_id": case_id, "case_key": case_key(case_id), "lesion_index": lesion}
            meta.update({k: v for k, v in self.metadata.get(case_id, {}).items() if not isinstance(v, (list, dict)) and k not in meta})
            metadata.append(meta)
        return reports.case_rows(engine.state.metric_details[self.table_key], metadata)

    def write(self, engine: Engine) -> None:
        from breastseg.workflows.evaluation import reports

        rows = self.rows(engine)
        if not self.enabled:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        reports.write_case_csv(rows, self.output_dir / "cases.csv")
        self.summary = reports.summarise(rows)
        reports.write_summary_json(self.summary, self.output_dir / "summary.json")
        shared = self.output_dir / "mlflow"
        shared.mkdir(exist_ok=True)
        public_rows = [{k: v for k, v in row.items() if k not in _IDENTIFYING_COLUMNS} for row in rows]
        reports.write_case_csv(public_rows, shared / "cases.csv")
        reports.write_summary_json(self.summary, shared / "summary.json")
        self._plot(rows, shared)
        if self.tracker is not None and self.tracker.run_id is not None:
            # the metrics themselves are the evaluator's, which the tracker logs under the split's name
            self.tracker._guard("artifact logging", self.tracker.client.log_artifacts, self.tracker.run_id, str(shared), "evaluation")
        logger.info("evaluation report: %s", self.output_dir)

    def _plot(self, rows: list[dict[str, Any]], folder: Path) -> None:
        from breastseg.workflows.evaluation import reports

        if "confusion_matrix" in self.plots:
            counts = self.summary["pixel_confusion"]
            reports.plot_confusion_matrix(counts["tp"], counts["fp"], counts["fn"], counts["tn"], folder / "confusion_matrix.png")
        for by in ("birads", "acr"):
            if f"violin_{by}" in self.plots:
                reports.plot_violin(rows, by=by, metric="dice", path=folder / f"dice_by_{by}.png")
        for png in folder.glob("*.png"):
            (self.output_dir / png.name).write_bytes(png.read_bytes())


def print_summary(eval_dir: str | Path) -> dict[str, Any]:
    """Log the evaluation summary written by :class:`CaseReportWriter` (and return it)."""
    path = Path(eval_dir) / "summary.json"
    if not path.is_file():
        raise FileNotFoundError(f"no evaluation summary at {path}")
    summary = json.loads(path.read_text())
    for name, stats in summary.get("metrics", {}).items():
        if isinstance(stats, dict) and "mean" in stats:
            logger.info("test %s: %s", name, stats["mean"])
    return summary
