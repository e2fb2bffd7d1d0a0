"""Bounding boxes of lesion masks, for the detector of paper 002.

Boxes are ``(x0, y0, x1, y1)`` with x the column and y the row, half-open in pixels: the component's pixels
have ``x0 <= x < x1`` and ``y0 <= y < y1`` (the layout :py:func:`breastseg.networks.yolov3.decode_boxes`,
the MSF and the detection metrics use). MONAI's box transforms take the first spatial axis as x, so they are
called here with the spatial size given column-first.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data.box_utils import clip_boxes_to_image
from monai.transforms import Flip, MapTransform, RandomizableTransform, Transform
from monai.utils import TransformBackends, convert_to_numpy

__all__ = ["MaskToBoxes", "MaskToBoxesd", "RandFlipBoxesd", "clip_boxes", "scale_boxes", "flip_boxes_horizontally"]


def clip_boxes(boxes: torch.Tensor, image_size: Sequence[int]) -> torch.Tensor:
    """Clip ``(N, 4)`` boxes to an ``(H, W)`` image and drop those left with no area (MONAI ``clip_boxes_to_image``)."""
    height, width = (int(v) for v in image_size)
    if boxes.shape[0] == 0:
        return boxes.reshape(0, 4)
    return clip_boxes_to_image(boxes, (width, height), remove_empty=True)[0]


def scale_boxes(boxes: torch.Tensor, from_size: Sequence[int], to_size: Sequence[int]) -> torch.Tensor:
    """Boxes of an ``from_size`` (H, W) image mapped onto the same image resized to ``to_size`` (H, W)."""
    scale_x = float(to_size[1]) / float(from_size[1])
    scale_y = float(to_size[0]) / float(from_size[0])
    return boxes * boxes.new_tensor([scale_x, scale_y, scale_x, scale_y])


def flip_boxes_horizontally(boxes: torch.Tensor, width: int) -> torch.Tensor:
    """Boxes of an image of ``width`` columns mirrored left-right (half-open bounds stay half-open)."""
    flipped = boxes.clone()
    flipped[..., 0] = width - boxes[..., 2]
    flipped[..., 2] = width - boxes[..., 0]
    return flipped


class MaskToBoxes(Transform):
    """One box per 8-connected component of a binary mask ``(1, H, W)``: ``(N, 4)`` float32, half-open.

    Touching masses form one component (one box): a mask cannot tell them apart. Components are listed in
    raster order of their first pixel.

    Raises:
        ValueError: for a mask that is not ``(1, H, W)`` or ``(H, W)``.
    """

    backend = [TransformBackends.NUMPY, TransformBackends.TORCH]

    def __call__(self, mask: NdarrayOrTensor) -> torch.Tensor:
        import cv2

        array = convert_to_numpy(mask)
        if array.ndim == 3 and array.shape[0] == 1:
            array = array[0]
        if array.ndim != 2:
            raise ValueError(f"mask must be (1, H, W) or (H, W), got shape {tuple(np.shape(mask))}.")
        binary = (array > 0).astype(np.uint8)
        count, _, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
        boxes = np.zeros((count - 1, 4), dtype=np.float32)
        for index in range(1, count):
            left, top = stats[index, cv2.CC_STAT_LEFT], stats[index, cv2.CC_STAT_TOP]
            width, height = stats[index, cv2.CC_STAT_WIDTH], stats[index, cv2.CC_STAT_HEIGHT]
            boxes[index - 1] = (left, top, left + width, top + height)
        return torch.from_numpy(boxes)


class MaskToBoxesd(MapTransform):
    """Dictionary-based version of :py:class:`MaskToBoxes`: ``d[box_key] = boxes of d[key]``.

    Args:
        keys: the mask key (one).
        box_key: where the ``(N, 4)`` boxes go.
        allow_missing_keys: don't raise for a missing mask.
    """

    backend = MaskToBoxes.backend

    def __init__(self, keys: KeysCollection = "label", box_key: str = "boxes", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"MaskToBoxesd takes one mask key, got {self.keys}.")
        self.box_key = box_key
        self.converter = MaskToBoxes()

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[self.box_key] = self.converter(d[key])
        return d


class RandFlipBoxesd(RandomizableTransform, MapTransform):
    """Mirror images left-right with probability ``prob`` and their boxes along (one draw per sample).

    The images go through MONAI ``Flip`` (recorded in ``applied_operations``); MONAI's ``RandFlipBoxd`` is not
    used because it takes the first spatial axis as x.

    Args:
        keys: image keys (flipped together).
        box_key: key of the ``(N, 4)`` boxes of those images.
        prob: probability of the flip.
        allow_missing_keys: don't raise for missing keys.
    """

    backend = Flip.backend

    def __init__(self, keys: KeysCollection, box_key: str = "boxes", prob: float = 0.5, allow_missing_keys: bool = False) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.box_key = box_key
        self.flipper = Flip(spatial_axis=1)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        width = None
        for key in self.key_iterator(d):
            width = int(d[key].shape[-1])
            d[key] = self.flipper(d[key])
        if width is not None and self.box_key in d:
            d[self.box_key] = flip_boxes_horizontally(torch.as_tensor(d[self.box_key]), width)
        return d
