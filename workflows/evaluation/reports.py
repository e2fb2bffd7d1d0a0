"""Evaluation reports: the per-case CSV, the summary JSON, K-fold summaries and figures.

A *case row* is a dict holding a case's metadata (``case_id``, ``dataset``, ``birads``...) and the columns
of :data:`breastseg.workflows.metrics.CASE_COLUMNS` (``status`` as a name), as built by :func:`case_rows`.
Means follow the empty-mask rule of :mod:`breastseg.workflows.metrics.case`: only the statuses eligible
for a metric enter its mean, and an eligible case whose value is undefined (millimetres without a known
spacing, 0/0) is counted in ``n_undefined``, never dropped silently. Figures are drawn on an Agg canvas
(no display, no change to the process-wide matplotlib backend).
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from breastseg.workflows.metrics import CASE_COLUMNS, CASE_STATUSES, ELIGIBLE_STATUSES, METRIC_NAMES, table_to_rows

__all__ = [
    "case_rows",
    "write_case_csv",
    "summarise",
    "write_summary_json",
    "mean_sd_over_folds",
    "plot_confusion_matrix",
    "violin_groups",
    "plot_violin",
    "plot_roc",
]

_COUNTS = ("tp", "fp", "fn", "tn")
_VIOLIN_GROUPS = ("birads", "acr")


def case_rows(table: torch.Tensor, metadata: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Join case metadata with a case table, one row per case.

    Args:
        table: ``(N, len(CASE_COLUMNS))`` table (``engine.state.metric_details`` of a lesion handler).
        metadata: ``N`` dicts, in the table's order (e.g. record fields without patient identifiers).

    Raises:
        ValueError: when the counts differ or a metadata key collides with a metric column.
    """
    metric_rows = table_to_rows(table)
    if len(metric_rows) != len(metadata):
        raise ValueError(f"{len(metric_rows)} table rows but {len(metadata)} metadata entries.")
    rows = []
    for meta, metrics in zip(metadata, metric_rows):
        clash = sorted(set(meta) & set(CASE_COLUMNS))
        if clash:
            raise ValueError(f"case {meta.get('case_id')!r}: metadata keys {clash} collide with metric columns.")
        rows.append({**meta, **metrics})
    return rows


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return value


def write_case_csv(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Write one line per case: metadata columns first (``case_id`` leading), then the metric columns.

    Missing metadata is an empty cell, undefined metrics are ``nan`` (the ``status`` column says why),
    lists are JSON. Parent folders are created.
    """
    metadata_keys: list[str] = []
    for row in rows:
        metadata_keys += [k for k in row if k not in CASE_COLUMNS and k not in metadata_keys]
    if "case_id" in metadata_keys:
        metadata_keys.remove("case_id")
        metadata_keys.insert(0, "case_id")
    columns = metadata_keys + [c for c in CASE_COLUMNS if any(c in row for row in rows)]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({column: _csv_cell(row.get(column)) for column in columns})
    return path


def _value(row: Mapping[str, Any], key: str) -> float:
    value = row.get(key)
    return math.nan if value is None or value == "" else float(value)


def _describe(values: list[float]) -> dict[str, float]:
    if not values:
        return {"mean": math.nan, "sd": math.nan, "median": math.nan}
    return {
        "mean": statistics.fmean(values),
        "sd": statistics.stdev(values) if len(values) > 1 else math.nan,
        "median": statistics.median(values),
    }


def _status(row: Mapping[str, Any]) -> str:
    status = row.get("status")
    if status not in CASE_STATUSES:
        raise ValueError(f"case {row.get('case_id')!r}: status must be one of {CASE_STATUSES}, got {status!r}.")
    return status


def summarise(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Summary of case rows: per metric mean, sample SD, median, ``n`` and ``n_undefined``; counts per status.

    Only the statuses of :data:`~breastseg.workflows.metrics.ELIGIBLE_STATUSES` enter a metric (lesion
    means exclude ``both_empty``); ``*_mm`` metrics run over the spacing-known eligible cases, the others
    are counted in ``n_undefined``. ``pixel_confusion`` sums the pixel counts of every case (both-empty
    images included: their pixels are true negatives).

    Raises:
        ValueError: naming the case when a row has no valid ``status``.
    """
    statuses = [_status(row) for row in rows]
    metrics = {}
    for name in METRIC_NAMES:
        eligible = [row for row, status in zip(rows, statuses) if status in ELIGIBLE_STATUSES[name]]
        values = [_value(row, name) for row in eligible if name in row]
        defined = [v for v in values if not math.isnan(v)]
        metrics[name] = {**_describe(defined), "n": len(defined), "n_undefined": len(values) - len(defined)}
    return {
        "n_cases": len(rows),
        "status_counts": {status: statuses.count(status) for status in CASE_STATUSES},
        "spacing_known": sum(1 for row in rows if row.get("spacing_known") in (True, 1, "True", "1")),
        "metrics": metrics,
        "pixel_confusion": {key: int(sum(_value(row, key) for row in rows if key in row)) for key in _COUNTS},
        "empty_mask_rule": "breastseg.workflows.metrics.case",
    }


def _json_safe(value: Any) -> Any:
    """NaN/inf become ``null`` so the file is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return _json_safe(value.item())
    return value


def write_summary_json(summary: Mapping[str, Any], path: str | Path) -> Path:
    """Write a summary as strict, 4-space indented JSON (undefined numbers are ``null``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_json_safe(summary), indent=4, allow_nan=False) + "\n", encoding="utf-8")
    return path


