"""Evaluation of the whole detection stage (paper 002 Tables 1-2, Figure 5): single scales and MSF.

:func:`detection_tables` runs the detector once per image and view with a low score threshold, so that the
same detections serve the precision-recall curves (AP) and, filtered at the per-view confidence thresholds
(greedy NMS never lets a lower score suppress a higher one, so filtering after NMS equals thresholding
before it), the multi-scale fusion at every lambda. It returns plain data and can write it as JSON and
Markdown tables.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from breastseg.workflows.evaluation.paper_tables import percent_cell

from .data import detector_chain
from .metrics import average_precision, froc_curve
from .msf import PAPER_VIEW_SIZES, MultiScaleFusion, detect_at_scales, per_view

__all__ = ["PAPER_LAMBDAS", "detection_tables", "detection_markdown"]

logger = logging.getLogger("breastseg.detection")

#: the lambdas of paper 002's Table 2
PAPER_LAMBDAS = (0.0, 0.5, 0.6, 0.7)



def _operating_point(detections: list[np.ndarray], truths: list[np.ndarray], iou_threshold: float) -> tuple[float, float]:
    """(TPR, FPavg) keeping every detection."""
    return froc_curve(detections, truths, iou_threshold).operating_point()


def detection_tables(
    detector: torch.nn.Module,
    records: Sequence[dict[str, Any]],
    chain: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    lambdas: Sequence[float] = PAPER_LAMBDAS,
    view_sizes: Sequence[Sequence[int]] = PAPER_VIEW_SIZES,
    conf_thresholds: float | Sequence[float] = 0.25,
    nms_thresholds: float | Sequence[float] = 0.45,
    ap_conf_threshold: float = 0.01,
    iou_threshold: float = 0.5,
    output_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """AP@0.5 and TPR@FPavg of the detector at each single view and with MSF at each lambda.

    Args:
        detector: a trained :class:`~breastseg.networks.YOLOv3` (put in ``eval()``).
        records: datalist records (``bundle.select_records(..., lesions_only=False)``: normal images count for
            the false positives per image).
        chain: record -> ``{"image": (C, H, W) frame in [0, 1], "boxes": (N, 4) frame pixels}``; default
            :func:`~breastseg.workflows.two_stage.detection.data.detector_chain` (2048 x 1024, stretch).
        lambdas: MSF thresholds (Table 2: 0, 0.5, 0.6, 0.7).
        view_sizes: detector inputs (H, W), multiples of 32 (default: the paper's five views).
        conf_thresholds: per-view (or one) score threshold applied before MSF and for the single-view
            operating points (Darknet's 0.25; the paper gives none).
        nms_thresholds: per-view (or one) NMS IoU (Darknet's 0.45).
        ap_conf_threshold: the lowest score kept for the AP curves.
        iou_threshold: IoU of a hit (0.5).
        output_dir: when given, ``detection_tables.json`` and ``detection_tables.md`` are written there.
        device: where the detector runs.

    Returns:
        ``{"images", "lesions", "iou_threshold", "view_sizes", "conf_thresholds", "nms_thresholds",
        "single_scale": [{"view_size", "ap50", "tpr", "fp_per_image"}, ...],
        "msf": [{"lambda", "ap50", "tpr", "fp_per_image", "images_without_box"}, ...]}``; AP is NaN and TPR
        undefined (NaN) when the records hold no mass.

    Raises:
        ValueError: no records, a lambda outside [0, 1], per-view thresholds of the wrong length, or a
            threshold above the AP floor ``ap_conf_threshold``.
    """
    if not records:
        raise ValueError("detection_tables needs at least one record.")
    view_sizes = [tuple(int(v) for v in size) for size in view_sizes]
    conf = per_view(conf_thresholds, len(view_sizes), "conf_thresholds")
    nms = per_view(nms_thresholds, len(view_sizes), "nms_thresholds")
    if min(conf) < ap_conf_threshold:
        raise ValueError(f"conf_thresholds {conf} must not be below ap_conf_threshold {ap_conf_threshold}.")
    fusions = [MultiScaleFusion(threshold=float(value)) for value in lambdas]
    chain = chain or detector_chain()
    detector = detector.to(device).eval()

    truths: list[np.ndarray] = []
    detections_by_view: list[list[np.ndarray]] = [[] for _ in view_sizes]
    per_lambda: list[list[np.ndarray]] = [[] for _ in fusions]
    for record in records:
        sample = chain(dict(record))
        image = torch.as_tensor(sample["image"]).to(device)
        truths.append(np.asarray(torch.as_tensor(sample["boxes"]), dtype=np.float64).reshape(-1, 4))
        found = detect_at_scales(detector, image, view_sizes, ap_conf_threshold, nms)
        kept = []
        for view, (detections, threshold) in enumerate(zip(found, conf)):
            detections_by_view[view].append(detections)
            kept.append(detections[detections[:, 4] >= threshold])
        for index, fuse in enumerate(fusions):
            per_lambda[index].append(fuse(kept, image_size=tuple(image.shape[1:])).detections)

    lesions = int(sum(len(t) for t in truths))
    has_lesions = lesions > 0
    single = []
    for view, size in enumerate(view_sizes):
        thresholded = [d[d[:, 4] >= conf[view]] for d in detections_by_view[view]]
        tpr, fp = _operating_point(thresholded, truths, iou_threshold) if has_lesions else (float("nan"), float("nan"))
        single.append(
            {
                "view_size": list(size),
                "ap50": average_precision(detections_by_view[view], truths, iou_threshold),
                "tpr": tpr,
                "fp_per_image": fp,
            }
        )
    fused = []
    for fuse, detections in zip(fusions, per_lambda):
        tpr, fp = _operating_point(detections, truths, iou_threshold) if has_lesions else (float("nan"), float("nan"))
        fused.append(
            {
                "lambda": fuse.threshold,
                "ap50": average_precision(detections, truths, iou_threshold),
                "tpr": tpr,
                "fp_per_image": fp,
                "images_without_box": int(sum(len(d) == 0 for d in detections)),
            }
        )
    tables = {
        "images": len(records),
        "lesions": lesions,
        "iou_threshold": iou_threshold,
        "view_sizes": [list(size) for size in view_sizes],
        "conf_thresholds": conf,
        "nms_thresholds": nms,
        "single_scale": single,
        "msf": fused,
    }
    if output_dir is not None:
        folder = Path(output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "detection_tables.json").write_text(json.dumps(tables, indent=2) + "\n")
        (folder / "detection_tables.md").write_text(detection_markdown(tables))
        logger.info("detection tables written to %s", folder)
    return tables



def detection_markdown(tables: dict[str, Any]) -> str:
    """Tables 1 and 2 of paper 002 as Markdown: AP@0.5 per view and with MSF, TPR@FPavg per lambda."""
    lines = [
        f"Detection on {tables['images']} images, {tables['lesions']} masses (IoU >= {tables['iou_threshold']}).",
        "",
        "| Detector input (W x H) | AP (%) | TPR (%) | FPavg |",
        "|---|---|---|---|",
    ]
    for row in tables["single_scale"]:
        height, width = row["view_size"]
        lines.append(f"| {width} x {height} | {percent_cell(row['ap50'])} | {percent_cell(row['tpr'])} | {row['fp_per_image']:.2f} |")
    for row in tables["msf"]:
        lines.append(f"| MSF, lambda = {row['lambda']:g} | {percent_cell(row['ap50'])} | {percent_cell(row['tpr'])} | {row['fp_per_image']:.2f} |")
    lines += ["", "| lambda | " + " | ".join(f"{row['lambda']:g}" for row in tables["msf"]) + " |"]
    lines.append("|---|" + "---|" * len(tables["msf"]))
    cells = [f"{percent_cell(row['tpr'])}@{row['fp_per_image']:.2f}" for row in tables["msf"]]
    lines.append("| TPR (%) @ FPavg | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
