"""Detector data of paper 002: mammograms in the portrait 2048x1024 (H x W) frame with one box per mass.

The chain (:func:`detector_chain`) loads a datalist record with the project readers, takes one box per
8-connected component of the mass mask on the *original* pixels (:class:`~breastseg.transforms.spatial.boxes.MaskToBoxesd`),
brings the image to the frame and maps the boxes with it (:class:`ToDetectorFramed`), scales intensities to
[0, 1] and, for validation, resizes image and boxes to one detector input size (:class:`ResizeWithBoxesd`).
Images without a mass (INbreast normals, ``label_format="none"``) keep an empty ``(0, 4)`` box list: they are
the detector's negatives.

Other aspect ratios (``fit``):

- ``"stretch"`` (default): the whole mammogram is resized to the frame, x and y scaled independently. The
  paper runs the detector on the whole mammogram resized to 2:1 views (160x320 ... 480x960, W x H), and
  :func:`~breastseg.workflows.two_stage.detection.msf.detect_at_scales` resizes whatever image it gets the same way, so
  a detector trained on stretched frames sees at inference exactly what it saw in training, whatever the
  original size; boxes map back by a per-axis scale.
- ``"pad"``: zero padding (split evenly between both ends of the short axis) to 2:1 first, then an isotropic
  resize: mass shapes are kept, at the price of padded rows (CBIS-DDSM films are about 1.7:1, INbreast 1.2:1).

The side of the breast is left as it is (no flip): YOLOv3 sees both sides in training.

Batches: :func:`collate_boxes` stacks the images and pads the per-image boxes into one ``label`` tensor
``(B, M, 5)`` of rows ``(x0, y0, x1, y1, class)`` with class ``-1`` on padding rows, so MONAI's default
``prepare_batch`` hands it to the loss and the metrics as it is; :func:`unpad_boxes` undoes it.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import MetaTensor, list_data_collate
from monai.transforms import Compose, DeleteItemsd, MapTransform, Pad, Resize, ScaleIntensityd

from breastseg.transforms.io import LoadBreastImaged, LoadLesionMaskd
from breastseg.transforms.spatial.boxes import MaskToBoxesd, RandFlipBoxesd, clip_boxes, scale_boxes

__all__ = [
    "PAPER_FRAME_SIZE",
    "FRAME_FITS",
    "FrameGeometry",
    "ToDetectorFramed",
    "ResizeWithBoxesd",
    "detector_chain",
    "collate_boxes",
    "unpad_boxes",
    "resize_batch",
    "crop_batch",
]

#: the paper's full-mammogram size, (H, W) = 2048 x 1024 (portrait)
PAPER_FRAME_SIZE = (2048, 1024)
FRAME_FITS = ("stretch", "pad")
#: class index of the padding rows of a batched box tensor
PADDING_CLASS = -1.0


@dataclass(frozen=True)
class FrameGeometry:
    """How an ``original_size`` (H, W) image maps onto the ``frame_size`` (H, W) detector frame.

    Attributes:
        original_size: (rows, columns) of the original image.
        frame_size: (rows, columns) of the frame.
        pad: ``((top, bottom), (left, right))`` zero padding applied before the resize (zeros for ``"stretch"``).
    """

    original_size: tuple[int, int]
    frame_size: tuple[int, int]
    pad: tuple[tuple[int, int], tuple[int, int]]

    @classmethod
    def of(cls, original_size: Sequence[int], frame_size: Sequence[int] = PAPER_FRAME_SIZE, fit: str = "stretch") -> FrameGeometry:
        """The geometry of ``fit`` (``"stretch"`` or ``"pad"``, see the module docstring).

        Raises:
            ValueError: for an unknown ``fit`` or non-positive sizes.
        """
        if fit not in FRAME_FITS:
            raise ValueError(f"fit must be one of {FRAME_FITS}, got {fit!r}.")
        rows, cols = (int(v) for v in original_size)
        frame_rows, frame_cols = (int(v) for v in frame_size)
        if min(rows, cols, frame_rows, frame_cols) <= 0:
            raise ValueError(f"sizes must be positive, got original {tuple(original_size)}, frame {tuple(frame_size)}.")
        pad = ((0, 0), (0, 0))
        if fit == "pad":
            padded_rows = max(rows, math.ceil(cols * frame_rows / frame_cols))
            padded_cols = max(cols, math.ceil(rows * frame_cols / frame_rows))
            extra_rows, extra_cols = padded_rows - rows, padded_cols - cols
            pad = ((extra_rows // 2, extra_rows - extra_rows // 2), (extra_cols // 2, extra_cols - extra_cols // 2))
        return cls((rows, cols), (frame_rows, frame_cols), pad)

    @property
    def padded_size(self) -> tuple[int, int]:
        return (self.original_size[0] + sum(self.pad[0]), self.original_size[1] + sum(self.pad[1]))

    def to_frame(self, boxes: torch.Tensor) -> torch.Tensor:
        """``(N, 4)`` boxes in original pixels -> frame pixels, clipped to the frame (empty ones dropped)."""
        shift = boxes.new_tensor([self.pad[1][0], self.pad[0][0]] * 2)
        return clip_boxes(scale_boxes(boxes + shift, self.padded_size, self.frame_size), self.frame_size)

    def to_original(self, boxes: torch.Tensor) -> torch.Tensor:
        """``(N, >= 4)`` frame boxes (extra columns such as scores kept) -> original pixels, clipped to the image."""
        shift = boxes.new_tensor([self.pad[1][0], self.pad[0][0]] * 2)
        corners = scale_boxes(boxes[:, :4], self.frame_size, self.padded_size) - shift
        height, width = self.original_size
        corners = torch.stack(
            [corners[:, 0].clamp(0, width), corners[:, 1].clamp(0, height), corners[:, 2].clamp(0, width), corners[:, 3].clamp(0, height)],
            dim=1,
        )
        return torch.cat([corners, boxes[:, 4:]], dim=1)


class ToDetectorFramed(MapTransform):
    """Bring images (and masks) to the detector frame and map their boxes with them.

    The image goes through MONAI ``Pad`` (``fit="pad"`` only) and ``Resize``, both recorded in its
    ``applied_operations`` (MONAI ``Invertd`` undoes them); boxes follow :py:class:`FrameGeometry` and are
    clipped to the frame.

    Args:
        keys: image (and optional mask) keys, all of the same size.
        box_key: key of the ``(N, 4)`` boxes in the images' original pixels (absent: no boxes, e.g. inference).
        frame_size: (H, W) of the frame, 2048 x 1024 in the paper.
        fit: ``"stretch"`` or ``"pad"`` (module docstring).
        modes: interpolation per key (``"bilinear"`` antialiased for images, ``"nearest"`` for masks).
        allow_missing_keys: don't raise for missing keys.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        box_key: str | None = "boxes",
        frame_size: Sequence[int] = PAPER_FRAME_SIZE,
        fit: str = "stretch",
        modes: str | Sequence[str] = "bilinear",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if fit not in FRAME_FITS:
            raise ValueError(f"fit must be one of {FRAME_FITS}, got {fit!r}.")
        self.box_key = box_key
        self.frame_size = tuple(int(v) for v in frame_size)
        self.fit = fit
        self.modes = (modes,) * len(self.keys) if isinstance(modes, str) else tuple(modes)
        if len(self.modes) != len(self.keys):
            raise ValueError(f"modes needs one value per key {self.keys}, got {self.modes}.")

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        geometry = None
        for key, mode in zip(self.keys, self.modes):
            if key not in d:
                if self.allow_missing_keys:
                    continue
                raise KeyError(f"ToDetectorFramed: key {key!r} not in the sample (keys: {sorted(map(str, d))}).")
            image = d[key]
            size = tuple(int(v) for v in image.shape[1:])
            if geometry is None:
                geometry = FrameGeometry.of(size, self.frame_size, self.fit)
            elif size != geometry.original_size:
                raise ValueError(f"ToDetectorFramed: {key!r} has size {size}, the first key {geometry.original_size}.")
            if self.fit == "pad":
                image = Pad()(image, to_pad=[(0, 0), *geometry.pad])
            antialias = mode != "nearest"
            d[key] = Resize(self.frame_size, mode=mode, anti_aliasing=antialias)(image)
        if self.box_key is not None and self.box_key in d and geometry is not None:
            d[self.box_key] = geometry.to_frame(torch.as_tensor(d[self.box_key], dtype=torch.float32).reshape(-1, 4))
        return d