def mean_sd_over_folds(summaries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """K-fold report: per metric the mean and sample SD of the fold means, and the folds it was defined in.

    Args:
        summaries: one :func:`summarise` result per fold (or its JSON, where undefined means are ``null``).

    Raises:
        ValueError: when ``summaries`` is empty.
    """
    if not summaries:
        raise ValueError("mean_sd_over_folds needs at least one fold summary.")
    metrics = {}
    for name in METRIC_NAMES:
        fold_means = [s["metrics"][name]["mean"] for s in summaries if name in s.get("metrics", {})]
        defined = [float(m) for m in fold_means if m is not None and not math.isnan(float(m))]
        described = _describe(defined)
        metrics[name] = {
            "mean": described["mean"],
            "sd": described["sd"],
            "n_folds": len(defined),
            "n_folds_undefined": len(summaries) - len(defined),
        }
    status_counts = {s: sum(summary["status_counts"].get(s, 0) for summary in summaries) for s in CASE_STATUSES}
    return {"n_folds": len(summaries), "metrics": metrics, "status_counts": status_counts}


def _save(figure: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=120, bbox_inches="tight")
    return path


def plot_confusion_matrix(tp: int, fp: int, fn: int, tn: int, path: str | Path, normalize: bool = True) -> Path:
    """Pixel-level confusion matrix: rows are the true class, columns the prediction (background, lesion).

    Args:
        tp, fp, fn, tn: pixel counts (e.g. ``summarise(rows)["pixel_confusion"]``).
        path: PNG to write.
        normalize: divide each row by its total (the fraction of true background / lesion pixels given each
            label); a row with no pixel stays 0.

    Raises:
        ValueError: when a count is negative.
    """
    counts = np.array([[tn, fp], [fn, tp]], dtype=np.float64)
    if (counts < 0).any():
        raise ValueError(f"pixel counts must be >= 0, got tp={tp}, fp={fp}, fn={fn}, tn={tn}.")
    totals = counts.sum(axis=1, keepdims=True)
    shown = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0) if normalize else counts
    figure = Figure(figsize=(4, 3.6))
    axes = figure.add_subplot()
    image = axes.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    figure.colorbar(image, ax=axes)
    classes = ("background", "lesion")
    axes.set_xticks([0, 1], classes)
    axes.set_yticks([0, 1], classes)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    for (i, j), value in np.ndenumerate(shown):
        text = f"{value:.3f}" if normalize else f"{int(value)}"
        colour = "white" if value > shown.max() / 2 else "black"
        axes.text(j, i, text, ha="center", va="center", color=colour)
    axes.set_title("pixel confusion" + (", row-normalised" if normalize else ""), fontsize=10)
    return _save(figure, path)


