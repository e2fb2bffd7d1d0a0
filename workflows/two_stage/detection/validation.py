"""Detector validation on the harness evaluator: decoded boxes and AP at IoU >= 0.5 (paper 002, Table 1).

The evaluator runs YOLOv3 in ``eval()`` mode (decoded predictions ``(B, N, 6)``); :class:`DecodeDetections`
(its post-processing) turns them into per-image ``(K, 5)`` scored boxes after the confidence threshold and
MONAI NMS; :class:`DetectionAP` (an Ignite metric, the key metric) gathers them with the padded ground-truth
boxes of the batch and computes :func:`~breastseg.workflows.two_stage.detection.metrics.average_precision` over the
whole validation split.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import Any

import numpy as np
import torch
from ignite.metrics import Metric

from breastseg.networks.yolov3 import decode_boxes

from .data import unpad_boxes
from .metrics import average_precision

__all__ = ["DecodeDetections", "DetectionAP"]


class DecodeDetections:
    """Evaluator post-processing: ``pred`` (B, N, 5 + C) -> a list of ``(K, 5)`` ``(x0, y0, x1, y1, score)``.

    Args:
        conf_threshold: lowest score kept. Low by default (0.01) so the precision-recall curve behind AP covers
            the whole score range; the MSF stage uses its own per-scale thresholds.
        nms_threshold: NMS IoU (Darknet's 0.45).
        max_detections: most boxes kept per image.
        pred_key, image_key: batch keys (the image gives the size boxes are clipped to).
    """

    def __init__(
        self,
        conf_threshold: float = 0.01,
        nms_threshold: float = 0.45,
        max_detections: int = 100,
        pred_key: str = "pred",
        image_key: str = "image",
    ) -> None:
        self.conf_threshold = conf_threshold
        self.nms_threshold = nms_threshold
        self.max_detections = max_detections
        self.pred_key = pred_key
        self.image_key = image_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        size = tuple(int(v) for v in d[self.image_key].shape[-2:])
        d[self.pred_key] = decode_boxes(d[self.pred_key], self.conf_threshold, self.nms_threshold, size, self.max_detections)
        return d


def _pred_and_label(output: Mapping[str, Any]) -> tuple[Any, Any]:
    return output["pred"], output["label"]


class DetectionAP(Metric):
    """Average precision at ``iou_threshold`` of all detections of an evaluation run (an Ignite metric).

    ``update`` takes ``(detections, label)``: per-image ``(K, 5)`` detections (from :class:`DecodeDetections`)
    and the padded ``(B, M, 5)`` ground truth of the batch. ``compute`` returns the AP over every image seen
    (NaN when the split holds no ground-truth box at all).

    Args:
        iou_threshold: the overlap that makes a hit (0.5, Table 1).
        output_transform: engine output -> ``(detections, label)``.
    """

    def __init__(self, iou_threshold: float = 0.5, output_transform: Callable = _pred_and_label, device: str | torch.device = "cpu") -> None:
        self.iou_threshold = iou_threshold
        super().__init__(output_transform=output_transform, device=device)

    def reset(self) -> None:
        self._detections: list[np.ndarray] = []
        self._truths: list[np.ndarray] = []

    def update(self, output: tuple[Any, Any]) -> None:
        detections, label = output
        truths = unpad_boxes(torch.as_tensor(label))
        if len(detections) != len(truths):
            raise ValueError(f"{len(detections)} detection lists for a batch of {len(truths)} images.")
        for found, truth in zip(detections, truths):
            self._detections.append(torch.as_tensor(found).detach().cpu().numpy().reshape(-1, 5))
            self._truths.append(truth.detach().cpu().numpy())

    def compute(self) -> float:
        return average_precision(self._detections, self._truths, self.iou_threshold)
