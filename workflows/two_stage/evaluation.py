"""Evaluation of paper 002's pipeline: per-case reports that say what was detected, and Tables 4 and 5.

- Table 4: patch Dice, the segmenter on patches cut around the ground-truth masses (the bundle's validation
  evaluator on the evaluation split);
- Table 5: full-image Dice of three set-ups, each an evaluator built by the harness with a
  :class:`~breastseg.workflows.two_stage.pipeline.PatchPasteInferer`: ``one_stage`` (the segmenter on the whole
  down-sampled mammogram), ``two_stage_single_scale`` (boxes of the detector at one view, "w/o MSF") and
  ``two_stage_msf`` (boxes of the multi-scale fusion).

Each evaluator writes its own ``cases.csv``/``summary.json`` in ``<eval_dir>/<setup>``
(:class:`PipelineCaseReportWriter` adds the boxes and a ``detected`` column: a mammogram with no box is a miss,
scored Dice 0 by the empty-mask rule). :func:`write_tables` gathers them into ``table4.md``, ``table5.md`` and
``tables.json``; the detector stage's Tables 1-2 (``detection_tables.json``/``.md``) are written beside them by
:func:`breastseg.workflows.two_stage.detection.detection_tables`; :func:`log_tables` logs them all with every set-up's de-identified report to the evaluation's MLflow
run and closes it.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Mapping

from ignite.engine import Engine

from breastseg.workflows.evaluation.evaluate import CaseReportWriter
from breastseg.workflows.evaluation.paper_tables import percent_cell

__all__ = [
    "DETECTION_TABLES",
    "PATCH_SETUP",
    "HEADLINE_SETUP",
    "TABLE5_SETUPS",
    "PipelineCaseReportWriter",
    "write_tables",
    "log_tables",
    "average_tables",
]

logger = logging.getLogger("breastseg.two_stage")

#: the detector stage's Tables 1-2 (:func:`breastseg.workflows.two_stage.detection.detection_tables`)
DETECTION_TABLES = "detection_tables.json"
#: folder of the patch evaluation (Table 4)
PATCH_SETUP = "patch"
#: the set-up whose summary is the evaluation's ``summary.json``: the full pipeline
HEADLINE_SETUP = "two_stage_msf"
#: Table 5 set-ups: folder -> the paper's row name
TABLE5_SETUPS = {
    "one_stage": "one-stage",
    "two_stage_single_scale": "two-stage w/o MSF",
    "two_stage_msf": "two-stage with MSF",
}


class PipelineCaseReportWriter(CaseReportWriter):
    """:class:`~breastseg.workflows.evaluation.evaluate.CaseReportWriter` plus what the pipeline found in each mammogram:
    ``detected`` (False: nothing survived the detector / lambda, the mask is empty) and ``boxes`` (the found
    ``[x0, y0, x1, y1, score]`` in full-resolution pixels).

    Args:
        inferer: the evaluator's :class:`~breastseg.workflows.two_stage.pipeline.PatchPasteInferer`.
        other arguments: as :class:`~breastseg.workflows.evaluation.evaluate.CaseReportWriter`.
    """

    def __init__(self, output_dir: str | Path, metadata: dict[str, dict[str, Any]], inferer: Any, **kwargs: Any) -> None:
        super().__init__(output_dir, metadata, **kwargs)
        self.inferer = inferer
        self._found: list[dict[str, Any]] = []

    def reset(self, engine: Engine) -> None:
        super().reset(engine)
        self._found = []

    def collect(self, engine: Engine) -> None:
        super().collect(engine)
        for result in self.inferer.last_results:
            boxes = [[round(float(v), 2) for v in row] for row in result.detections] if result.detected else []
            self._found.append({"detected": result.detected, "boxes": boxes})

    def rows(self, engine: Engine) -> list[dict[str, Any]]:
        rows = super().rows(engine)
        if len(rows) != len(self._found):
            raise ValueError(f"{len(rows)} evaluated cases but {len(self._found)} pipeline results (use batch size 1 per process)")
        return [{**row, **found} for row, found in zip(rows, self._found)]


def _summary(eval_dir: Path, setup: str) -> dict[str, Any] | None:
    path = eval_dir / setup / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _dice(summary: Mapping[str, Any] | None) -> tuple[float, int]:
    if summary is None:
        return math.nan, 0
    stats = summary["metrics"]["dice"]
    return float(stats["mean"]), int(stats["n"])



def write_tables(eval_dir: str | Path, model: str) -> dict[str, Any]:
    """Table 4 (patch Dice) and Table 5 (full-image Dice per set-up) of ``model`` from the set-ups' summaries.

    Writes ``table4.md``, ``table5.md`` and ``tables.json`` in ``eval_dir``; a set-up that was not evaluated is
    ``n/a``. Returns the ``tables.json`` content (Dice as fractions).
    """
    eval_dir = Path(eval_dir)
    patch_dice, patch_n = _dice(_summary(eval_dir, PATCH_SETUP))
    full = {setup: _summary(eval_dir, setup) for setup in TABLE5_SETUPS}
    tables: dict[str, Any] = {"model": model, "table4": {"dice": patch_dice, "n": patch_n}, "table5": {}}
    for setup, summary in full.items():
        dice, count = _dice(summary)
        missed = (summary or {}).get("status_counts", {}).get("missed", 0)
        tables["table5"][setup] = {"setup": TABLE5_SETUPS[setup], "dice": dice, "n": count, "missed": missed}
    table4 = ["| Method | Dice (%) | n patches |", "|---|---|---|", f"| {model} | {percent_cell(patch_dice)} | {patch_n} |"]
    table5 = ["| Method | Setup | Dice (%) | n images | missed |", "|---|---|---|---|---|"]
    for row in tables["table5"].values():
        table5.append(f"| {model} | {row['setup']} | {percent_cell(row['dice'])} | {row['n']} | {row['missed']} |")
    (eval_dir / "table4.md").write_text("\n".join(table4) + "\n")
    (eval_dir / "table5.md").write_text("\n".join(table5) + "\n")
    (eval_dir / "tables.json").write_text(json.dumps(tables, indent=4, default=str) + "\n")
    headline = eval_dir / HEADLINE_SETUP / "summary.json"
    if headline.is_file():  # the pipeline's result is the evaluation's summary (``breastseg cv``, print_summary)
        (eval_dir / "summary.json").write_text(headline.read_text())
    for line in table4 + [""] + table5:
        logger.info(line)
    return tables


def log_tables(eval_dir: str | Path, tracker: Any) -> None:
    """Log the tables, Table 4/5 Dice as metrics and each Table 5 set-up's de-identified report (its ``mlflow``
    folder) to the evaluation run of ``tracker`` (a :class:`~breastseg.workflows.tracking.runs.ResilientMLFlowHandler`),
    then close that run. Nothing is logged without a tracker or an open run."""
    if tracker is None or tracker.run_id is None:
        return
    eval_dir = Path(eval_dir)
    tables = json.loads((eval_dir / "tables.json").read_text())
    metrics = {"table4_patch_dice": tables["table4"]["dice"]}
    metrics.update({f"table5_{setup}_dice": row["dice"] for setup, row in tables["table5"].items()})
    detection = eval_dir / DETECTION_TABLES
    if detection.is_file():  # Tables 1-2 of the detector stage's evaluation
        found = json.loads(detection.read_text())
        for row in found.get("single_scale", []):
            metrics["table1_ap50_view_{}x{}".format(*row["view_size"])] = row["ap50"]
        for row in found.get("msf", []):
            metrics[f"table2_msf_lambda_{row['lambda']}_tpr"] = row["tpr"]
            metrics[f"table2_msf_lambda_{row['lambda']}_fp_per_image"] = row["fp_per_image"]
    tracker._log_metrics({k: v for k, v in metrics.items() if isinstance(v, float) and math.isfinite(v)}, step=0)
    for name in ("table4.md", "table5.md", "tables.json", DETECTION_TABLES, "detection_tables.md"):
        if (eval_dir / name).is_file():
            tracker._guard("artifact logging", tracker.client.log_artifact, tracker.run_id, str(eval_dir / name), "evaluation")
    for setup in TABLE5_SETUPS:
        public = eval_dir / setup / "mlflow"
        if public.is_dir():
            tracker._guard("artifact logging", tracker.client.log_artifacts, tracker.run_id, str(public), f"evaluation/{setup}")
    tracker.close()


def average_tables(eval_dirs: Sequence[str | Path], output_file: str | Path | None = None) -> dict[str, Any]:
    """The paper's protocol summary: Table 4/5 Dice over repeated random splits (T1 ... T5), as mean ± standard
    error (sample SD / sqrt(n), the paper's "±") of the splits' values, each split's value kept.

    Args:
        eval_dirs: one evaluation folder (with ``tables.json``) per split.
        output_file: when given, the result is written there as JSON.

    Raises:
        FileNotFoundError: naming the folder without ``tables.json``.
    """
    values: dict[str, list[float]] = {}
    for folder in eval_dirs:
        path = Path(folder) / "tables.json"
        if not path.is_file():
            raise FileNotFoundError(f"no tables.json in {folder}: evaluate that split first")
        tables = json.loads(path.read_text())
        values.setdefault("table4_patch_dice", []).append(float(tables["table4"]["dice"]))
        for setup, row in tables["table5"].items():
            values.setdefault(f"table5_{setup}_dice", []).append(float(row["dice"]))
    result: dict[str, Any] = {"splits": len(eval_dirs)}
    for name, series in values.items():
        defined = [v for v in series if math.isfinite(v)]
        mean = statistics.fmean(defined) if defined else math.nan
        error = statistics.stdev(defined) / math.sqrt(len(defined)) if len(defined) > 1 else math.nan
        result[name] = {"per_split": series, "mean": mean, "standard_error": error}
    if output_file is not None:
        Path(output_file).write_text(json.dumps(result, indent=4) + "\n")
    return result
