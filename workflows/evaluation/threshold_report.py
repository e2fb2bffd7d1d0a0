"""Per-threshold case counts of an evaluation: how many cases reach a score, and their average (paper 004, Table 4).

For each threshold (``Dice >= 0.45``, ``Jaccard <= ...``, ``HD <= 2.75``...) the report gives the number of
cases that pass it (NC) and the mean of the metric over those cases (AS). Cases whose prediction is empty
are counted and listed beside the table, as the paper discusses: a lesion the model missed fails every
threshold (Dice 0, HD = the image diagonal under the project's empty-mask rule), an image with neither
lesion nor prediction has no score and enters no threshold.

:class:`ThresholdReportWriter` reads the ``cases.csv`` that :class:`~breastseg.workflows.evaluation.evaluate.CaseReportWriter`
writes in the same folder (attach it after that writer), writes ``thresholds.json`` and ``thresholds.csv``, and
logs copies without case ids (``case_key`` instead) and the counts to the evaluation's MLflow run.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import operator
import statistics
from pathlib import Path
from typing import Any, Mapping, Sequence

from ignite.engine import Engine, Events

from breastseg.workflows.metrics import METRIC_NAMES

__all__ = [
    "TABLE4_THRESHOLDS",
    "EMPTY_PREDICTION_STATUSES",
    "threshold_label",
    "threshold_table",
    "read_case_csv",
    "ThresholdReportWriter",
    "print_threshold_report",
]

logger = logging.getLogger("breastseg.threshold_report")

#: Paper 004, Table 4: (metric column, comparison, threshold). ``hd_max_px`` is the maximum (not 95th percentile)
#: symmetric Hausdorff distance, Eq. 3, in pixels of the network's grid.
TABLE4_THRESHOLDS: tuple[tuple[str, str, float], ...] = (
    ("dice", ">=", 0.45),
    ("dice", ">=", 0.65),
    ("iou", ">=", 0.35),
    ("iou", ">=", 0.55),
    ("hd_max_px", "<=", 2.75),
)

#: Statuses of :mod:`breastseg.workflows.metrics.case` whose prediction is empty.
EMPTY_PREDICTION_STATUSES = ("missed", "both_empty")

_COMPARISONS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}
_ABBREVIATIONS = {"dice": "DS", "iou": "JI", "hd_max_px": "HD", "hd95_px": "HD95"}


def _checked(thresholds: Sequence[Sequence[Any]]) -> list[tuple[str, str, float]]:
    checked = []
    for entry in thresholds:
        if len(entry) != 3:
            raise ValueError(f"a threshold is [metric, comparison, value], got {list(entry)!r}")
        metric, comparison, value = entry
        if metric not in METRIC_NAMES:
            raise ValueError(f"threshold metric {metric!r} is not a case metric; choose from {METRIC_NAMES}")
        if comparison not in _COMPARISONS:
            raise ValueError(f"threshold comparison {comparison!r} must be one of {sorted(_COMPARISONS)}")
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"threshold value for {metric!r} must be finite, got {value}")
        checked.append((metric, comparison, value))
    if not checked:
        raise ValueError("no threshold given")
    return checked


def threshold_label(metric: str, comparison: str, value: float) -> str:
    """``"DS >= 0.45"`` style label (the paper's abbreviations where it has one)."""
    return f"{_ABBREVIATIONS.get(metric, metric)} {comparison} {value:g}"


def _number(value: Any) -> float:
    if value is None or value == "":
        return math.nan
    return float(value)


def threshold_table(
    rows: Sequence[Mapping[str, Any]], thresholds: Sequence[Sequence[Any]] = TABLE4_THRESHOLDS, case_column: str = "case_id"
) -> dict[str, Any]:
    """Per threshold, the number of cases passing and their average score; the cases predicted empty.

    Args:
        rows: case rows (``status`` and the metric columns, e.g. read back from ``cases.csv``).
        thresholds: ``(metric, comparison, value)`` entries; comparison is one of ``>=``, ``<=``, ``>``, ``<``.
        case_column: the row key naming each case in the list of empty predictions.

    Raises:
        ValueError: for a malformed threshold, or a row without ``status`` or without a thresholded metric.
    """
    checked = _checked(thresholds)
    table = []
    for metric, comparison, value in checked:
        scores = []
        for row in rows:
            if "status" not in row or metric not in row:
                raise ValueError(f"case {row.get(case_column)!r} has no 'status' or {metric!r} column")
            score = _number(row[metric])
            if not math.isnan(score) and _COMPARISONS[comparison](score, value):
                scores.append(score)
        table.append(
            {
                "metric": metric,
                "comparison": comparison,
                "threshold": value,
                "label": threshold_label(metric, comparison, value),
                "n_cases": len(scores),
                "average": statistics.fmean(scores) if scores else math.nan,
            }
        )
    empty = [{"case": row.get(case_column), "status": row["status"]} for row in rows if row["status"] in EMPTY_PREDICTION_STATUSES]
    return {
        "n_cases": len(rows),
        "thresholds": table,
        "empty_predictions": {"count": len(empty), "missed_lesions": sum(e["status"] == "missed" for e in empty), "cases": empty},
    }


def read_case_csv(path: str | Path) -> list[dict[str, str]]:
    """The rows of a ``cases.csv`` (values as strings; empty cells stay empty)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no per-case CSV at {path}: attach ThresholdReportWriter after CaseReportWriter")
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def _write(report: dict[str, Any], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    json_path = folder / "thresholds.json"
    json_path.write_text(json.dumps(_json_safe(report), indent=4, allow_nan=False) + "\n", encoding="utf-8")
    csv_path = folder / "thresholds.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["threshold", "n_cases", "average"])
        for entry in report["thresholds"]:
            writer.writerow([entry["label"], entry["n_cases"], entry["average"]])
        writer.writerow(["empty prediction", report["empty_predictions"]["count"], ""])
    return [json_path, csv_path]


class ThresholdReportWriter:
    """Write the threshold table of an evaluation next to its ``cases.csv`` and log it to MLflow.

    Args:
        output_dir: the evaluation folder (where ``CaseReportWriter`` writes ``cases.csv``).
        thresholds: ``[metric, comparison, value]`` entries (paper 004's Table 4 by default).
        tracker: the evaluation run's MLflow handler (``None``: files only).
        enabled: ``False`` on non-zero DDP ranks.
    """

    def __init__(
        self,
        output_dir: str | Path,
        thresholds: Sequence[Sequence[Any]] = TABLE4_THRESHOLDS,
        tracker: Any = None,
        enabled: bool = True,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.thresholds = _checked(thresholds)
        self.tracker = tracker
        self.enabled = enabled
        self.report: dict[str, Any] | None = None

    def attach(self, engine: Engine) -> None:
        if not engine.has_event_handler(self, Events.EPOCH_COMPLETED):
            engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if not self.enabled:
            return
        rows = read_case_csv(self.output_dir / "cases.csv")
        self.report = threshold_table(rows, self.thresholds)
        _write(self.report, self.output_dir)
        public = _write(threshold_table(rows, self.thresholds, case_column="case_key"), self.output_dir / "mlflow")
        if self.tracker is not None and self.tracker.run_id is not None:
            for path in public:
                self.tracker._guard("artifact logging", self.tracker.client.log_artifact, self.tracker.run_id, str(path), "evaluation")
            metrics = {}
            for entry in self.report["thresholds"]:
                name = f"{entry['metric']}_{'ge' if '>' in entry['comparison'] else 'le'}_{entry['threshold']:g}"
                metrics[f"test_cases_{name}"] = float(entry["n_cases"])
                if math.isfinite(entry["average"]):
                    metrics[f"test_average_{name}"] = entry["average"]
            metrics["test_empty_predictions"] = float(self.report["empty_predictions"]["count"])
            self.tracker._log_metrics(metrics, step=0)
        logger.info("threshold report: %s", self.output_dir / "thresholds.json")


def print_threshold_report(eval_dir: str | Path) -> dict[str, Any]:
    """Log the threshold table written by :class:`ThresholdReportWriter` (and return it)."""
    path = Path(eval_dir) / "thresholds.json"
    if not path.is_file():
        raise FileNotFoundError(f"no threshold report at {path}")
    report = json.loads(path.read_text())
    for entry in report["thresholds"]:
        average = "undefined (no case)" if entry["average"] is None else f"{entry['average']:.4f}"
        logger.info("%s: %d of %d cases, average %s", entry["label"], entry["n_cases"], report["n_cases"], average)
    logger.info("empty predictions: %d (missed lesions: %d)", report["empty_predictions"]["count"], report["empty_predictions"]["missed_lesions"])
    return report
