"""Detector training pieces for the shared harness: multi-scale inputs, the padded-box loss, k-means anchors.

- :class:`MultiScaleSchedule` / :class:`MultiScaleResize`: YOLOv3's multi-scale training (paper 002 Sect. 3.2:
  "input images are dynamically resized every 10 batches ... randomly chosen from multiples of 32"). The size
  of iteration ``i`` is a pure function of the seed and ``(i - 1) // interval``, so a run is reproducible,
  resumes on the same sizes and does not depend on data-loader workers; the handler resizes the batch in the
  trainer's process right before the iteration runs.
- :class:`DetectorLoss`: :class:`~breastseg.networks.YOLOv3Loss` taking the padded ``(B, M, 5)`` box batch of
  :func:`~breastseg.workflows.two_stage.detection.data.collate_boxes`, with its terms exposed for per-epoch logging.
- :func:`fit_anchors`: the nine anchors by k-means (1 - IoU) on the training boxes at the reference input size,
  written to a JSON file; :func:`read_anchors` reads them back for evaluation and inference.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from breastseg.networks.yolo_loss import YOLOv3Loss
from breastseg.networks.yolov3 import YOLO_STRIDES, validate_anchors

from .anchors import box_sizes, kmeans_anchors, mean_best_iou
from .data import crop_batch, resize_batch, unpad_boxes

__all__ = [
    "MultiScaleSchedule",
    "MultiScaleResize",
    "DetectorLoss",
    "training_boxes",
    "fit_anchors",
    "read_anchors",
]

logger = logging.getLogger("breastseg.detection")
_DIVISOR = YOLO_STRIDES[-1]


class MultiScaleSchedule:
    """Input sizes (H, W) drawn every ``interval`` batches from widths that are multiples of 32.

    Args:
        min_width: smallest input width (a multiple of 32).
        max_width: largest input width (a multiple of 32).
        aspect: height / width of the inputs (2 for the paper's portrait 2048 x 1024 frame); each height is
            ``aspect * width`` rounded to the nearest multiple of 32.
        interval: batches between two draws (10 in YOLOv3 and the paper).
        seed: the draws' seed.

    Raises:
        ValueError: for widths that are not positive multiples of 32 or in the wrong order, a non-positive
            aspect or interval.
    """

    def __init__(self, min_width: int, max_width: int, aspect: float = 2.0, interval: int = 10, seed: int = 0) -> None:
        for name, value in (("min_width", min_width), ("max_width", max_width)):
            if value <= 0 or value % _DIVISOR:
                raise ValueError(f"{name} must be a positive multiple of {_DIVISOR}, got {value}.")
        if min_width > max_width:
            raise ValueError(f"min_width ({min_width}) must not exceed max_width ({max_width}).")
        if aspect <= 0 or interval < 1:
            raise ValueError(f"aspect and interval must be positive, got {aspect}, {interval}.")
        self.widths = list(range(int(min_width), int(max_width) + 1, _DIVISOR))
        self.aspect = float(aspect)
        self.interval = int(interval)
        self.seed = int(seed)

    def height_of(self, width: int) -> int:
        return max(_DIVISOR, round(width * self.aspect / _DIVISOR) * _DIVISOR)

    @property
    def sizes(self) -> list[tuple[int, int]]:
        """Every (H, W) the schedule can draw."""
        return [(self.height_of(width), width) for width in self.widths]

    def size_at(self, iteration: int) -> tuple[int, int]:
        """The (H, W) of 1-based ``iteration`` (Ignite's ``engine.state.iteration``)."""
        if iteration < 1:
            raise ValueError(f"iterations count from 1, got {iteration}.")
        block = (iteration - 1) // self.interval
        width = self.widths[int(np.random.default_rng([self.seed, block]).integers(len(self.widths)))]
        return self.height_of(width), width


class MultiScaleResize:
    """Trainer handler: before each iteration, resize ``engine.state.batch`` to the schedule's size.

    Images are resized bilinearly with antialiasing (as the MSF views are made) and the padded boxes of the
    batch's ``label`` are scaled along; the size in use is ``engine.state.input_size``.

    With ``crop_size`` the network is then fed one ``crop_size`` window per resized image instead of the whole
    image (:func:`~breastseg.workflows.two_stage.detection.data.crop_batch`, windows drawn from the schedule's seed and the
    iteration): the schedule sets the scale, the crop the compute. A CPU shortcut, not the paper's recipe
    (``None``, the default, trains on whole images).

    Args:
        schedule: the :class:`MultiScaleSchedule`.
        crop_size: optional (H, W) window, no larger than the schedule's smallest size.
        positive_fraction: share of windows centred on a mass (images with masses only).
        image_key, label_key: batch keys of images and padded boxes.
    """

    def __init__(
        self,
        schedule: MultiScaleSchedule,
        crop_size: Sequence[int] | None = None,
        positive_fraction: float = 0.5,
        image_key: str = "image",
        label_key: str = "label",
    ) -> None:
        if crop_size is not None:
            smallest = min(schedule.sizes)
            if crop_size[0] > smallest[0] or crop_size[1] > smallest[1]:
                raise ValueError(f"crop_size {tuple(crop_size)} exceeds the smallest multi-scale size {smallest}.")
        self.schedule = schedule
        self.crop_size = None if crop_size is None else tuple(int(v) for v in crop_size)
        self.positive_fraction = positive_fraction
        self.image_key = image_key
        self.label_key = label_key

    def attach(self, engine: Engine) -> None:
        if not engine.has_event_handler(self, Events.ITERATION_STARTED):
            engine.add_event_handler(Events.ITERATION_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        iteration = engine.state.iteration
        size = self.schedule.size_at(iteration)
        batch = resize_batch(engine.state.batch, size, self.image_key, self.label_key)
        if self.crop_size is not None:
            rng = np.random.default_rng([self.schedule.seed, iteration, 1])
            batch = crop_batch(batch, self.crop_size, rng, self.positive_fraction, self.image_key, self.label_key)
        engine.state.batch = batch
        engine.state.input_size = size


class DetectorLoss(YOLOv3Loss):
    """:class:`~breastseg.networks.YOLOv3Loss` on the padded ``(B, M, 5)`` batch of boxes.

    ``terms`` holds the last call's box, objectness and class terms (for
    :class:`~breastseg.workflows.engine.loss_terms.LossTermsAverage`). Arguments as ``YOLOv3Loss``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.terms: dict[str, torch.Tensor] = {}

    def forward(self, heads: Sequence[torch.Tensor], targets: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        if isinstance(targets, torch.Tensor):
            targets = unpad_boxes(targets)
        components = self.components(heads, targets)
        self.terms = {f"loss_{name}": value.detach() for name, value in components.items()}  # read once per epoch
        box_weight, objectness_weight, class_weight = self.weights
        return box_weight * components["box"] + objectness_weight * components["objectness"] + class_weight * components["class"]


def training_boxes(samples: Iterable[dict[str, Any]], box_key: str = "boxes") -> np.ndarray:
    """All ``(N, 4)`` boxes of a dataset's samples, stacked (``(0, 4)`` when there is none)."""
    boxes = [np.asarray(torch.as_tensor(sample[box_key]).reshape(-1, 4), dtype=np.float64) for sample in samples]
    return np.concatenate(boxes, axis=0) if boxes else np.zeros((0, 4))


def fit_anchors(
    boxes: np.ndarray,
    frame_size: Sequence[int],
    input_size: Sequence[int],
    output_file: str | Path | None = None,
    seed: int = 0,
    num_anchors: int = 9,
    boxes_size: Sequence[int] | None = None,
) -> list[list[float]]:
    """Nine YOLOv3 anchors by k-means on the training boxes, in pixels of the reference detector input.

    Boxes in the pixels of ``boxes_size`` are scaled to ``input_size`` (the training input the anchors refer to: with
    multi-scale training the network sees sizes around it, and the anchors stay fixed in input pixels as in
    YOLOv3), clustered with distance 1 - IoU and sorted by area (anchors 0-2 to the stride-8 head).

    Args:
        boxes: ``(M, 4)`` training boxes (see :func:`training_boxes`).
        frame_size: (H, W) of the detector frame (recorded in ``output_file``).
        input_size: (H, W) of the reference detector input.
        output_file: when given, a JSON file ``{"anchors", "input_size", "frame_size", "boxes", "mean_best_iou",
            "seed"}`` is written there (folders created).
        seed: seed of the k-means++ draws.
        num_anchors: 9 for YOLOv3.
        boxes_size: (H, W) of the image the boxes are in: the training cache's size (default ``frame_size``).

    Returns:
        ``num_anchors`` ``[width, height]`` pairs, increasing area, rounded to 0.01 px.

    Raises:
        ValueError: when there are fewer distinct training boxes than anchors (say how many there are).
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    source = frame_size if boxes_size is None else boxes_size
    scale_x = float(input_size[1]) / float(source[1])
    scale_y = float(input_size[0]) / float(source[0])
    sizes = box_sizes(boxes, scale_x=scale_x, scale_y=scale_y)
    distinct = len(np.unique(sizes, axis=0))
    if distinct < num_anchors:
        raise ValueError(
            f"{len(sizes)} training boxes ({distinct} distinct sizes) cannot give {num_anchors} anchors: "
            "the training split holds too few masses."
        )
    anchors = np.round(kmeans_anchors(sizes, num_anchors=num_anchors, seed=seed), 2)
    quality = mean_best_iou(sizes, anchors)
    logger.info("anchors (w, h) at input %s from %d boxes, mean best IoU %.3f: %s", tuple(input_size), len(sizes), quality, anchors.tolist())
    if output_file is not None:
        path = Path(output_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "anchors": anchors.tolist(),
            "input_size": [int(v) for v in input_size],
            "frame_size": [int(v) for v in frame_size],
            "boxes": len(sizes),
            "mean_best_iou": round(float(quality), 4),
            "seed": int(seed),
        }
        path.write_text(json.dumps(record, indent=2) + "\n")
    return anchors.tolist()


def read_anchors(anchors_file: str | Path) -> list[list[float]]:
    """The anchors of a :func:`fit_anchors` JSON file.

    Raises:
        FileNotFoundError: no such file (train the detector first).
        ValueError: the file holds no valid ``anchors`` (the message names the file).
    """
    path = Path(anchors_file)
    if not path.is_file():
        raise FileNotFoundError(f"no detector anchors at {path}: train the detector first (it writes them there).")
    try:
        anchors = json.loads(path.read_text())["anchors"]
        validate_anchors(anchors)
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path} holds no valid detector anchors: {err}") from err
    return anchors
