"""Evaluation results in a paper's table layout, and the pixel ROC curve of an evaluation.

A bundle names its table's columns as ``[header, summary metric, scale]`` (e.g. ``["DSC (%)", "dice",
100]``; the metric ``auc`` is the pixel ROC AUC). :class:`PixelROCWriter` writes the ROC curve of an
evaluation next to :class:`~breastseg.workflows.evaluation.evaluate.CaseReportWriter`'s files; :func:`write_table`
turns that folder into one table row (``table.md``/``table.json``); :func:`format_table` joins rows of
several evaluations (an ablation) into one table.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ignite.engine import Engine, Events

__all__ = ["PixelROCWriter", "table_row", "format_table", "percent_cell", "write_table", "ROC_FILE"]

logger = logging.getLogger("breastseg.paper_tables")

ROC_FILE = "roc_curve.json"


class PixelROCWriter:
    """Write the pixel ROC curve and AUC of an evaluation (``roc_curve.json``, ``roc.png``), logged to MLflow.

    Args:
        output_dir: the evaluation folder.
        metric_key: the :class:`~breastseg.workflows.metrics.PixelAUC` handler's name (its per-case histograms
            are in ``engine.state.metric_details``).
        tracker: the evaluation run's MLflow handler, or ``None``.
        enabled: ``False`` on non-zero DDP ranks.
    """

    def __init__(self, output_dir: str | Path, metric_key: str = "val_pixel_auc", tracker: Any = None, enabled: bool = True) -> None:
        self.output_dir = Path(output_dir)
        self.metric_key = metric_key
        self.tracker = tracker
        self.enabled = enabled

    def attach(self, engine: Engine) -> None:
        if not engine.has_event_handler(self, Events.EPOCH_COMPLETED):
            engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        from breastseg.workflows.evaluation.reports import plot_roc, write_summary_json
        from breastseg.workflows.metrics import roc_curve_from_histograms

        details = getattr(engine.state, "metric_details", {}).get(self.metric_key)
        if details is None:
            raise KeyError(f"no per-case histograms under {self.metric_key!r}: add PixelAUC(save_details=True) to the evaluator")
        if not self.enabled:
            return
        totals = details.sum(dim=0).cpu().numpy()
        curve = roc_curve_from_histograms(totals[0], totals[1])
        self.output_dir.mkdir(parents=True, exist_ok=True)
        write_summary_json(curve, self.output_dir / ROC_FILE)
        if not math.isnan(curve["auc"]):
            plot_roc(curve, self.output_dir / "roc.png")
        if self.tracker is not None and self.tracker.run_id is not None:
            for name in (ROC_FILE, "roc.png"):
                if (self.output_dir / name).is_file():
                    self.tracker._guard("artifact logging", self.tracker.client.log_artifact, self.tracker.run_id, str(self.output_dir / name), "evaluation")
        logger.info("pixel ROC AUC %.4f (%s)", curve["auc"], self.output_dir / ROC_FILE)


def _read(eval_dir: Path) -> tuple[dict[str, Any], float]:
    summary_file = eval_dir / "summary.json"
    if not summary_file.is_file():
        raise FileNotFoundError(f"no evaluation summary at {summary_file}")
    summary = json.loads(summary_file.read_text())
    roc_file = eval_dir / ROC_FILE
    auc = json.loads(roc_file.read_text()).get("auc") if roc_file.is_file() else None
    return summary, math.nan if auc is None else float(auc)


def table_row(eval_dir: str | Path, columns: Sequence[Sequence[Any]], model: str) -> dict[str, Any]:
    """One table row from an evaluation folder: ``{"model": ..., <header>: value, ...}``.

    Args:
        eval_dir: folder holding ``summary.json`` (and ``roc_curve.json`` for the ``auc`` column).
        columns: ``[header, metric, scale]`` triples; ``metric`` is a summary metric name or ``auc``.
        model: the row's label.

    Raises:
        FileNotFoundError: when the folder has no ``summary.json``.
        KeyError: naming a column whose metric the summary does not hold.
    """
    summary, auc = _read(Path(eval_dir))
    row: dict[str, Any] = {"model": model}
    for header, metric, scale in columns:
        if metric == "auc":
            value = auc
        else:
            if metric not in summary.get("metrics", {}):
                raise KeyError(f"column {header!r}: {Path(eval_dir) / 'summary.json'} has no metric {metric!r}")
            mean = summary["metrics"][metric]["mean"]
            value = math.nan if mean is None else float(mean)
        row[header] = value * float(scale)
    row["n_cases"] = summary.get("n_cases")
    return row


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[Sequence[Any]]) -> str:
    """A Markdown table of ``rows`` (``nan`` where a value is undefined)."""
    headers = ["Model", *(c[0] for c in columns), "n"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        cells = [str(row["model"])] + [_cell(row.get(c[0])) for c in columns] + [str(row.get("n_cases"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def percent_cell(value: float) -> str:
    """A fraction as a percentage cell with two decimals; ``n/a`` when undefined (NaN)."""
    return "n/a" if math.isnan(value) else f"{100 * value:.2f}"


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "nan"
    return f"{value:.2f}" if abs(value) >= 10 else f"{value:.4f}"


def write_table(eval_dir: str | Path, columns: Sequence[Sequence[Any]], model: str) -> dict[str, Any]:
    """Write ``table.md`` and ``table.json`` (one row) into ``eval_dir``, log the table and return the row."""
    from breastseg.workflows.evaluation.reports import write_summary_json

    row = table_row(eval_dir, columns, model)
    text = format_table([row], columns)
    (Path(eval_dir) / "table.md").write_text(text)
    write_summary_json(row, Path(eval_dir) / "table.json")
    logger.info("results in the paper's layout:\n%s", text)
    return row
