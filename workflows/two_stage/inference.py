"""Inference output of paper 002's pipeline: per mammogram, the full-resolution mask, an overlay and the boxes.

:class:`PipelineMaskWriter` is the inference evaluator's handler. For each mammogram it writes
``<stem>_pred.png`` / ``<stem>_pred.nii.gz`` (as :class:`~breastseg.workflows.evaluation.inference.MaskWriter`, on the
original grid), ``<stem>_overlay.png`` (the mammogram with the found boxes in red and the mask contours in
green) and, once all are done, ``boxes.csv`` (``image, x0, y0, x1, y1, score``; an image with no row had no
detection, and its mask is empty). :func:`served_settings` is what the registered pipeline (one MLflow model: detector,
fusion and segmenter) needs beside its weights to rebuild the same pipeline from ``inference.json``.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from ignite.engine import Engine, Events

from breastseg.workflows.evaluation.inference import ImagePrediction, MaskWriter

__all__ = ["overlay", "PipelineMaskWriter", "served_settings"]

logger = logging.getLogger("breastseg.inference")

#: the ``pipeline`` settings of ``train.json`` that ``inference.json`` takes
SERVED_PIPELINE_KEYS = ("view_sizes", "fusion_threshold", "conf_threshold", "nms_threshold")
BOX_COLOUR = (255, 0, 0)
CONTOUR_COLOUR = (0, 255, 0)


def overlay(image: np.ndarray, mask: np.ndarray, boxes: np.ndarray, line_width: int | None = None) -> np.ndarray:
    """An RGB uint8 picture of a grey ``(H, W)`` image (min-max scaled) with ``boxes`` ``(K, >= 4)``
    ``(x0, y0, x1, y1, ...)`` outlined in red and the contours of the binary ``mask`` in green."""
    grey = np.asarray(image, dtype=np.float64)
    low, high = float(grey.min()), float(grey.max())
    grey = (grey - low) / (high - low) * 255 if high > low else np.zeros_like(grey)
    picture = np.ascontiguousarray(np.repeat(grey.astype(np.uint8)[..., None], 3, axis=2))
    width = line_width or max(1, round(max(grey.shape) / 400))
    boxes = np.asarray(boxes, dtype=np.float64)
    for x0, y0, x1, y1 in boxes[:, :4] if boxes.size else []:
        cv2.rectangle(picture, (int(x0), int(y0)), (max(int(np.ceil(x1)) - 1, int(x0)), max(int(np.ceil(y1)) - 1, int(y0))), BOX_COLOUR, width)
    contours, _ = cv2.findContours(np.asarray(mask, dtype=np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(picture, contours, -1, CONTOUR_COLOUR, width)
    return picture


class PipelineMaskWriter(MaskWriter):
    """Write each mammogram's full-resolution mask, overlay PNG and boxes (see the module docstring).

    Args:
        output_dir: folder of the outputs.
        inferer: the evaluator's :class:`~breastseg.workflows.two_stage.pipeline.PatchPasteInferer` (its boxes).
        writer_options: ``threshold``, ``input_dir``, ``overwrite`` of :class:`~breastseg.workflows.evaluation.inference.MaskWriter`
            (``boxes.csv`` included).

    Expects an evaluator with ``decollate=False`` whose ``pred`` holds the pasted probabilities.
    """

    output_suffixes = (*MaskWriter.output_suffixes, "_overlay.png")

    def __init__(self, output_dir: str | Path, inferer: Any, **writer_options: Any) -> None:
        super().__init__(output_dir, **writer_options)
        self.inferer = inferer
        self.boxes: list[dict[str, Any]] = []

    def attach(self, engine: Engine) -> None:
        super().attach(engine)
        if not engine.has_event_handler(self.write_boxes, Events.COMPLETED):
            engine.add_event_handler(Events.COMPLETED, self.write_boxes)

    def restore(self, batch: dict[str, Any], pred: torch.Tensor) -> list[ImagePrediction]:
        """Each mammogram's pasted probabilities (already on its grid) with the detections of the inferer's last call."""
        images = batch["image"]
        affines = torch.as_tensor(images.affine, dtype=torch.float64).reshape(-1, *images.affine.shape[-2:])
        predictions = []
        for index, result in enumerate(self.inferer.last_results):
            source = Path(str(images.meta["filename_or_obj"][index]))
            detections = result.detections if result.detected else np.zeros((0, 5))
            pasted = pred[index, 0].detach().cpu().float().numpy()
            predictions.append(ImagePrediction(source, pasted.shape, affines[index].numpy(), self.threshold, pasted=pasted, detections=detections))
        return predictions

    def __call__(self, engine: Engine) -> None:
        images = engine.state.batch["image"]
        for index, prediction in enumerate(self.restore(engine.state.batch, engine.state.output["pred"])):
            self.write(prediction)
            picture = overlay(images[index, 0].cpu().numpy(), prediction.mask, prediction.detections)
            path = self._target(f"{prediction.source.stem}_overlay.png")
            cv2.imwrite(str(path), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
            self.written.append(path)
            if not len(prediction.detections):
                logger.info("%s: nothing detected, empty mask", prediction.source.name)
            for x0, y0, x1, y1, score in prediction.detections:
                self.boxes.append({"image": prediction.source.name, "x0": x0, "y0": y0, "x1": x1, "y1": y1, "score": score})

    def planned_outputs(self, engine: Engine) -> list[Path]:
        return [*super().planned_outputs(engine), self.output_dir / "boxes.csv"]

    def write_boxes(self, engine: Engine) -> None:
        path = self._target("boxes.csv")
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["image", "x0", "y0", "x1", "y1", "score"])
            writer.writeheader()
            writer.writerows(self.boxes)
        self.written.append(path)
        self.boxes = []


def served_settings(trained_settings: dict[str, Any], detector_overrides: dict[str, Any], pipeline: dict[str, Any]) -> dict[str, Any]:
    """The overrides of ``inference.json`` the registered pipeline carries (its ``configs/trained_with.json``): the
    segmenter's trained settings, the detector stage's overrides and the pipeline settings of the training, and
    the detector's files where the registered bundle keeps them, ``models/detector/`` beside the segmenter's
    weights (the detector stage reads its anchors from ``<train_output_dir>/detector/``)."""
    return {
        **trained_settings,
        "detector_stage#overrides": dict(detector_overrides),
        **{f"pipeline#{key}": pipeline[key] for key in SERVED_PIPELINE_KEYS if key in pipeline},
        "train_output_dir": "@ckpt_dir",
    }