class ResizeWithBoxesd(MapTransform):
    """Resize an image to ``spatial_size`` (H, W) (MONAI ``Resize``, antialiased) and scale its boxes along.

    Args:
        keys: the image key.
        box_key: key of its ``(N, 4)`` boxes.
        spatial_size: the detector input (H, W), multiples of 32.
    """

    def __init__(self, keys: KeysCollection, box_key: str, spatial_size: Sequence[int], allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.box_key = box_key
        self.spatial_size = tuple(int(v) for v in spatial_size)
        self.resizer = Resize(self.spatial_size, mode="bilinear", anti_aliasing=True)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            size = tuple(int(v) for v in d[key].shape[1:])
            d[key] = self.resizer(d[key])
            if self.box_key in d:
                d[self.box_key] = clip_boxes(scale_boxes(d[self.box_key], size, self.spatial_size), self.spatial_size)
        return d


def detector_chain(
    frame_size: Sequence[int] = PAPER_FRAME_SIZE,
    input_size: Sequence[int] | None = None,
    fit: str = "stretch",
    with_boxes: bool = True,
    reader: str = "pydicom",
    flip_prob: float = 0.0,
) -> Compose:
    """Datalist record -> ``image`` (1, H, W) in [0, 1] in the detector frame, ``boxes`` (N, 4) mass boxes in it.

    Args:
        frame_size: the frame (H, W); 2048 x 1024 as the paper (smaller frames make short CPU runs lighter).
        input_size: when given, image and boxes are resized on to this (H, W): the detector input (validation),
            or the largest multi-scale size (training: the cache holds that, and :class:`MultiScaleResize` only
            shrinks each batch from it, not from the full frame); ``None`` keeps the frame.
        fit: ``"stretch"`` or ``"pad"`` (module docstring).
        with_boxes: ``False`` loads the image only (inference).
        reader: image reader of :class:`~breastseg.transforms.io.LoadBreastImaged`.
        flip_prob: probability of a left-right mirror of image and boxes (training augmentation, last in the
            chain so the cache holds the unflipped frame; paper 002 gives no augmentation, Darknet flips).

    The mask is read with the project's rules (CBIS-DDSM mass rows OR-ed, INbreast mass ROIs only) and dropped
    once the boxes are taken: the detector needs no mask and a 2048 x 1024 mask would double the cache.
    """
    steps: list[Any] = [LoadBreastImaged("image", reader=reader)]
    if with_boxes:
        steps += [LoadLesionMaskd("label", image_key="image"), MaskToBoxesd("label", box_key="boxes"), DeleteItemsd("label")]
    steps += [
        ToDetectorFramed("image", box_key="boxes" if with_boxes else None, frame_size=frame_size, fit=fit),
        ScaleIntensityd("image", minv=0.0, maxv=1.0),
    ]
    if input_size is not None:
        steps.append(ResizeWithBoxesd("image", box_key="boxes", spatial_size=input_size))
    if flip_prob > 0:
        steps.append(RandFlipBoxesd("image", box_key="boxes", prob=flip_prob))
    return Compose(steps)


def collate_boxes(samples: Sequence[Mapping[str, Any]], box_key: str = "boxes", label_key: str = "label") -> dict[str, Any]:
    """Batch detector samples: MONAI's collate for everything but the boxes, padded into ``label`` (B, M, 5).

    Rows are ``(x0, y0, x1, y1, class)``; class 0 for masses, ``-1`` on padding rows (M is the largest count in
    the batch, 0 when no image has a box).
    """
    boxes = [torch.as_tensor(sample[box_key], dtype=torch.float32).reshape(-1, 4) for sample in samples]
    rest = [{k: v for k, v in sample.items() if k != box_key} for sample in samples]
    batch = list_data_collate(rest)
    most = max((len(b) for b in boxes), default=0)
    label = torch.full((len(boxes), most, 5), PADDING_CLASS)
    for index, image_boxes in enumerate(boxes):
        label[index, : len(image_boxes), :4] = image_boxes
        label[index, : len(image_boxes), 4] = 0.0
    batch[label_key] = label
    return batch


def unpad_boxes(label: torch.Tensor) -> list[torch.Tensor]:
    """The per-image ``(M_i, 4)`` boxes of a padded ``(B, M, 5)`` batch (padding rows removed)."""
    if label.ndim != 3 or label.shape[-1] != 5:
        raise ValueError(f"batched boxes must be (B, M, 5) rows of (x0, y0, x1, y1, class), got {tuple(label.shape)}.")
    return [image[image[:, 4] >= 0, :4] for image in label]


def resize_batch(batch: dict[str, Any], size: Sequence[int], image_key: str = "image", label_key: str = "label") -> dict[str, Any]:
    """A batch with its images resized to ``size`` (H, W) (bilinear, antialiased) and its padded boxes scaled."""
    images = batch[image_key]
    images = images.as_tensor() if isinstance(images, MetaTensor) else torch.as_tensor(images)
    source = tuple(int(v) for v in images.shape[2:])
    resized = dict(batch)
    resized[image_key] = F.interpolate(images, size=tuple(int(v) for v in size), mode="bilinear", antialias=True, align_corners=False)
    label = batch[label_key]
    scaled = label.clone()
    scaled[..., :4] = scale_boxes(label[..., :4], source, size)
    resized[label_key] = scaled
    return resized


def crop_batch(
    batch: dict[str, Any],
    crop_size: Sequence[int],
    rng: np.random.Generator,
    positive_fraction: float = 0.5,
    image_key: str = "image",
    label_key: str = "label",
) -> dict[str, Any]:
    """Cut one ``crop_size`` (H, W) window per image of a batch; boxes shifted into it and clipped.

    With probability ``positive_fraction`` (for images with boxes) the window holds the centre of one box drawn
    at random (its position inside the window uniform), else it lies anywhere in the image. Boxes left with no
    area become padding rows. Sides of ``crop_size`` larger than the images are refused.
    """
    images = batch[image_key]
    rows, cols = (int(v) for v in images.shape[2:])
    crop_rows, crop_cols = (int(v) for v in crop_size)
    if crop_rows > rows or crop_cols > cols:
        raise ValueError(f"crop_size {tuple(crop_size)} exceeds the batch images {(rows, cols)}.")
    crops, labels = [], []
    for image, boxes in zip(images, unpad_boxes(batch[label_key])):
        if len(boxes) and rng.random() < positive_fraction:
            x0, y0, x1, y1 = boxes[int(rng.integers(len(boxes)))].tolist()
            centre_x, centre_y = (x0 + x1) / 2, (y0 + y1) / 2
            top = int(np.clip(centre_y - rng.uniform(0, crop_rows), 0, rows - crop_rows))
            left = int(np.clip(centre_x - rng.uniform(0, crop_cols), 0, cols - crop_cols))
        else:
            top, left = int(rng.integers(rows - crop_rows + 1)), int(rng.integers(cols - crop_cols + 1))
        crops.append(image[:, top : top + crop_rows, left : left + crop_cols])
        labels.append(clip_boxes(boxes - boxes.new_tensor([left, top, left, top]), (crop_rows, crop_cols)))
    cropped = dict(batch)
    cropped[image_key] = torch.stack(crops)
    padded = torch.full((len(labels), max((len(b) for b in labels), default=0), 5), PADDING_CLASS)
    for index, image_boxes in enumerate(labels):
        padded[index, : len(image_boxes), :4] = image_boxes
        padded[index, : len(image_boxes), 4] = 0.0
    cropped[label_key] = padded
    return cropped