def _category_key(category: str) -> tuple[int, float, str]:
    """Natural order ("2" < "4a" < "10"), ``unknown`` last."""
    if category == "unknown":
        return (2, 0.0, category)
    digits = "".join(ch for ch in category if ch.isdigit() or ch == ".")
    try:
        return (0, float(digits), category)
    except ValueError:
        return (1, 0.0, category)


def violin_groups(rows: Iterable[Mapping[str, Any]], by: str, metric: str) -> dict[str, list[float]]:
    """Per-case ``metric`` values grouped by BI-RADS or ACR category, categories in plotting order.

    Cases enter as in the metric's mean (eligible status, defined value); a missing category is
    ``unknown``; categories are in natural order ("2" < "4a" < "4b" < "10") with ``unknown`` last.

    Raises:
        ValueError: for an unknown ``by`` or ``metric``.
    """
    if by not in _VIOLIN_GROUPS:
        raise ValueError(f"by must be one of {_VIOLIN_GROUPS}, got {by!r}.")
    if metric not in METRIC_NAMES:
        raise ValueError(f"metric must be one of {METRIC_NAMES}, got {metric!r}.")
    groups: dict[str, list[float]] = {}
    for row in rows:
        value = _value(row, metric)
        if _status(row) in ELIGIBLE_STATUSES[metric] and not math.isnan(value):
            category = "unknown" if row.get(by) in (None, "") else str(row[by])
            groups.setdefault(category, []).append(value)
    return {category: groups[category] for category in sorted(groups, key=_category_key)}


def plot_violin(rows: Iterable[Mapping[str, Any]], by: str, metric: str, path: str | Path) -> Path:
    """Per-case ``metric`` by BI-RADS (``by="birads"``) or ACR (``by="acr"``), every case drawn as a point.

    Groups as :func:`violin_groups`; a category whose values are all equal (e.g. one case) is drawn as
    its points only.

    Raises:
        ValueError: for an unknown ``by`` or ``metric``, or when no case is eligible.
    """
    groups = violin_groups(rows, by, metric)
    if not groups:
        raise ValueError(f"no case is eligible for a {metric} violin plot.")
    categories = list(groups)
    figure = Figure(figsize=(1.2 * len(categories) + 2, 3.6))
    axes = figure.add_subplot()
    spread = [i for i, c in enumerate(categories, start=1) if len(set(groups[c])) > 1]
    if spread:
        axes.violinplot([groups[categories[i - 1]] for i in spread], positions=spread, showmedians=True)
    jitter = np.random.default_rng(0)  # fixed: the same rows always give the same figure
    for position, category in enumerate(categories, start=1):
        values = groups[category]
        axes.scatter(position + jitter.uniform(-0.08, 0.08, len(values)), values, s=8, color="black", alpha=0.6)
    axes.set_xticks(range(1, len(categories) + 1), [f"{c}\n(n={len(groups[c])})" for c in categories])
    axes.set_xlabel("ACR density" if by == "acr" else "BI-RADS")
    axes.set_ylabel(metric)
    return _save(figure, path)


def plot_roc(curve: Mapping[str, Any], path: str | Path) -> Path:
    """Pixel ROC curve from :meth:`breastseg.workflows.metrics.PixelROCAUC.roc_curve`, with its AUC.

    Raises:
        ValueError: when the curve is undefined (no lesion or no background pixel).
    """
    auc = curve.get("auc")
    if auc is None or math.isnan(float(auc)):
        raise ValueError("the ROC curve is undefined (no lesion or no background pixel).")
    figure = Figure(figsize=(4, 4))
    axes = figure.add_subplot()
    axes.plot(curve["fpr"], curve["tpr"], label=f"AUC = {float(auc):.4f}")
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8)
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.set_xlabel("false positive rate")
    axes.set_ylabel("true positive rate")
    axes.legend(loc="lower right")
    return _save(figure, path)
